// CUDA backend: the fused small ops of ops/fused.h. Host-side validation (one line naming the
// tensor at fault), then one launch each (src/kernels/fused/).
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/float_op_check.h"
#include "kernels/fused/fused.h"

namespace moex {
namespace {

// The weight of a norm: any float dtype the kernels read, contiguous.
Status check_norm_weight(const FloatOpCheck& c, const Tensor& w, const char* name) {
  if (w.device != DeviceType::kCuda) return c.fail(std::string(name) + " is not a CUDA tensor");
  if (w.dtype != DType::kF32 && w.dtype != DType::kBF16 && w.dtype != DType::kF16 && w.dtype != DType::kF8E4M3)
    return c.fail(std::string(name) + " must be f32/bf16/f16/f8e4m3, got " + w.shape_string());
  if (w.shape[0] > 1 && w.stride[0] != 1) return c.fail(std::string(name) + " must be contiguous, got " + w.shape_string());
  return Status::ok();
}

Status same_dtype(const FloatOpCheck& c, const Tensor& t, const char* name, const Tensor& ref, const char* ref_name) {
  if (t.dtype != ref.dtype)
    return c.fail(std::string(name) + " " + t.shape_string() + " must have the dtype of " + ref_name + " " + ref.shape_string());
  return Status::ok();
}

}  // namespace

Status CudaBackend::add_rms_norm(const ops::AddRmsNormParams& p) {
  const FloatOpCheck c{"add_rms_norm"};
  MOEX_RETURN_IF_ERROR(ops::check_add_rms_norm_shapes("cuda add_rms_norm", p));
  MOEX_RETURN_IF_ERROR(c.tensor(p.residual, "residual", {-1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.branch, "branch", {-1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", {-1, -1}));
  MOEX_RETURN_IF_ERROR(same_dtype(c, p.branch, "branch", p.residual, "residual"));
  MOEX_RETURN_IF_ERROR(same_dtype(c, p.out, "out", p.residual, "residual"));
  MOEX_RETURN_IF_ERROR(check_norm_weight(c, p.weight, "weight"));
  if (p.residual.shape[0] >= (int64_t(1) << 31)) return c.fail("too many rows in residual " + p.residual.shape_string());
  return cuda_status(kernels::launch_add_rms_norm(p, stream_), "cuda add_rms_norm: launch");
}

Status CudaBackend::qkv_rope_cache(const ops::QkvRopeCacheParams& p) {
  const FloatOpCheck c{"qkv_rope_cache"};
  MOEX_RETURN_IF_ERROR(ops::check_qkv_rope_cache_shapes("cuda qkv_rope_cache", p));
  MOEX_RETURN_IF_ERROR(c.tensor(p.q, "q", {-1, -1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.k, "k", {-1, -1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.v, "v", {-1, -1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.k_cache, "k_cache", {-1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.v_cache, "v_cache", {-1, -1}));
  for (const auto& [t, name] : {std::pair{&p.k, "k"}, std::pair{&p.v, "v"}, std::pair{&p.k_cache, "k_cache"},
                                std::pair{&p.v_cache, "v_cache"}}) {
    MOEX_RETURN_IF_ERROR(same_dtype(c, *t, name, p.q, "q"));
  }
  if (!p.q_norm.empty()) {
    MOEX_RETURN_IF_ERROR(check_norm_weight(c, p.q_norm, "q_norm"));
    MOEX_RETURN_IF_ERROR(check_norm_weight(c, p.k_norm, "k_norm"));
    MOEX_RETURN_IF_ERROR(same_dtype(c, p.k_norm, "k_norm", p.q_norm, "q_norm"));
  }
  MOEX_RETURN_IF_ERROR(c.tensor(p.positions, "positions", {-1}, true));
  MOEX_RETURN_IF_ERROR(c.tensor(p.slot_mapping, "slot_mapping", {-1}, true));
  if (p.inv_freq.device != DeviceType::kCuda || p.inv_freq.dtype != DType::kF32 ||
      (p.inv_freq.shape[0] > 1 && p.inv_freq.stride[0] != 1))
    return c.fail("inv_freq must be a contiguous f32 CUDA tensor, got " + p.inv_freq.shape_string());
  if (p.q.shape[2] > 4096) return c.fail("head_dim " + std::to_string(p.q.shape[2]) + " above 4096 is not supported");
  const int64_t heads = p.q.shape[1] + 2 * p.k.shape[1];
  if (p.q.shape[0] * heads >= (int64_t(1) << 31)) return c.fail("too many (token, head) rows in q " + p.q.shape_string());
  return cuda_status(kernels::launch_qkv_rope_cache(p, stream_), "cuda qkv_rope_cache: launch");
}

Status CudaBackend::mla_rope_cache(const ops::MlaRopeCacheParams& p) {
  const FloatOpCheck c{"mla_rope_cache"};
  MOEX_RETURN_IF_ERROR(ops::check_mla_rope_cache_shapes("cuda mla_rope_cache", p));
  MOEX_RETURN_IF_ERROR(c.tensor(p.kv_a, "kv_a", {-1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.q_rope, "q_rope", {-1, -1, -1}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.cache, "cache", {-1, -1}));
  MOEX_RETURN_IF_ERROR(same_dtype(c, p.q_rope, "q_rope", p.kv_a, "kv_a"));
  MOEX_RETURN_IF_ERROR(same_dtype(c, p.cache, "cache", p.kv_a, "kv_a"));
  if (!p.q_rope_out.empty()) {
    MOEX_RETURN_IF_ERROR(c.tensor(p.q_rope_out, "q_rope_out", {-1, -1, -1}));
    MOEX_RETURN_IF_ERROR(same_dtype(c, p.q_rope_out, "q_rope_out", p.kv_a, "kv_a"));
  }
  MOEX_RETURN_IF_ERROR(check_norm_weight(c, p.kv_norm, "kv_norm"));
  MOEX_RETURN_IF_ERROR(c.tensor(p.positions, "positions", {-1}, true));
  MOEX_RETURN_IF_ERROR(c.tensor(p.slot_mapping, "slot_mapping", {-1}, true));
  if (p.inv_freq.device != DeviceType::kCuda || p.inv_freq.dtype != DType::kF32 ||
      (p.inv_freq.shape[0] > 1 && p.inv_freq.stride[0] != 1))
    return c.fail("inv_freq must be a contiguous f32 CUDA tensor, got " + p.inv_freq.shape_string());
  const int64_t pairs = p.q_rope.shape[1] * p.inv_freq.shape[0];
  if (pairs >= (int64_t(1) << 24) || p.kv_a.shape[0] * (2 + pairs) >= (int64_t(1) << 31))
    return c.fail("too many query pairs in q_rope " + p.q_rope.shape_string());
  return cuda_status(kernels::launch_mla_rope_cache(p, stream_), "cuda mla_rope_cache: launch");
}

}  // namespace moex
