// CUDA backend ops: validate the params against the contract in src/ops/*.h, then launch.
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/mla/mla_cache_fp8.h"
#include "kernels/attention/mla/mla_decode_tc.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/gemm/gemm.h"
#include "kernels/moe/moe.h"
#include "kernels/routing/route.h"

namespace moex {
namespace {

// Builds "cuda <op>: <tensor> ..." messages.
struct Check {
  const char* op;
  Status fail(const std::string& what) const { return invalid_argument(std::string("cuda ") + op + ": " + what); }

  Status on_device(const Tensor& t, const char* name) const {
    if (t.data == nullptr) return fail(std::string(name) + " is empty");
    if (t.device != DeviceType::kCuda) return fail(std::string(name) + " is not a CUDA tensor");
    return Status::ok();
  }
  Status rank(const Tensor& t, const char* name, int ndim) const {
    if (t.ndim != ndim)
      return fail(std::string(name) + " must have " + std::to_string(ndim) + " dims, got " + t.shape_string());
    return Status::ok();
  }
  Status dtype_in(const Tensor& t, const char* name, std::initializer_list<DType> ok) const {
    for (DType d : ok)
      if (t.dtype == d) return Status::ok();
    std::string allowed;
    for (DType d : ok) allowed += (allowed.empty() ? "" : "/") + std::string(dtype_name(d));
    return fail(std::string(name) + " must be " + allowed + ", got " + t.shape_string());
  }
  Status inner_contiguous(const Tensor& t, const char* name) const {
    if (t.ndim > 0 && t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
      return fail(std::string(name) + " must be contiguous along its last dim " + t.shape_string());
    return Status::ok();
  }
  Status dim_is(const Tensor& t, const char* name, int d, int64_t want) const {
    if (t.shape[d] != want)
      return fail(std::string(name) + " dim " + std::to_string(d) + " must be " + std::to_string(want) + ", got " +
                  t.shape_string());
    return Status::ok();
  }
  // A full check of a tensor that must live on the device with a given rank and dtypes.
  Status tensor(const Tensor& t, const char* name, int ndim, std::initializer_list<DType> ok) const {
    MOEX_RETURN_IF_ERROR(on_device(t, name));
    MOEX_RETURN_IF_ERROR(rank(t, name, ndim));
    MOEX_RETURN_IF_ERROR(dtype_in(t, name, ok));
    return inner_contiguous(t, name);
  }
};

constexpr std::initializer_list<DType> kAct = {DType::kBF16, DType::kF32};
constexpr std::initializer_list<DType> kFloat = {DType::kBF16, DType::kF32, DType::kF16, DType::kF8E4M3};

Tensor add_unit_batch(const Tensor& t) {
  Tensor r = t;
  r.ndim = 3;
  r.shape[0] = 1; r.stride[0] = 0;
  r.shape[1] = t.shape[0]; r.stride[1] = t.stride[0];
  r.shape[2] = t.shape[1]; r.stride[2] = t.stride[1];
  return r;
}

Status validate_paged(const Check& c, const ops::PagedSeqs& s, int64_t n_queries, int64_t cache_page_size) {
  MOEX_RETURN_IF_ERROR(c.tensor(s.block_table, "seqs.block_table", 2, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(s.seq_lens, "seqs.seq_lens", 1, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(s.query_start, "seqs.query_start", 1, {DType::kI32}));
  const int64_t num_seqs = s.seq_lens.shape[0];
  if (num_seqs < 1) return c.fail("seqs.seq_lens is empty");
  MOEX_RETURN_IF_ERROR(c.dim_is(s.block_table, "seqs.block_table", 0, num_seqs));
  MOEX_RETURN_IF_ERROR(c.dim_is(s.query_start, "seqs.query_start", 0, num_seqs + 1));
  if (s.page_size <= 0 || s.page_size != cache_page_size)
    return c.fail("seqs.page_size " + std::to_string(s.page_size) + " does not match the cache page size " +
                  std::to_string(cache_page_size));
  if (n_queries >= (int64_t(1) << 31) / 64) return c.fail("too many query rows");
  return Status::ok();
}

}  // namespace

Status CudaBackend::embedding(const ops::EmbeddingParams& p) {
  const Check c{"embedding"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.ids, "ids", 1, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.table, "table", 2, kFloat));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 2, kAct));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 0, p.ids.shape[0]));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 1, p.table.shape[1]));
  return cuda_status(kernels::launch_embedding(p, stream_), "cuda embedding: launch");
}

