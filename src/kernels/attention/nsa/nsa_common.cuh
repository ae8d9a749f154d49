// Device helpers shared by the NSA kernels: typed loads/stores through FloatRef, sequence lookup,
// raw and compressed KV addressing.
#pragma once
#include <cuda_bf16.h>

#include "kernels/attention/nsa/nsa.h"
#include "kernels/common/search.cuh"

namespace moex::kernels::nsa {

__device__ __forceinline__ float ld(const FloatRef& r, int64_t i) {
  return r.bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(r.p)[i]) : static_cast<const float*>(r.p)[i];
}
__device__ __forceinline__ void st(const FloatRef& r, int64_t i, float v) {
  if (r.bf16) static_cast<__nv_bfloat16*>(r.p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(r.p)[i] = v;
}

struct RowPos {
  int seq, pos, start;  // start: first row of the sequence (forward) or 0 (decode)
};
__device__ __forceinline__ RowPos row_pos(const Rows& r, int row) {
  if (r.cu_seqlens != nullptr) {
    const int s = upper_index(r.cu_seqlens, r.num_seqs, row);
    return {s, row - r.cu_seqlens[s], r.cu_seqlens[s]};
  }
  return {row, r.seq_lens[row] - 1, 0};
}

// Element offsets of (seq, pos, head) in the raw k / v.
__device__ __forceinline__ void raw_offsets(const RawKv& kv, int seq, int start, int pos, int head, int64_t& ko,
                                            int64_t& vo) {
  if (kv.block_table == nullptr) {
    const int64_t row = int64_t(start) + pos;
    ko = row * kv.k_st + head * kv.k_sh;
    vo = row * kv.v_st + head * kv.v_sh;
  } else {
    const int64_t page = kv.block_table[int64_t(seq) * kv.s_bt + pos / kv.page_size];
    const int off = pos % kv.page_size;
    ko = page * kv.k_sp + off * kv.k_st + head * kv.k_sh;
    vo = page * kv.v_sp + off * kv.v_st + head * kv.v_sh;
  }
}

// Element offsets of compressed block j = 0 of (seq, head); block j adds j * s_j.
__device__ __forceinline__ void cmp_base(const CmpKv& c, int seq, int head, int64_t& ko, int64_t& vo) {
  if (c.cu_cmp != nullptr) {
    const int64_t r = c.cu_cmp[seq];
    ko = r * c.k_sj + head * c.k_sh;
    vo = r * c.v_sj + head * c.v_sh;
  } else {
    const int64_t r = c.cmp_rows[seq];
    ko = r * c.k_srow + head * c.k_sh;
    vo = r * c.v_srow + head * c.v_sh;
  }
}

// Blocks of the contract's geometry.
__device__ __forceinline__ int num_cmp_visible(const Geometry& g, int t) {
  return t >= g.block_len - 1 ? (t - g.block_len + 1) / g.block_stride + 1 : 0;
}

}  // namespace moex::kernels::nsa
