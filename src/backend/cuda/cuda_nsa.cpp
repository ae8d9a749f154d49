// Native Sparse Attention on the CUDA backend (contract: src/ops/nsa.h; kernels:
// src/kernels/attention/nsa). Validates on the host, then launches without waiting: the ragged
// batch is resolved inside the kernels, so the host never reads cu_seqlens or seq_lens.
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/float_op_check.h"
#include "kernels/attention/nsa/nsa.h"
#include "kernels/attention/nsa/nsa_decode_fast.h"
#include "kernels/attention/nsa/nsa_decode_split.h"

namespace moex {
namespace {

namespace knsa = kernels::nsa;

using NsaCheck = FloatOpCheck;

knsa::FloatRef ref(const Tensor& t) { return {t.data, t.dtype == DType::kBF16}; }

Status check_config(const NsaCheck& c, const ops::NsaConfig& g) {
  if (g.block_len <= 0 || g.block_stride <= 0 || g.select_len <= 0)
    return c.fail("cfg.block_len, block_stride and select_len must be positive");
  if (g.block_len % g.block_stride != 0) return c.fail("cfg.block_len must be a multiple of cfg.block_stride");
  if (g.select_len % g.block_stride != 0) return c.fail("cfg.select_len must be a multiple of cfg.block_stride");
  if (g.select_n < 1) return c.fail("cfg.select_n must be >= 1");
  if (g.num_init < 0 || g.num_local < 0 || g.num_init + g.num_local > g.select_n)
    return c.fail("cfg.num_init + cfg.num_local must be in [0, cfg.select_n]");
  if (g.window < 0) return c.fail("cfg.window must be >= 0");
  return Status::ok();
}

knsa::Geometry geometry(const ops::NsaConfig& g) {
  return {g.block_len, g.block_stride, g.select_len, g.select_n, g.num_init, g.num_local, g.window, g.scale};
}

// Fills the query, gate and output fields shared by forward and decode.
void fill_common(knsa::Params& k, const Tensor& q, const Tensor& gates, const Tensor& out, const Tensor& out_cmp,
                 const Tensor& out_sel, const Tensor& out_win, const Tensor& sel_idx) {
  k.q = ref(q); k.q_st = q.stride[0]; k.q_sh = q.stride[1];
  k.gates = ref(gates); k.gate_st = gates.stride[0]; k.gate_sh = gates.stride[1]; k.gate_sc = gates.stride[2];
  k.out = ref(out); k.out_st = out.stride[0]; k.out_sh = out.stride[1];
  if (out_cmp.data) { k.out_cmp = ref(out_cmp); k.cmp_st = out_cmp.stride[0]; k.cmp_sh = out_cmp.stride[1]; }
  if (out_sel.data) { k.out_sel = ref(out_sel); k.sel_st = out_sel.stride[0]; k.sel_sh = out_sel.stride[1]; }
  if (out_win.data) { k.out_win = ref(out_win); k.win_st = out_win.stride[0]; k.win_sh = out_win.stride[1]; }
  if (sel_idx.data) {
    k.sel_idx = sel_idx.ptr<int32_t>(); k.sel_idx_st = sel_idx.stride[0]; k.sel_idx_sh = sel_idx.stride[1];
  }
}

Status check_smem(const NsaCheck& c, const knsa::Params& k) {
  if (knsa::cmp_select_smem(k) > knsa::kMaxSmem || knsa::sel_win_smem(k) > knsa::kMaxSmem)
    return c.fail("shape needs more shared memory than a CTA has (too many heads per group, head dims or blocks)");
  return Status::ok();
}

}  // namespace

Status CudaBackend::nsa_forward(const ops::NsaForwardParams& p) {
  const NsaCheck c{"nsa_forward"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.q, "q", {-1, -1, -1}));
  const int64_t T = p.q.shape[0], HQ = p.q.shape[1], Dk = p.q.shape[2];
  MOEX_RETURN_IF_ERROR(c.tensor(p.k, "k", {T, -1, Dk}));
  const int64_t H = p.k.shape[1];
  MOEX_RETURN_IF_ERROR(c.tensor(p.v, "v", {T, H, -1}));
  const int64_t Dv = p.v.shape[2];
  if (H < 1 || HQ % H != 0)
    return c.fail("q heads must be a multiple of k heads, got " + p.q.shape_string() + " and " + p.k.shape_string());
  MOEX_RETURN_IF_ERROR(c.tensor(p.gates, "gates", {T, HQ, 3}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.cu_seqlens, "cu_seqlens", {-1}, true));
  const int64_t B = p.cu_seqlens.shape[0] - 1;
  if (B < 0 || (B == 0 && T > 0)) return c.fail("cu_seqlens must hold B + 1 entries (B >= 1 when there are tokens)");
  MOEX_RETURN_IF_ERROR(check_config(c, p.cfg));
  const bool learned = p.k_cmp.data != nullptr;
  if (learned != (p.v_cmp.data != nullptr) || learned != (p.cu_cmp.data != nullptr))
    return c.fail("k_cmp, v_cmp and cu_cmp must be given together");
  if (learned) {
    MOEX_RETURN_IF_ERROR(c.tensor(p.k_cmp, "k_cmp", {-1, H, Dk}));
    MOEX_RETURN_IF_ERROR(c.tensor(p.v_cmp, "v_cmp", {p.k_cmp.shape[0], H, Dv}));
    MOEX_RETURN_IF_ERROR(c.tensor(p.cu_cmp, "cu_cmp", {B + 1}, true));
  }
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", {T, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_cmp, "out_cmp", {T, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_sel, "out_sel", {T, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_win, "out_win", {T, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.sel_idx, "sel_idx", {T, H, p.cfg.select_n}, true));
  if (T >= (int64_t(1) << 30) / 4) return c.fail("too many tokens");
  if (T == 0) return Status::ok();