Status CudaBackend::copy(const ops::CopyParams& p) {
  const Check c{"copy"};
  MOEX_RETURN_IF_ERROR(c.on_device(p.src, "src"));
  MOEX_RETURN_IF_ERROR(c.on_device(p.dst, "dst"));
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.src, "src", kFloat));
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.dst, "dst", kFloat));
  if (p.src.ndim < 1 || p.src.ndim > 4) return c.fail("src must have 1 to 4 dims, got " + p.src.shape_string());
  if (p.dst.ndim != p.src.ndim) return c.fail("dst " + p.dst.shape_string() + " and src " + p.src.shape_string() + " differ in rank");
  for (int d = 0; d < p.src.ndim; ++d) MOEX_RETURN_IF_ERROR(c.dim_is(p.dst, "dst", d, p.src.shape[d]));
  return cuda_status(kernels::launch_copy(p, stream_), "cuda copy: launch");
}

Status CudaBackend::add(const ops::AddParams& p) {
  const Check c{"add"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.a, "a", 2, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.b, "b", 2, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 2, kAct));
  for (int d = 0; d < 2; ++d) {
    MOEX_RETURN_IF_ERROR(c.dim_is(p.a, "a", d, p.out.shape[d]));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.b, "b", d, p.out.shape[d]));
  }
  return cuda_status(kernels::launch_add(p, stream_), "cuda add: launch");
}

Status CudaBackend::silu_mul(const ops::SiluMulParams& p) {
  const Check c{"silu_mul"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.x, "x", 2, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 2, kAct));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 0, p.x.shape[0]));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.x, "x", 1, 2 * p.out.shape[1]));
  return cuda_status(kernels::launch_silu_mul(p, stream_), "cuda silu_mul: launch");
}

Status CudaBackend::random_uniform(const ops::RandomUniformParams& p) {
  const Check c{"random_uniform"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 1, kAct));
  MOEX_RETURN_IF_ERROR(c.inner_contiguous(p.out, "out"));
  return cuda_status(kernels::launch_random_uniform(p, stream_), "cuda random_uniform: launch");
}

Status CudaBackend::rms_norm(const ops::RmsNormParams& p) {
  const Check c{"rms_norm"};
  MOEX_RETURN_IF_ERROR(c.on_device(p.x, "x"));
  if (p.x.ndim != 2 && p.x.ndim != 3) return c.fail("x must be [rows, dim] or [t, heads, dim], got " + p.x.shape_string());
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.x, "x", kAct));
  MOEX_RETURN_IF_ERROR(c.inner_contiguous(p.x, "x"));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", p.x.ndim, kAct));
  for (int d = 0; d < p.x.ndim; ++d) MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", d, p.x.shape[d]));
  MOEX_RETURN_IF_ERROR(c.tensor(p.weight, "weight", 1, kFloat));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.weight, "weight", 0, p.x.shape[p.x.ndim - 1]));
  return cuda_status(kernels::launch_rms_norm(p, stream_), "cuda rms_norm: launch");
}

