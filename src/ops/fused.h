// Fused small ops of a decoder layer: each is defined as a fixed sequence of the separate ops
// (norm.h, rope.h, elementwise.h, attention.h's cache_write), and every backend must produce
// exactly the values of that sequence run on the same backend. The CPU reference runs the
// sequence itself; the CUDA backend runs one kernel per op that computes each element with the
// same device code as the separate kernels (bit-identical, tests/cuda_ops/fused_ops_test.cpp).
// They exist to cut launches at batch 1, where each small op costs a launch of ~2-3 us.
#pragma once
#include <string>
#include <utility>

#include "core/status.h"
#include "core/tensor.h"

namespace moex::ops {

// The residual add of a layer fused with the RMSNorm that follows it:
//   add({.a = residual, .b = branch, .out = residual});
//   rms_norm({.x = residual, .weight = weight, .out = out, .eps = eps});
// out may alias branch (every branch element is read before any out element is written).
struct AddRmsNormParams {
  Tensor residual;  // [rows, dim] read and written: residual += branch
  Tensor branch;    // [rows, dim] same dtype as residual
  Tensor weight;    // [dim] any float dtype
  Tensor out;       // [rows, dim] rms_norm(residual) * weight, same dtype as residual
  float eps = 1e-6f;
};

// The attention prologue of a GQA layer after the q|k|v projection, in place on q and k:
//   if q_norm: rms_norm({.x = q, .weight = q_norm, .out = q, .eps = eps});   (Qwen3's per-head
//              rms_norm({.x = k, .weight = k_norm, .out = k, .eps = eps});    q/k norm)
//   rope({.x = q, ...}); rope({.x = k, ...});
//   cache_write({.src = k as [n, kv_heads * head_dim], .slot_mapping, .dst = k_cache});
//   cache_write({.src = v as [n, kv_heads * head_dim], .slot_mapping, .dst = v_cache});
// k and v must have contiguous heads (stride[1] == head_dim) so that those 2-D views exist.
struct QkvRopeCacheParams {
  Tensor q;             // [n, q_heads, head_dim] strided (e.g. columns of a fused qkv row)
  Tensor k;             // [n, kv_heads, head_dim] strided, heads contiguous
  Tensor v;             // [n, kv_heads, head_dim] strided, heads contiguous
  Tensor q_norm;        // [head_dim] or empty (no per-head norm; then k_norm is empty too)
  Tensor k_norm;        // [head_dim] or empty
  float eps = 1e-6f;
  Tensor positions;     // [n] i32
  Tensor inv_freq;      // [rot_dim / 2] f32, rot_dim <= head_dim
  float attn_scale = 1.f;
  bool interleaved = false;
  Tensor slot_mapping;  // [n] i32
  Tensor k_cache;       // [num_slots, kv_heads * head_dim] (a cache seen as slots)
  Tensor v_cache;       // [num_slots, kv_heads * head_dim]
};

// The attention prologue of an MLA layer (DeepSeek) after the kv_a and q projections:
//   rms_norm({.x = kv_a[:, :rank], .weight = kv_norm, .out = kv_a[:, :rank], .eps = eps});
//   rope({.x = kv_a[:, rank:] as [n, 1, rope_dim], ...});     (the shared rotary key)
//   rope({.x = q_rope, ...});
//   cache_write({.src = kv_a, .slot_mapping, .dst = cache});
//   copy({.src = q_rope, .dst = q_rope_out});                  (when q_rope_out is given)
// RoPE covers the whole rope part: rope_dim = 2 * inv_freq.size(0).
struct MlaRopeCacheParams {
  Tensor kv_a;          // [n, rank + rope_dim] rows (strided), in place
  Tensor kv_norm;       // [rank]
  float eps = 1e-6f;
  Tensor q_rope;        // [n, heads, rope_dim] strided, in place
  Tensor q_rope_out;    // [n, heads, rope_dim] strided (the absorbed query's rope part) or empty
  Tensor positions;     // [n] i32
  Tensor inv_freq;      // [rope_dim / 2] f32
  float attn_scale = 1.f;
  bool interleaved = true;
  Tensor slot_mapping;  // [n] i32
  Tensor cache;         // [num_slots, rank + rope_dim] (the latent cache seen as slots)
};

// Shape relations of MlaRopeCacheParams (as for QkvRopeCacheParams below).
inline Status check_mla_rope_cache_shapes(const char* op, const MlaRopeCacheParams& p) {
  auto fail = [&](const std::string& what) { return invalid_argument(std::string(op) + ": " + what); };
  if (p.kv_a.empty() || p.kv_a.ndim != 2) return fail("kv_a must be [n, rank + rope_dim], got " + p.kv_a.shape_string());
  const int64_t n = p.kv_a.shape[0];
  if (p.inv_freq.empty() || p.inv_freq.ndim != 1) return fail("inv_freq must be [rope_dim / 2], got " + p.inv_freq.shape_string());
  const int64_t rope_dim = 2 * p.inv_freq.shape[0], rank = p.kv_a.shape[1] - rope_dim;
  if (rank < 1) return fail("kv_a " + p.kv_a.shape_string() + " has no latent part before rope_dim " + std::to_string(rope_dim));
  if (p.kv_norm.empty() || p.kv_norm.ndim != 1 || p.kv_norm.shape[0] != rank)
    return fail("kv_norm must be [rank = " + std::to_string(rank) + "], got " + p.kv_norm.shape_string());
  if (p.q_rope.empty() || p.q_rope.ndim != 3 || p.q_rope.shape[0] != n || p.q_rope.shape[2] != rope_dim)
    return fail("q_rope must be [n = " + std::to_string(n) + ", heads, rope_dim = " + std::to_string(rope_dim) + "], got " +
                p.q_rope.shape_string());
  if (!p.q_rope_out.empty()) {
    for (int d = 0; d < 3; ++d)
      if (p.q_rope_out.ndim != 3 || p.q_rope_out.shape[d] != p.q_rope.shape[d])
        return fail("q_rope_out " + p.q_rope_out.shape_string() + " must have q_rope's shape " + p.q_rope.shape_string());
  }
  for (const auto& [t, name] : {std::pair{&p.positions, "positions"}, std::pair{&p.slot_mapping, "slot_mapping"}}) {
    if (t->empty() || t->ndim != 1 || t->shape[0] != n)
      return fail(std::string(name) + " must be [n = " + std::to_string(n) + "] i32, got " + t->shape_string());
  }
  if (p.cache.empty() || p.cache.ndim != 2 || p.cache.shape[1] != rank + rope_dim)
    return fail("cache must be [num_slots, rank + rope_dim = " + std::to_string(rank + rope_dim) + "], got " +
                p.cache.shape_string());
  return Status::ok();
}

// Shape relations of QkvRopeCacheParams that every backend checks first (dtypes, devices and
// strides of each tensor are the backend's to check): one line naming the tensor at fault.
inline Status check_qkv_rope_cache_shapes(const char* op, const QkvRopeCacheParams& p) {
  auto fail = [&](const std::string& what) { return invalid_argument(std::string(op) + ": " + what); };
  for (const auto& [t, name] : {std::pair{&p.q, "q"}, std::pair{&p.k, "k"}, std::pair{&p.v, "v"}}) {
    if (t->empty() || t->ndim != 3) return fail(std::string(name) + " must be [n, heads, head_dim], got " + t->shape_string());
  }
  const int64_t n = p.q.shape[0], head_dim = p.q.shape[2], kv_heads = p.k.shape[1];
  if (p.k.shape[0] != n || p.k.shape[2] != head_dim)
    return fail("k " + p.k.shape_string() + " does not match q " + p.q.shape_string() + " in tokens or head_dim");
  for (int d = 0; d < 3; ++d)
    if (p.v.shape[d] != p.k.shape[d]) return fail("v " + p.v.shape_string() + " must have k's shape " + p.k.shape_string());
  for (const auto& [t, name] : {std::pair{&p.k, "k"}, std::pair{&p.v, "v"}}) {
    if ((t->shape[2] > 1 && t->stride[2] != 1) || (t->shape[1] > 1 && t->stride[1] != head_dim))
      return fail(std::string(name) + " must have contiguous heads (strides [*, head_dim, 1]), got " + t->shape_string());
  }
  if (p.q_norm.empty() != p.k_norm.empty()) return fail("q_norm and k_norm must both be given or both be empty");
  for (const auto& [t, name] : {std::pair{&p.q_norm, "q_norm"}, std::pair{&p.k_norm, "k_norm"}}) {
    if (!t->empty() && (t->ndim != 1 || t->shape[0] != head_dim))
      return fail(std::string(name) + " must be [head_dim = " + std::to_string(head_dim) + "], got " + t->shape_string());
  }
  for (const auto& [t, name] : {std::pair{&p.positions, "positions"}, std::pair{&p.slot_mapping, "slot_mapping"}}) {
    if (t->empty() || t->ndim != 1 || t->shape[0] != n)
      return fail(std::string(name) + " must be [n = " + std::to_string(n) + "] i32, got " + t->shape_string());
  }
  if (p.inv_freq.empty() || p.inv_freq.ndim != 1 || 2 * p.inv_freq.shape[0] > head_dim)
    return fail("inv_freq must be [rot_dim / 2] with rot_dim <= head_dim " + std::to_string(head_dim) + ", got " +
                p.inv_freq.shape_string());
  for (const auto& [t, name] : {std::pair{&p.k_cache, "k_cache"}, std::pair{&p.v_cache, "v_cache"}}) {
    if (t->empty() || t->ndim != 2 || t->shape[1] != kv_heads * head_dim)
      return fail(std::string(name) + " must be [num_slots, kv_heads * head_dim = " + std::to_string(kv_heads * head_dim) +
                  "], got " + t->shape_string());
  }
  if (p.v_cache.shape[0] != p.k_cache.shape[0])
    return fail("v_cache " + p.v_cache.shape_string() + " and k_cache " + p.k_cache.shape_string() + " differ in slots");
  return Status::ok();
}

// Shape relations of AddRmsNormParams (as above).
inline Status check_add_rms_norm_shapes(const char* op, const AddRmsNormParams& p) {
  auto fail = [&](const std::string& what) { return invalid_argument(std::string(op) + ": " + what); };
  if (p.residual.empty() || p.residual.ndim != 2) return fail("residual must be [rows, dim], got " + p.residual.shape_string());
  for (const auto& [t, name] : {std::pair{&p.branch, "branch"}, std::pair{&p.out, "out"}}) {
    if (t->empty() || t->ndim != 2 || t->shape[0] != p.residual.shape[0] || t->shape[1] != p.residual.shape[1])
      return fail(std::string(name) + " " + t->shape_string() + " must have residual's shape " + p.residual.shape_string());
  }
  if (p.weight.empty() || p.weight.ndim != 1 || p.weight.shape[0] != p.residual.shape[1])
    return fail("weight must be [dim = " + std::to_string(p.residual.shape[1]) + "], got " + p.weight.shape_string());
  return Status::ok();
}

}  // namespace moex::ops