  knsa::Params k;
  k.rows.rows = int(T);
  k.rows.num_seqs = int(B);
  k.rows.cu_seqlens = p.cu_seqlens.ptr<int32_t>();
  k.hq = int(HQ); k.h = int(H); k.dk = int(Dk); k.dv = int(Dv);
  k.g = geometry(p.cfg);
  k.max_len = int(T);
  fill_common(k, p.q, p.gates, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx);
  k.raw.k = ref(p.k); k.raw.k_st = p.k.stride[0]; k.raw.k_sh = p.k.stride[1];
  k.raw.v = ref(p.v); k.raw.v_st = p.v.stride[0]; k.raw.v_sh = p.v.stride[1];
  MOEX_RETURN_IF_ERROR(check_smem(c, k));

  // Scratch: attention buffers, then (mean pooling) cu_cmp and the f32 compressed k / v.
  const int tc_bound = int(T / p.cfg.block_stride);
  using SC = kernels::ScratchCarver;
  const size_t attn_bytes = knsa::scratch_bytes(k);
  const size_t pool_bytes = learned ? 0
                                    : SC::bytes_for<int32_t>(size_t(B) + 1) +
                                          SC::bytes_for<float>(size_t(tc_bound) * H * Dk) +
                                          SC::bytes_for<float>(size_t(tc_bound) * H * Dv);
  char* base = static_cast<char*>(get(attn_bytes + pool_bytes));
  if (base == nullptr) return c.fail("out of device memory for scratch");
  if (learned) {
    k.cmp.k = ref(p.k_cmp); k.cmp.k_sj = p.k_cmp.stride[0]; k.cmp.k_sh = p.k_cmp.stride[1];
    k.cmp.v = ref(p.v_cmp); k.cmp.v_sj = p.v_cmp.stride[0]; k.cmp.v_sh = p.v_cmp.stride[1];
    k.cmp.cu_cmp = p.cu_cmp.ptr<int32_t>();
  } else {
    SC sc{base + attn_bytes, 0};
    knsa::CompressForward cf;
    cf.rows = k.rows;
    cf.h = int(H); cf.dk = int(Dk); cf.dv = int(Dv);
    cf.block_len = p.cfg.block_len; cf.block_stride = p.cfg.block_stride; cf.tc_bound = tc_bound;
    cf.k = k.raw.k; cf.v = k.raw.v;
    cf.k_st = k.raw.k_st; cf.k_sh = k.raw.k_sh; cf.v_st = k.raw.v_st; cf.v_sh = k.raw.v_sh;
    cf.cu_cmp = sc.carve<int32_t>(size_t(B) + 1);
    cf.k_cmp = sc.carve<float>(size_t(tc_bound) * H * Dk);
    cf.v_cmp = sc.carve<float>(size_t(tc_bound) * H * Dv);
    MOEX_RETURN_IF_ERROR(cuda_status(knsa::launch_compress_forward(cf, stream_), "cuda nsa_forward: compress launch"));
    k.cmp.k = {cf.k_cmp, false}; k.cmp.k_sj = H * Dk; k.cmp.k_sh = Dk;
    k.cmp.v = {cf.v_cmp, false}; k.cmp.v_sj = H * Dv; k.cmp.v_sh = Dv;
    k.cmp.cu_cmp = cf.cu_cmp;
  }
  return cuda_status(knsa::launch_attention(k, base, stream_), "cuda nsa_forward: attention launch");
}