Status CudaBackend::matmul(const ops::MatmulParams& p) {
  const Check c{"matmul"};
  MOEX_RETURN_IF_ERROR(c.on_device(p.x, "x"));
  MOEX_RETURN_IF_ERROR(c.on_device(p.w, "w"));
  MOEX_RETURN_IF_ERROR(c.on_device(p.out, "out"));
  if (p.x.ndim != 2 && p.x.ndim != 3) return c.fail("x must be [m, k] or [b, m, k], got " + p.x.shape_string());
  MOEX_RETURN_IF_ERROR(c.rank(p.w, "w", p.x.ndim));
  MOEX_RETURN_IF_ERROR(c.rank(p.out, "out", p.x.ndim));
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.x, "x", kAct));
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.w, "w", kFloat));
  MOEX_RETURN_IF_ERROR(c.dtype_in(p.out, "out", kAct));
  MOEX_RETURN_IF_ERROR(c.inner_contiguous(p.x, "x"));
  MOEX_RETURN_IF_ERROR(c.inner_contiguous(p.w, "w"));
  ops::MatmulParams q = p;
  if (p.x.ndim == 2) {
    q.x = add_unit_batch(p.x);
    q.w = add_unit_batch(p.w);
    q.out = add_unit_batch(p.out);
  }
  MOEX_RETURN_IF_ERROR(c.dim_is(q.w, "w", 0, q.x.shape[0]));
  MOEX_RETURN_IF_ERROR(c.dim_is(q.out, "out", 0, q.x.shape[0]));
  MOEX_RETURN_IF_ERROR(c.dim_is(q.w, "w", 2, q.x.shape[2]));
  MOEX_RETURN_IF_ERROR(c.dim_is(q.out, "out", 1, q.x.shape[1]));
  MOEX_RETURN_IF_ERROR(c.dim_is(q.out, "out", 2, q.w.shape[1]));
  if (q.x.shape[1] > (int64_t(1) << 31) / 64 || q.w.shape[1] > (int64_t(1) << 31) / 64 || q.x.shape[0] > 65535)
    return c.fail("shape too large: x " + p.x.shape_string() + ", w " + p.w.shape_string());
  return cuda_status(kernels::launch_matmul(q, stream_), "cuda matmul: launch");
}

Status CudaBackend::rope(const ops::RopeParams& p) {
  const Check c{"rope"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.x, "x", 3, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.positions, "positions", 1, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.inv_freq, "inv_freq", 1, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.positions, "positions", 0, p.x.shape[0]));
  if (2 * p.inv_freq.shape[0] > p.x.shape[2])
    return c.fail("rot_dim 2 * " + std::to_string(p.inv_freq.shape[0]) + " exceeds head_dim of x " + p.x.shape_string());
  if (p.inv_freq.shape[0] > 65535 * 128) return c.fail("inv_freq too long");
  return cuda_status(kernels::launch_rope(p, stream_), "cuda rope: launch");
}

Status CudaBackend::route(const ops::RouteParams& p) {
  const Check c{"route"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.logits, "logits", 2, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.topk_ids, "topk_ids", 2, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.topk_weights, "topk_weights", 2, {DType::kF32}));
  const int64_t n = p.logits.shape[0], e = p.logits.shape[1];
  if (e < 1 || e > kernels::kRouteMaxExperts)
    return c.fail("logits has " + std::to_string(e) + " experts; 1 to " + std::to_string(kernels::kRouteMaxExperts) + " supported");
  if (p.top_k < 1 || p.top_k > e) return c.fail("top_k " + std::to_string(p.top_k) + " not in [1, " + std::to_string(e) + "]");
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_ids, "topk_ids", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_ids, "topk_ids", 1, p.top_k));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_weights, "topk_weights", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_weights, "topk_weights", 1, p.top_k));
  if (p.method != ops::TopkMethod::kGreedy) {
    if (p.n_group < 1 || p.n_group > kernels::kRouteMaxGroups || e % p.n_group != 0)
      return c.fail("n_group " + std::to_string(p.n_group) + " must divide " + std::to_string(e) + " and be <= 64");
    if (p.topk_group < 1 || p.topk_group > p.n_group)
      return c.fail("topk_group " + std::to_string(p.topk_group) + " not in [1, n_group]");
  }
  if (p.method == ops::TopkMethod::kNoauxTc && !p.bias.empty()) {
    MOEX_RETURN_IF_ERROR(c.tensor(p.bias, "bias", 1, {DType::kF32}));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.bias, "bias", 0, e));
  }
  return cuda_status(kernels::launch_route(p, stream_), "cuda route: launch");
}

