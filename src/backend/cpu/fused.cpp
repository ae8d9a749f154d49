// The fused small ops of ops/fused.h on the CPU reference: their defining op sequence, run
// through the same CPU ops, so the reference numbers are those of the unfused sequence.
#include <initializer_list>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

// [n, heads, head_dim] with contiguous heads seen as [n, heads * head_dim] rows.
Tensor flatten_heads(const Tensor& t) {
  Tensor r = t;
  r.ndim = 2;
  r.shape[1] = t.shape[1] * t.shape[2];
  r.stride[1] = 1;
  r.shape[2] = 0;
  r.stride[2] = 0;
  return r;
}

}  // namespace

Status add_rms_norm(const Ctx& ctx, const ops::AddRmsNormParams& p) {
  MOEX_RETURN_IF_ERROR(ops::check_add_rms_norm_shapes("add_rms_norm", p));
  MOEX_RETURN_IF_ERROR(add(ctx, {.a = p.residual, .b = p.branch, .out = p.residual}));
  return rms_norm(ctx, {.x = p.residual, .weight = p.weight, .out = p.out, .eps = p.eps});
}

Status qkv_rope_cache(const Ctx& ctx, const ops::QkvRopeCacheParams& p) {
  MOEX_RETURN_IF_ERROR(ops::check_qkv_rope_cache_shapes("qkv_rope_cache", p));
  if (!p.q_norm.empty()) {
    MOEX_RETURN_IF_ERROR(rms_norm(ctx, {.x = p.q, .weight = p.q_norm, .out = p.q, .eps = p.eps}));
    MOEX_RETURN_IF_ERROR(rms_norm(ctx, {.x = p.k, .weight = p.k_norm, .out = p.k, .eps = p.eps}));
  }
  for (const Tensor* x : {&p.q, &p.k}) {
    MOEX_RETURN_IF_ERROR(rope(ctx, {.x = *x, .positions = p.positions, .inv_freq = p.inv_freq,
                                    .attn_scale = p.attn_scale, .interleaved = p.interleaved}));
  }
  MOEX_RETURN_IF_ERROR(cache_write(ctx, {.src = flatten_heads(p.k), .slot_mapping = p.slot_mapping, .dst = p.k_cache}));
  return cache_write(ctx, {.src = flatten_heads(p.v), .slot_mapping = p.slot_mapping, .dst = p.v_cache});
}

Status mla_rope_cache(const Ctx& ctx, const ops::MlaRopeCacheParams& p) {
  MOEX_RETURN_IF_ERROR(ops::check_mla_rope_cache_shapes("mla_rope_cache", p));
  const int64_t n = p.kv_a.shape[0], rope_dim = 2 * p.inv_freq.shape[0], rank = p.kv_a.shape[1] - rope_dim;
  Tensor latent = p.kv_a;  // [n, rank]
  latent.shape[1] = rank;
  Tensor k_rope = p.kv_a;  // [n, 1, rope_dim]
  k_rope.data = static_cast<char*>(p.kv_a.data) + rank * p.kv_a.stride[1] * int64_t(dtype_size(p.kv_a.dtype));
  k_rope.ndim = 3;
  k_rope.shape[1] = 1;
  k_rope.shape[2] = rope_dim;
  k_rope.stride[1] = rope_dim;
  k_rope.stride[2] = p.kv_a.stride[1];
  MOEX_RETURN_IF_ERROR(rms_norm(ctx, {.x = latent, .weight = p.kv_norm, .out = latent, .eps = p.eps}));
  for (const Tensor* x : std::initializer_list<const Tensor*>{&k_rope, &p.q_rope}) {
    MOEX_RETURN_IF_ERROR(rope(ctx, {.x = *x, .positions = p.positions, .inv_freq = p.inv_freq,
                                    .attn_scale = p.attn_scale, .interleaved = p.interleaved}));
  }
  MOEX_RETURN_IF_ERROR(cache_write(ctx, {.src = p.kv_a, .slot_mapping = p.slot_mapping, .dst = p.cache}));
  if (p.q_rope_out.empty() || n == 0) return Status::ok();
  return copy(ctx, {.src = p.q_rope, .dst = p.q_rope_out});
}

}  // namespace moex::cpu