Status CudaBackend::nsa_decode(const ops::NsaDecodeParams& p) {
  const NsaCheck c{"nsa_decode"};
  MOEX_RETURN_IF_ERROR(c.tensor(p.q, "q", {-1, -1, -1}));
  const int64_t B = p.q.shape[0], HQ = p.q.shape[1], Dk = p.q.shape[2];
  MOEX_RETURN_IF_ERROR(c.tensor(p.k_cache, "k_cache", {-1, -1, -1, Dk}));
  const int64_t pages = p.k_cache.shape[0], page_size = p.k_cache.shape[1], H = p.k_cache.shape[2];
  MOEX_RETURN_IF_ERROR(c.tensor(p.v_cache, "v_cache", {pages, page_size, H, -1}));
  const int64_t Dv = p.v_cache.shape[3];
  if (H < 1 || HQ % H != 0)
    return c.fail("q heads must be a multiple of cache heads, got " + p.q.shape_string() + " and " +
                  p.k_cache.shape_string());
  MOEX_RETURN_IF_ERROR(c.tensor(p.gates, "gates", {B, HQ, 3}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.seqs.block_table, "seqs.block_table", {B, -1}, true));
  MOEX_RETURN_IF_ERROR(c.tensor(p.seqs.seq_lens, "seqs.seq_lens", {B}, true));
  if (p.seqs.page_size != page_size)
    return c.fail("seqs.page_size " + std::to_string(p.seqs.page_size) + " does not match the cache page size " +
                  std::to_string(page_size));
  MOEX_RETURN_IF_ERROR(c.tensor(p.k_cmp_cache, "k_cmp_cache", {-1, -1, H, Dk}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.v_cmp_cache, "v_cmp_cache", {p.k_cmp_cache.shape[0], p.k_cmp_cache.shape[1], H, Dv}));
  MOEX_RETURN_IF_ERROR(c.tensor(p.cmp_rows, "cmp_rows", {B}, true));
  MOEX_RETURN_IF_ERROR(check_config(c, p.cfg));
  MOEX_RETURN_IF_ERROR(c.tensor(p.out, "out", {B, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_cmp, "out_cmp", {B, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_sel, "out_sel", {B, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.out_win, "out_win", {B, HQ, Dv}));
  MOEX_RETURN_IF_ERROR(c.optional(p.sel_idx, "sel_idx", {B, H, p.cfg.select_n}, true));
  if (B == 0) return Status::ok();
  const int64_t max_len = p.seqs.block_table.shape[1] * page_size;
  if (max_len >= (int64_t(1) << 30)) return c.fail("seqs.block_table is too wide");

  knsa::Params k;
  k.rows.rows = int(B);
  k.rows.num_seqs = int(B);
  k.rows.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  k.hq = int(HQ); k.h = int(H); k.dk = int(Dk); k.dv = int(Dv);
  k.g = geometry(p.cfg);
  k.max_len = int(max_len > 0 ? max_len : 1);
  fill_common(k, p.q, p.gates, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx);
  k.raw.k = ref(p.k_cache); k.raw.v = ref(p.v_cache);
  k.raw.k_sp = p.k_cache.stride[0]; k.raw.k_st = p.k_cache.stride[1]; k.raw.k_sh = p.k_cache.stride[2];
  k.raw.v_sp = p.v_cache.stride[0]; k.raw.v_st = p.v_cache.stride[1]; k.raw.v_sh = p.v_cache.stride[2];
  k.raw.block_table = p.seqs.block_table.ptr<int32_t>();
  k.raw.s_bt = p.seqs.block_table.stride[0];
  k.raw.page_size = int(page_size);
  k.cmp.k = ref(p.k_cmp_cache); k.cmp.v = ref(p.v_cmp_cache);
  k.cmp.k_srow = p.k_cmp_cache.stride[0]; k.cmp.k_sj = p.k_cmp_cache.stride[1]; k.cmp.k_sh = p.k_cmp_cache.stride[2];
  k.cmp.v_srow = p.v_cmp_cache.stride[0]; k.cmp.v_sj = p.v_cmp_cache.stride[1]; k.cmp.v_sh = p.v_cmp_cache.stride[2];
  k.cmp.cmp_rows = p.cmp_rows.ptr<int32_t>();
  // The tensor-core path (nsa_decode_fast.h: 2 launches, pools the closed block itself) where
  // the shape fits it; else the CUDA-core split-KV kernels (nsa_decode_split.h); else the
  // one-CTA-per-head kernels of the forward.
  if (knsa::decode_fast_supported(k)) {
    void* base = get(knsa::decode_fast_scratch_bytes(k));
    if (base == nullptr) return c.fail("out of device memory for scratch");
    return cuda_status(knsa::launch_decode_fast(k, p.update_cmp, base, counters() + kernels::kCountersNsaDecode, stream_),
                       "cuda nsa_decode: tensor-core attention launch");
  }
  const bool split = knsa::decode_split_supported(k);
  if (!split) MOEX_RETURN_IF_ERROR(check_smem(c, k));

  if (p.update_cmp) {
    knsa::CompressDecode cd;
    cd.rows = k.rows;
    cd.h = int(H); cd.dk = int(Dk); cd.dv = int(Dv);
    cd.block_len = p.cfg.block_len; cd.block_stride = p.cfg.block_stride;
    cd.raw = k.raw;
    cd.cmp = k.cmp;
    MOEX_RETURN_IF_ERROR(cuda_status(knsa::launch_compress_decode(cd, stream_), "cuda nsa_decode: compress launch"));
  }
  if (split) {
    void* base = get(knsa::decode_split_scratch_bytes(k));
    if (base == nullptr) return c.fail("out of device memory for scratch");
    return cuda_status(knsa::launch_decode_split(k, base, stream_), "cuda nsa_decode: split attention launch");
  }
  void* base = get(knsa::scratch_bytes(k));
  if (base == nullptr) return c.fail("out of device memory for scratch");
  return cuda_status(knsa::launch_attention(k, base, stream_), "cuda nsa_decode: attention launch");
}

}  // namespace moex