Status CudaBackend::fused_moe(const ops::FusedMoeParams& p) {
  const Check c{"fused_moe"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.x, "x", 2, {DType::kBF16}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.topk_ids, "topk_ids", 2, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.topk_weights, "topk_weights", 2, {DType::kF32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.w13, "w13", 3, {DType::kBF16}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.w2, "w2", 3, {DType::kBF16}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 2, kAct));
  const int64_t n = p.x.shape[0], hidden = p.x.shape[1], top_k = p.topk_ids.shape[1];
  const int64_t local = p.w13.shape[0], inter = p.w2.shape[2];
  if (!p.topk_ids.is_contiguous()) return c.fail("topk_ids must be contiguous " + p.topk_ids.shape_string());
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_ids, "topk_ids", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_weights, "topk_weights", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.topk_weights, "topk_weights", 1, top_k));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.w13, "w13", 1, 2 * inter));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.w13, "w13", 2, hidden));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.w2, "w2", 0, local));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.w2, "w2", 1, hidden));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 1, hidden));
  if (!p.expert_map.empty()) {
    MOEX_RETURN_IF_ERROR(c.tensor(p.expert_map, "expert_map", 1, {DType::kI32}));
  }
  if (local < 1 || n * top_k >= (int64_t(1) << 31)) return c.fail("bad sizes: w13 " + p.w13.shape_string());
  return cuda_status(kernels::launch_fused_moe(p, *this, stream_), "cuda fused_moe: launch");
}

Status CudaBackend::cache_write(const ops::CacheWriteParams& p) {
  const Check c{"cache_write"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.src, "src", 2, kFloat));
  MOEX_RETURN_IF_ERROR(c.tensor(p.slot_mapping, "slot_mapping", 1, {DType::kI32}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.dst, "dst", 2, kFloat));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.slot_mapping, "slot_mapping", 0, p.src.shape[0]));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.dst, "dst", 1, p.src.shape[1]));
  if (!p.dst_scale.empty()) {  // the FP8 MLA latent cache: one power-of-two scale per row
    if (p.dst.dtype != DType::kF8E4M3) return c.fail("dst_scale needs an f8e4m3 dst, got dst " + p.dst.shape_string());
    MOEX_RETURN_IF_ERROR(c.on_device(p.dst_scale, "dst_scale"));
    MOEX_RETURN_IF_ERROR(c.rank(p.dst_scale, "dst_scale", 1));
    MOEX_RETURN_IF_ERROR(c.dtype_in(p.dst_scale, "dst_scale", {DType::kF32}));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.dst_scale, "dst_scale", 0, p.dst.shape[0]));
    return cuda_status(kernels::launch_cache_write_fp8(p, stream_), "cuda cache_write: fp8 launch");
  }
  return cuda_status(kernels::launch_cache_write(p, stream_), "cuda cache_write: launch");
}

