// Split-KV attention over a paged cache, one block per (token, kv head, chunk of 2 to 16 query
// heads of that kv head, split of attn_split_keys(row keys) keys). Each block runs an online softmax over
// 32-key tiles of its split and writes (m, l, acc) partials; a combine kernel merges a row's
// splits in ascending order. All sums run in a fixed order, and a row's splits depend only on
// its own position, window and sequence, so its output does not depend on the batch.
//
// Keys beyond the sequence (or outside the sliding window) are neither read nor used: their
// K/V smem rows are zero and their scores -inf, so NaN-filled unused pages cannot leak.
#pragma once
#include <cstdint>

#include "kernels/attention/attention.h"
#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/search.cuh"

namespace moex::kernels::attention {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;      // query heads per block
constexpr int kTileKeys = 32;  // keys per inner tile (one per lane in the softmax step)

struct AttnArgs {
  const void* q; int64_t s_qt, s_qh;                  // q [n, heads_q, dk]
  const void* k; int64_t s_kp, s_ks, s_kh;            // k [pages, page_size, kv_heads, dk]
  const void* v; int64_t s_vp, s_vs, s_vh;            // v [pages, page_size, kv_heads, dv]
  const int32_t* block_table; int64_t s_bt;          // [num_seqs, max_pages]
  const int32_t* seq_lens;                            // [num_seqs]
  const int32_t* query_start;                         // [num_seqs + 1]
  int num_seqs, page_size;
  int token0, tokens;                                 // rows [token0, token0 + tokens) of this launch
  int heads_q, kv_heads, group, dk, dv;
  bool v_in_k;                                        // MLA: values are k[..., 0:dv]
  int num_splits;
  int rows_per_block;                                 // query heads per block, <= kRows (run_attention)
  int short_split_keys;                               // attn_split_keys of rows <= 4096 keys
  bool hoist_pages;                                   // see AttnVariant
  float scale;
  int window;
  float* part_acc;                                    // [tokens, heads_q, num_splits, dv]
  float* part_ml;                                     // [tokens, heads_q, num_splits, 2]
  void* out; int64_t s_ot, s_oh;                      // out [n, heads_q, dv]
  float* lse; int64_t s_lse;                          // lse [n, heads_q] or nullptr
};

struct RowRange {
  int seq, lo, pos;  // keys [lo, pos] of sequence seq
};

__device__ inline RowRange row_range(const AttnArgs& a, int t) {
  const int lo_i = upper_index(a.query_start, a.num_seqs, t);
  RowRange r;
  r.seq = lo_i;
  r.pos = a.seq_lens[lo_i] - (a.query_start[lo_i + 1] - t);
  r.lo = a.window > 0 ? max(0, r.pos - a.window + 1) : 0;
  return r;
}

inline size_t smem_bytes(int dk, int dv, bool v_in_k) {
  return sizeof(float) * (size_t(kRows) * dk + size_t(kTileKeys) * (dk + 1) + (v_in_k ? 0 : size_t(kTileKeys) * dv) +
                          size_t(kRows) * kTileKeys + 3 * kRows);
}

template <class TQ, class TKV, int kDVJ>
__global__ void __launch_bounds__(kThreads) attn_split_kernel(AttnArgs a) {
  pdl::trigger();  // the combine may be scheduled once every split block runs (pdl.cuh)
  extern __shared__ float smem[];
  const int dk = a.dk, dv = a.dv;
  float* qs = smem;                                        // (kRows, dk)
  float* ks = qs + kRows * dk;                             // (kTileKeys, dk + 1)
  float* vs = a.v_in_k ? ks : ks + kTileKeys * (dk + 1);   // (kTileKeys, v_ld)
  const int v_ld = a.v_in_k ? dk + 1 : dv;
  float* ps = ks + kTileKeys * (dk + 1) + (a.v_in_k ? 0 : kTileKeys * dv);  // (kRows, kTileKeys)
  float* row_m = ps + kRows * kTileKeys;                   // (kRows)
  float* row_l = row_m + kRows;
  float* row_alpha = row_l + kRows;

  const int tok_local = blockIdx.x / a.kv_heads, g = blockIdx.x % a.kv_heads;
  const int t = a.token0 + tok_local;
  const int split = blockIdx.y;
  const int h0 = blockIdx.z * a.rows_per_block;  // first head within the group
  const int rows = min(a.rows_per_block, a.group - h0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  const RowRange rr = row_range(a, t);
  const int split_keys = attn_split_keys(rr.pos + 1, a.short_split_keys);
  const int kbeg = max(rr.lo, split * split_keys);
  const int kend = min(rr.pos + 1, (split + 1) * split_keys);

  auto part_index = [&](int r) { return (int64_t(tok_local) * a.heads_q + g * a.group + h0 + r) * a.num_splits + split; };
  if (kbeg >= kend) {  // nothing to see in this split
    if (threadIdx.x < rows) {
      a.part_ml[part_index(threadIdx.x) * 2] = -INFINITY;
      a.part_ml[part_index(threadIdx.x) * 2 + 1] = 0.f;
    }
    return;
  }

  for (int i = threadIdx.x; i < kRows * dk; i += kThreads) {
    const int r = i / dk, d = i % dk;
    qs[i] = r < rows ? to_f32(static_cast<const TQ*>(a.q)[int64_t(t) * a.s_qt + int64_t(g * a.group + h0 + r) * a.s_qh + d]) : 0.f;
  }
  if (threadIdx.x < kRows) {
    row_m[threadIdx.x] = -INFINITY;
    row_l[threadIdx.x] = 0.f;
  }
  float acc[kRows][kDVJ];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int j = 0; j < kDVJ; ++j) acc[r][j] = 0.f;

  const int32_t* pages = a.block_table + int64_t(rr.seq) * a.s_bt;
  const TKV* kbase = static_cast<const TKV*>(a.k);
  const TKV* vbase = static_cast<const TKV*>(a.v);
  for (int k0 = kbeg; k0 < kend; k0 += kTileKeys) {
    // Lane j looks up key k0 + j's page once; the loads below take it by shuffle, so no load
    // waits on a page-table read of its own and a warp's keys are all in flight together.
    const int my_key = k0 + lane;
    const int my_page = a.hoist_pages && my_key < kend ? pages[my_key / a.page_size] : 0;
    __syncthreads();  // previous tile fully consumed
#pragma unroll
    for (int jj = 0; jj < kTileKeys / kWarps; ++jj) {
      const int j = warp + jj * kWarps;
      const int key = k0 + j;
      const bool valid = key < kend;
      const int shared_page = __shfl_sync(0xffffffffu, my_page, j);
      int64_t page = 0, slot = 0;
      if (valid) {
        page = a.hoist_pages ? shared_page : pages[key / a.page_size];
        slot = key % a.page_size;
      }
      const TKV* kp = kbase + page * a.s_kp + slot * a.s_ks + g * a.s_kh;
      for (int d = lane; d < dk; d += 32) ks[j * (dk + 1) + d] = valid ? to_f32(kp[d]) : 0.f;
      if (!a.v_in_k) {
        const TKV* vp = vbase + page * a.s_vp + slot * a.s_vs + g * a.s_vh;
        for (int d = lane; d < dv; d += 32) vs[j * dv + d] = valid ? to_f32(vp[d]) : 0.f;
      }
    }
    __syncthreads();
    // Scores: lane = key, rows warp, warp + 4, ...
#pragma unroll
    for (int i = 0; i < kRows / kWarps; ++i) {
      const int r = warp + i * kWarps;
      float dot = 0.f;
      if (r < rows) {
        const float* qr = qs + r * dk;
        const float* kr = ks + lane * (dk + 1);
        for (int d = 0; d < dk; ++d) dot = fmaf(qr[d], kr[d], dot);
      }
      ps[r * kTileKeys + lane] = (k0 + lane < kend) ? a.scale * dot : -INFINITY;
    }
    __syncwarp();
    // Online softmax, one warp per row.
#pragma unroll
    for (int i = 0; i < kRows / kWarps; ++i) {
      const int r = warp + i * kWarps;
      if (r >= rows) continue;
      const float s = ps[r * kTileKeys + lane];
      const float m_old = row_m[r];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float p = m_new == -INFINITY ? 0.f : expf(s - m_new);
      const float alpha = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
      const float psum = warp_sum(p);
      ps[r * kTileKeys + lane] = p;
      __syncwarp();
      if (lane == 0) {
        row_m[r] = m_new;
        row_l[r] = row_l[r] * alpha + psum;
        row_alpha[r] = alpha;
      }
    }
    __syncthreads();
    // acc = acc * alpha + P @ V: thread owns value dims threadIdx.x + 128 * j.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      const float alpha = row_alpha[r];
#pragma unroll
      for (int j = 0; j < kDVJ; ++j) {
        const int d = threadIdx.x + j * kThreads;
        if (d >= dv) continue;
        float pv = 0.f;
#pragma unroll 8
        for (int kk = 0; kk < kTileKeys; ++kk) pv = fmaf(ps[r * kTileKeys + kk], vs[kk * v_ld + d], pv);
        acc[r][j] = fmaf(acc[r][j], alpha, pv);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
    const int64_t pi = part_index(r);
#pragma unroll
    for (int j = 0; j < kDVJ; ++j) {
      const int d = threadIdx.x + j * kThreads;
      if (d < dv) a.part_acc[pi * dv + d] = acc[r][j];
    }
    if (threadIdx.x == 0) {
      a.part_ml[pi * 2] = row_m[r];
      a.part_ml[pi * 2 + 1] = row_l[r];
    }
  }
}

// One block per (token, query head): merge the splits in ascending order. The splits' weights
// exp(m_s - m) are computed once into smem (in parallel: the max is exact in any order), then
// l = sum_s l_s w_s runs serially in ascending order on one thread and each thread sums its value
// dims over the splits in ascending order, loading 16 splits' values before using any, so long
// rows (128 splits at 32K keys) are not a chain of global-memory latencies (ncu, batch 1, 32K
// keys: 60 us with one load per step).
template <class TO>
__global__ void attn_combine_kernel(AttnArgs a) {
  // Launched as a programmatic dependent of the split kernel (pdl.cuh): once every combine block
  // has started, the next kernel (o_proj) may start prefetching its weights; the partials are
  // read after the wait.
  pdl::trigger();
  pdl::wait();
  extern __shared__ float combine_smem[];
  float* weight = combine_smem;               // [num_splits] exp(m_s - m), 0 for empty splits
  float* split_l = combine_smem + a.num_splits;  // [num_splits]
  __shared__ float block_max[32];
  __shared__ float row_m, row_l;
  const int tok_local = blockIdx.x / a.heads_q, h = blockIdx.x % a.heads_q;
  const int64_t base = (int64_t(tok_local) * a.heads_q + h) * a.num_splits;
  float m = -INFINITY;
  for (int s = threadIdx.x; s < a.num_splits; s += blockDim.x) {
    const float ls = a.part_ml[(base + s) * 2 + 1];
    split_l[s] = ls;
    if (ls > 0.f) m = fmaxf(m, a.part_ml[(base + s) * 2]);
  }
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) block_max[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float mm = -INFINITY;
    for (int w = 0; w < int(blockDim.x / 32); ++w) mm = fmaxf(mm, block_max[w]);
    row_m = mm;
  }
  __syncthreads();
  m = row_m;
  for (int s = threadIdx.x; s < a.num_splits; s += blockDim.x)
    weight[s] = split_l[s] > 0.f ? expf(a.part_ml[(base + s) * 2] - m) : 0.f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float l = 0.f;
    for (int s = 0; s < a.num_splits; ++s)
      if (split_l[s] > 0.f) l += split_l[s] * weight[s];
    row_l = l;
  }
  __syncthreads();
  const float l = row_l;
  const int t = a.token0 + tok_local;
  TO* out = static_cast<TO*>(a.out) + int64_t(t) * a.s_ot + int64_t(h) * a.s_oh;
  constexpr int kBatch = 16;  // loads issued together before any is used
  for (int d = threadIdx.x; d < a.dv; d += blockDim.x) {
    float acc = 0.f;
    for (int s0 = 0; s0 < a.num_splits; s0 += kBatch) {
      float v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)  // empty splits were never written: loaded, not used
        v[j] = s0 + j < a.num_splits ? a.part_acc[(base + s0 + j) * a.dv + d] : 0.f;
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (s0 + j < a.num_splits && split_l[s0 + j] > 0.f) acc += v[j] * weight[s0 + j];
    }
    out[d] = from_f32<TO>(l > 0.f ? acc / l : 0.f);
  }
  if (a.lse && threadIdx.x == 0) a.lse[int64_t(t) * a.s_lse + h] = l > 0.f ? m + logf(l) : -INFINITY;
}