Status CudaBackend::gqa_attention(const ops::GqaAttentionParams& p) {
  const Check c{"gqa_attention"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.q, "q", 3, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.k_cache, "k_cache", 4, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.v_cache, "v_cache", 4, {p.k_cache.dtype}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 3, kAct));
  const int64_t n = p.q.shape[0], heads = p.q.shape[1], dk = p.q.shape[2], kvh = p.k_cache.shape[2];
  const int64_t dv = p.v_cache.shape[3];
  MOEX_RETURN_IF_ERROR(c.dim_is(p.k_cache, "k_cache", 3, dk));
  for (int d = 0; d < 3; ++d) MOEX_RETURN_IF_ERROR(c.dim_is(p.v_cache, "v_cache", d, p.k_cache.shape[d]));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 1, heads));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 2, dv));
  if (kvh < 1 || heads % kvh != 0) return c.fail("q heads " + std::to_string(heads) + " not a multiple of kv heads " + std::to_string(kvh));
  if (dk > kernels::kAttnMaxHeadDim || dv > 256) return c.fail("head dims " + std::to_string(dk) + "/" + std::to_string(dv) + " too large");
  MOEX_RETURN_IF_ERROR(validate_paged(c, p.seqs, n, p.k_cache.shape[1]));
  return cuda_status(kernels::launch_gqa_attention(p, *this, stream_), "cuda gqa_attention: launch");
}

Status CudaBackend::mla_attention(const ops::MlaAttentionParams& p) {
  const Check c{"mla_attention"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.q, "q", 3, kAct));
  MOEX_RETURN_IF_ERROR(c.tensor(p.cache, "cache", 3, {DType::kBF16, DType::kF32, DType::kF8E4M3}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", 3, kAct));
  const int64_t n = p.q.shape[0], heads = p.q.shape[1], dk = p.q.shape[2];
  MOEX_RETURN_IF_ERROR(c.dim_is(p.cache, "cache", 2, dk));
  if (p.kv_lora_rank < 1 || p.kv_lora_rank > kernels::kAttnMaxValueDim || p.kv_lora_rank > dk)
    return c.fail("kv_lora_rank " + std::to_string(p.kv_lora_rank) + " must be in [1, min(512, " + std::to_string(dk) + ")]");
  if (dk > kernels::kAttnMaxHeadDim) return c.fail("latent dim " + std::to_string(dk) + " too large");
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 0, n));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 1, heads));
  MOEX_RETURN_IF_ERROR(c.dim_is(p.out, "out", 2, p.kv_lora_rank));
  if (!p.lse.empty()) {
    MOEX_RETURN_IF_ERROR(c.tensor(p.lse, "lse", 2, {DType::kF32}));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.lse, "lse", 0, n));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.lse, "lse", 1, heads));
  }
  MOEX_RETURN_IF_ERROR(validate_paged(c, p.seqs, n, p.cache.shape[1]));
  if (!p.cache_scale.empty()) {
    if (p.cache.dtype != DType::kF8E4M3) return c.fail("cache_scale needs an f8e4m3 cache, got cache " + p.cache.shape_string());
    MOEX_RETURN_IF_ERROR(c.on_device(p.cache_scale, "cache_scale"));
    MOEX_RETURN_IF_ERROR(c.rank(p.cache_scale, "cache_scale", 2));
    MOEX_RETURN_IF_ERROR(c.dtype_in(p.cache_scale, "cache_scale", {DType::kF32}));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.cache_scale, "cache_scale", 0, p.cache.shape[0]));
    MOEX_RETURN_IF_ERROR(c.dim_is(p.cache_scale, "cache_scale", 1, p.cache.shape[1]));
  }
  // The FP8 latent cache runs only on the tensor-core kernel (bf16 q, 576/512, 16-byte rows).
  if (p.cache.dtype == DType::kF8E4M3 && !kernels::mla_decode_tc_supported(p))
    return c.fail("an f8e4m3 cache needs bf16 q [n, heads, 576], kv_lora_rank 512 and 16-byte aligned cache rows, got q " +
                  p.q.shape_string() + ", cache " + p.cache.shape_string());
  // Tensor-core decode kernel for bf16 576/512; the generic split-KV kernel for the rest.
  if (kernels::mla_decode_tc_supported(p))
    return cuda_status(kernels::launch_mla_decode_tc(p, *this, stream_), "cuda mla_attention: tensor-core launch");
  return cuda_status(kernels::launch_mla_attention(p, *this, stream_), "cuda mla_attention: launch");
}

}  // namespace moex