// A replacement of attn_split_kernel's launch (same rows, splits and partials; grid
// (tokens x kv_heads, num_splits)): the GQA tensor-core kernel (gqa/gqa_split_tc.h).
using SplitLauncher = cudaError_t (*)(const AttnArgs& a, cudaStream_t stream);

// Runs the split kernel (or `split_launcher`) and the combine over all rows, in row chunks bounded
// by the scratch cap.
template <class TQ, class TKV, int kDVJ, class TO>
cudaError_t run_attention(AttnArgs a, int n, Scratch& scratch, cudaStream_t stream, SplitLauncher split_launcher = nullptr) {
  constexpr size_t kMaxScratch = size_t(256) << 20;
  const size_t per_token = size_t(a.heads_q) * a.num_splits * (a.dv + 2) * sizeof(float);
  const int chunk = int(per_token * n <= kMaxScratch ? n : (kMaxScratch / per_token > 0 ? kMaxScratch / per_token : 1));
  using C = ScratchCarver;
  const size_t bytes = C::bytes_for<float>(size_t(chunk) * a.heads_q * a.num_splits * a.dv) +
                       C::bytes_for<float>(size_t(chunk) * a.heads_q * a.num_splits * 2);
  C carver{static_cast<char*>(scratch.get(bytes))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;
  a.part_acc = carver.carve<float>(size_t(chunk) * a.heads_q * a.num_splits * a.dv);
  a.part_ml = carver.carve<float>(size_t(chunk) * a.heads_q * a.num_splits * 2);
  const size_t smem = smem_bytes(a.dk, a.dv, a.v_in_k);
  cudaError_t err = cudaSuccess;
  if (split_launcher == nullptr) {
    err = cudaFuncSetAttribute(attn_split_kernel<TQ, TKV, kDVJ>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  // The combine stages two floats per split in dynamic smem: past the default 48 KiB (block tables
  // wider than ~1.5M keys) it must opt in, up to the device's limit.
  const size_t combine_smem = 2 * sizeof(float) * size_t(a.num_splits);
  if (combine_smem > (size_t(48) << 10)) {
    err = cudaFuncSetAttribute(attn_combine_kernel<TO>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(combine_smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t two_waves = 2 * int64_t(sm_count());
  for (int t0 = 0; t0 < n; t0 += chunk) {
    a.token0 = t0;
    a.tokens = n - t0 < chunk ? n - t0 : chunk;
    // Few (token, kv head, split) blocks (batch-1 decode: 4 for Qwen3-30B-A3B): fewer query heads
    // per block, down to 2, until about two blocks per SM. A row's arithmetic does not depend on
    // the rows sharing its block, so this changes no bits.
    const int64_t base_blocks = int64_t(a.tokens) * a.kv_heads * a.num_splits;
    a.rows_per_block = kRows;
    while (a.rows_per_block > 2 && base_blocks * ((a.group + a.rows_per_block - 1) / a.rows_per_block) < two_waves)
      a.rows_per_block /= 2;
    const dim3 grid(unsigned(a.tokens * a.kv_heads), unsigned(a.num_splits),
                    unsigned((a.group + a.rows_per_block - 1) / a.rows_per_block));
    if (split_launcher != nullptr) {
      err = split_launcher(a, stream);
      if (err != cudaSuccess) return err;
    } else {
      attn_split_kernel<TQ, TKV, kDVJ><<<grid, kThreads, smem, stream>>>(a);
      err = cudaGetLastError();  // the combine's cudaLaunchKernelEx reports only its own launch
      if (err != cudaSuccess) return err;
    }
    err = pdl::launch(attn_combine_kernel<TO>, dim3(unsigned(a.tokens * a.heads_q)), dim3(128), combine_smem, stream,
                      pdl::enabled(), a);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace moex::kernels::attention
