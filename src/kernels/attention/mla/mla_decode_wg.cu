// wgmma MLA decode (docs/kernels/mla.md, "Session 5"): one CTA per (token, 64-head group, split
// of split_keys keys), 256 threads = 2 warpgroups. The 64 query rows of a CTA are 64 heads of one
// token, so they share one causal end (kend) and the kernel chosen for a row depends only on the
// head count. Per 64-key tile:
//   - the K tile [64 keys, 576] bf16 arrives by cp.async (all threads, one tile ahead, ring of 2)
//     in the 128-byte-swizzle layout: 9 blocks of 64 features, key j at j * 128 bytes in each;
//   - S = Q K^T: warpgroup w computes S[:, 32 w .. 32 w + 31] by 36 wgmma m64n32k16, Q [64, 576]
//     and K both K-major from smem descriptors;
//   - softmax row-local in registers: row max exchanged between the two warpgroups through smem
//     (max is exact in any order), both warpgroups then hold the same m, alpha; P = bf16(p) goes
//     to smem (64 x 64, swizzled K-major); l += (sum of warpgroup 0's p) + (warpgroup 1's), in
//     that order, in both warpgroups;
//   - O [64, 512] fp32: warpgroup w owns value columns [256 w, 256 w + 256) (128 registers per
//     thread), O = O * alpha + P V by 4 wgmma m64n256k16 whose B operand is V = the first 512
//     features of the same K tile, read N-major (imm-trans-b 1): nothing is copied.
// Partials (m, l, O) per (row, split) are merged by a combine kernel in ascending split order (the
// arithmetic of mla_decode_tc.cu's combine). The split size is a constant, so a row's bits depend
// only on its own keys. Keys past kend are zero-filled (never read) and get score -inf: NaN pages
// and slots never reach the arithmetic.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/attention/mla/mla_combine.cuh"
#include "kernels/attention/mla/mla_decode_wg.h"
#include "kernels/attention/mla/mla_wgmma.cuh"
#include "kernels/common/dtype.cuh"
#include "kernels/common/search.cuh"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/ptx.cuh"
#include "kernels/gemm/wgmma_ptx.cuh"

namespace moex::kernels {
namespace mla_wg {

using bf16 = __nv_bfloat16;
using gemm::ptx::cp_async_16;
using gemm::ptx::cp_async_commit;
using gemm::ptx::cp_async_wait;
using gemm::ptx::smem_addr;

// Off by default: faster on every measured 128-head case (2.1-2.4x, docs/kernels/mla.md
// "Session 5"), but the full MLA suite and the 268-case test set have not yet run with it on.
// MOEX_MLA_WG=0|1 overrides.
constexpr bool kMlaWgDefault = false;

constexpr int kD = 576;                                 // latent + rope features
constexpr int kDV = 512;                                // value features
constexpr int kRows = 64;                               // query rows (heads of one token) per CTA
constexpr int kKeys = 64;                               // keys per K tile
constexpr int kBlockBytes = 64 * 128;                   // 64 rows x 64 features bf16, swizzled
constexpr int kTileBytes = (kD / 64) * kBlockBytes;     // 9 blocks: a Q tile or a K tile (72 KB)
constexpr int kThreads = 256;                           // 2 warpgroups
constexpr int kChunks = kKeys * (kD / 8) / kThreads;    // 16-byte chunks per thread per tile: 18
static_assert(kChunks * kThreads == kKeys * (kD / 8), "a tile must split evenly over the threads");
// Q, 2 K tiles, P [64, 64] bf16, row max and row sum [2][64] f32 each, + 1024 for the alignment.
constexpr size_t kSmemBytes = 3 * size_t(kTileBytes) + kBlockBytes + 4 * kRows * sizeof(float) + 1024;
static_assert(kSmemBytes <= 227 * 1024, "MLA wgmma tile does not fit in shared memory");

struct Args {
  const bf16* q; int64_t s_qt, s_qh;               // q [n, heads, 576]
  const bf16* cache; int64_t s_cp, s_cs;           // cache [pages, page_size, 576]
  const int32_t* block_table; int64_t s_bt;        // [num_seqs, max_pages]
  const int32_t* seq_lens;                         // [num_seqs]
  const int32_t* query_start;                      // [num_seqs + 1]
  int num_seqs, page_size, page_shift, heads, head_groups;
  bool one_page;  // page_size a power-of-two multiple of 64, page offsets < 2^31: a tile is one page
  int token0, tokens;                              // rows [token0, token0 + tokens) of this launch
  int split_keys, num_splits;
  float scale;
  float* part_acc;                                 // [tokens, heads, num_splits, 512]
  float* part_ml;                                  // [tokens, heads, num_splits, 2]
  void* out; int64_t s_ot, s_oh;                   // out [n, heads, 512]
  float* lse; int64_t s_lse;                       // lse [n, heads] or nullptr
};

// Byte offset of 16-byte chunk c (of 72) of row j in a swizzled tile: block c / 8, row j at
// j * 128, chunk c % 8 stored at (c % 8) ^ (j % 8) (the wgmma 128-byte swizzle).
__device__ __forceinline__ uint32_t tile_off(int j, int c) {
  return uint32_t((c >> 3) * kBlockBytes + j * 128 + (((c & 7) ^ (j & 7)) << 4));
}

__global__ void __launch_bounds__(kThreads, 1) mla_decode_wg_kernel(Args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t s_q = smem_addr(base);          // [9 blocks][64 rows][128 B] Q tile
  const uint32_t s_k = s_q + kTileBytes;         // [2][9 blocks][64 keys][128 B] K ring
  const uint32_t s_p = s_q + 3 * kTileBytes;     // [64 rows][128 B] P, swizzled K-major
  unsigned char* p_bytes = base + 3 * kTileBytes;
  float* red_max = reinterpret_cast<float*>(p_bytes + kBlockBytes);  // [2 warpgroups][64 rows]
  float* red_sum = red_max + 2 * kRows;                               // [2 warpgroups][64 rows]

  const int tid = threadIdx.x, wg = tid >> 7, wq = (tid >> 5) & 3, lane = tid & 31;
  const int tl = blockIdx.x / a.head_groups, h0 = (blockIdx.x % a.head_groups) * kRows;
  const int t = a.token0 + tl, split = blockIdx.y;
  const int seq = upper_index(a.query_start, a.num_seqs, t);
  const int pos = a.seq_lens[seq] - (a.query_start[seq + 1] - t);  // the token's causal position
  const int kbeg = split * a.split_keys;
  const int kend = min(pos + 1, kbeg + a.split_keys);
  auto part_row = [&](int r) { return (int64_t(tl) * a.heads + h0 + r) * a.num_splits + split; };
  if (kbeg >= kend) {
    if (tid < kRows) {
      a.part_ml[part_row(tid) * 2] = -INFINITY;
      a.part_ml[part_row(tid) * 2 + 1] = 0.f;
    }
    return;
  }

  {  // Q tile: 64 heads of token t.
    const bf16* q0 = a.q + int64_t(t) * a.s_qt + int64_t(h0) * a.s_qh;  // [64][576], row stride s_qh
#pragma unroll
    for (int m = 0; m < kChunks; ++m) {
      const int i = tid + m * kThreads, r = i / (kD / 8), c = i % (kD / 8);
      cp_async_16(s_q + tile_off(r, c), q0 + int64_t(r) * a.s_qh + c * 8, 16);
    }
  }
  const int32_t* pages = a.block_table + int64_t(seq) * a.s_bt;  // [max_pages]
  const int ntiles = (kend - kbeg + kKeys - 1) / kKeys;
  // One page per tile: the page id of tile it (0 past the end, not read), read one tile early.
  auto tile_page = [&](int it) {
    const int k0 = kbeg + it * kKeys;
    return a.one_page && k0 < kend ? pages[k0 >> a.page_shift] : 0;
  };
  // Each thread's 18 chunks are unrolled so that their addresses (and block-table reads for
  // small pages) are independent and issue back to back.
  auto load_tile = [&](int it, uint32_t dst, int pg) {
    const int k0 = kbeg + it * kKeys;
    if (a.one_page) {
      const bf16* src0 = a.cache + int64_t(pg) * a.s_cp + int64_t(k0 & (a.page_size - 1)) * a.s_cs;
      const int s_cs = int(a.s_cs);
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int i = tid + m * kThreads, j = i / (kD / 8), c = i % (kD / 8);
        const bool valid = k0 + j < kend;
        cp_async_16(dst + tile_off(j, c), valid ? src0 + (j * s_cs + c * 8) : a.cache, valid ? 16 : 0);
      }
    } else {
      int pid[kChunks];
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int key = k0 + (tid + m * kThreads) / (kD / 8);
        pid[m] = key < kend ? pages[a.page_shift >= 0 ? key >> a.page_shift : key / a.page_size] : 0;
      }
#pragma unroll
      for (int m = 0; m < kChunks; ++m) {
        const int i = tid + m * kThreads, j = i / (kD / 8), c = i % (kD / 8);
        const int key = k0 + j;
        const bool valid = key < kend;
        const int slot = a.page_shift >= 0 ? key & (a.page_size - 1) : key % a.page_size;
        const bf16* src = valid ? a.cache + int64_t(pid[m]) * a.s_cp + int64_t(slot) * a.s_cs + c * 8 : a.cache;
        cp_async_16(dst + tile_off(j, c), src, valid ? 16 : 0);
      }
    }
  };
  load_tile(0, s_k, tile_page(0));
  cp_async_commit();
  int pg_next = tile_page(1);

  float o[128];  // O [64, 256 w .. 256 w + 255] of this warpgroup, m64n256 accumulator layout
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  const int r_lo = wq * 16 + lane / 4;  // this thread's rows: r_lo and r_lo + 8

  for (int it = 0; it < ntiles; ++it) {
    cp_async_wait<0>();
    gemm::wg::fence_proxy_async();
    // Tile it (and Q) landed for all; both warpgroups retired tile it - 1's wgmmas, so its K
    // buffer and P may be refilled.
    __syncthreads();
    if (it + 1 < ntiles) {
      load_tile(it + 1, s_k + ((it + 1) & 1) * kTileBytes, pg_next);
      pg_next = tile_page(it + 2);
    }
    cp_async_commit();
    const uint32_t kb = s_k + (it & 1) * kTileBytes;

    // S [64, 32] = Q K[32 w .. 32 w + 31]^T: 9 feature blocks x 4 k16 steps, ascending.
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.f;
    gemm::wg::fence_operands(s);
    gemm::wg::fence();
#pragma unroll
    for (int cb = 0; cb < kD / 64; ++cb) {
      const uint64_t da = gemm::wg::desc_sw128(s_q + cb * kBlockBytes);
      const uint64_t db = gemm::wg::desc_sw128(kb + cb * kBlockBytes + wg * 32 * 128);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_m64n32k16(s, da + 2 * kk, db + 2 * kk);  // +32 bytes per k16
    }
    gemm::wg::commit();
    gemm::wg::wait<0>();
    gemm::wg::fence_operands(s);

    // Scores: register 4 j + e is row r_lo + 8 (e / 2), key 32 w + 8 j + 2 (lane % 4) + e % 2.
    const int key0 = kbeg + it * kKeys + wg * 32 + 2 * (lane & 3);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float v = key0 + 8 * j + (e & 1) < kend ? s[4 * j + e] * a.scale : -INFINITY;
        s[4 * j + e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    }
    if ((lane & 3) == 0) {
      red_max[wg * kRows + r_lo] = mx[0];
      red_max[wg * kRows + r_lo + 8] = mx[1];
    }
    __syncthreads();  // both halves' row maxima

    float alpha[2], sum[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      const float m_new = fmaxf(m_run[h], fmaxf(red_max[r], red_max[kRows + r]));
      alpha[h] = m_new == -INFINITY ? 1.f : expf(m_run[h] - m_new);
      m_run[h] = m_new;
      sum[h] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float mr = m_run[e >> 1];
        p[e] = mr == -INFINITY ? 0.f : expf(s[4 * j + e] - mr);
        sum[e >> 1] += p[e];
      }
      const int kc = wg * 32 + 8 * j + 2 * (lane & 3);  // key of p[0] in the tile
      const uint32_t off = uint32_t((((kc >> 3) ^ (r_lo & 7)) << 4) + (kc & 7) * 2);  // rows r_lo, r_lo + 8: same swizzle
      *reinterpret_cast<uint32_t*>(p_bytes + r_lo * 128 + off) = gemm::ptx::pack_bf16x2(p[0], p[1]);
      *reinterpret_cast<uint32_t*>(p_bytes + (r_lo + 8) * 128 + off) = gemm::ptx::pack_bf16x2(p[2], p[3]);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
    }
    if ((lane & 3) == 0) {
      red_sum[wg * kRows + r_lo] = sum[0];
      red_sum[wg * kRows + r_lo + 8] = sum[1];
    }
    gemm::wg::fence_proxy_async();  // P (generic stores) visible to the wgmma reads
    __syncthreads();                // all of P and both halves' row sums
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r_lo + 8 * h;
      l_run[h] = l_run[h] * alpha[h] + (red_sum[r] + red_sum[kRows + r]);
    }

    // O = O * alpha + P V[:, 256 w ..]: 4 k16 steps of 16 keys (2 groups of 8 rows, 2048 bytes).
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      o[4 * j] *= alpha[0]; o[4 * j + 1] *= alpha[0];
      o[4 * j + 2] *= alpha[1]; o[4 * j + 3] *= alpha[1];
    }
    gemm::wg::fence_operands(o);
    gemm::wg::fence();
    const uint64_t dp = gemm::wg::desc_sw128(s_p);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t dv = desc_sw128_mn(kb + wg * 4 * kBlockBytes + kk * 2048, kBlockBytes, 1024);
      gemm::wg::wgmma_m64n256k16<1>(o, dp + 2 * kk, dv);
    }
    gemm::wg::commit();
    gemm::wg::wait<0>();
    gemm::wg::fence_operands(o);
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r_lo + 8 * h;
    float* dst = a.part_acc + part_row(r) * kDV + wg * 256 + 2 * (lane & 3);  // [256] of this warpgroup
#pragma unroll
    for (int j = 0; j < 32; ++j) *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[4 * j + 2 * h], o[4 * j + 2 * h + 1]);
    if (wg == 0 && (lane & 3) == 0) {
      a.part_ml[part_row(r) * 2] = m_run[h];
      a.part_ml[part_row(r) * 2 + 1] = l_run[h];
    }
  }
}

// The splits merged in ascending order by mla_combine.cuh (the mma.sync kernel's combine).
template <class TO>
__global__ void __launch_bounds__(mla_combine::kCombineThreads) mla_wg_combine_kernel(Args a) {
  mla_combine::combine_block<TO>(a);
}

template <class TO>
cudaError_t run(Args a, int n, Scratch& scratch, cudaStream_t stream) {
  constexpr size_t kMaxScratch = size_t(256) << 20;
  const size_t per_token = size_t(a.heads) * a.num_splits * (kDV + 2) * sizeof(float);
  const int chunk = int(per_token * n <= kMaxScratch ? n : std::max<size_t>(1, kMaxScratch / per_token));
  using C = ScratchCarver;
  const size_t rows = size_t(chunk) * a.heads * a.num_splits;
  C carver{static_cast<char*>(scratch.get(C::bytes_for<float>(rows * kDV) + C::bytes_for<float>(rows * 2)))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;
  a.part_acc = carver.carve<float>(rows * kDV);
  a.part_ml = carver.carve<float>(rows * 2);
  cudaError_t err = cudaFuncSetAttribute(mla_decode_wg_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
  if (err != cudaSuccess) return err;
  for (int t0 = 0; t0 < n; t0 += chunk) {
    a.token0 = t0;
    a.tokens = std::min(chunk, n - t0);
    // Head group fastest: the CTAs that read the same keys run side by side (the second read
    // hits L2).
    const dim3 grid(unsigned(a.tokens * a.head_groups), unsigned(a.num_splits));
    mla_decode_wg_kernel<<<grid, kThreads, kSmemBytes, stream>>>(a);
    mla_wg_combine_kernel<TO><<<unsigned(a.tokens * a.heads), mla_combine::kCombineThreads, 0, stream>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace mla_wg

int mla_wg_split_keys() {
  const char* v = std::getenv("MOEX_MLA_WG_SPLIT");
  const int k = v != nullptr ? std::atoi(v) : 1024;
  return k >= mla_wg::kKeys && k <= 8192 && (k & (k - 1)) == 0 ? k : 1024;
}

bool mla_decode_wg_selected(const ops::MlaAttentionParams& p) {
  const char* v = std::getenv("MOEX_MLA_WG");  // read at every call: tests and benches switch in one process
  bool on = mla_wg::kMlaWgDefault;
  if (v != nullptr && std::strcmp(v, "1") == 0) on = true;
  if (v != nullptr && std::strcmp(v, "0") == 0) on = false;
  if (!on || p.cache.dtype != DType::kBF16 || p.q.shape[1] % mla_wg::kRows != 0) return false;
  return gemm::wgmma_available();
}

cudaError_t launch_mla_decode_wg(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream) {
  const int n = int(p.q.shape[0]);
  if (n == 0) return cudaSuccess;
  mla_wg::Args a{};
  a.q = p.q.ptr<__nv_bfloat16>(); a.s_qt = p.q.stride[0]; a.s_qh = p.q.stride[1];
  a.cache = p.cache.ptr<__nv_bfloat16>(); a.s_cp = p.cache.stride[0]; a.s_cs = p.cache.stride[1];
  a.block_table = p.seqs.block_table.ptr<int32_t>(); a.s_bt = p.seqs.block_table.stride[0];
  a.seq_lens = p.seqs.seq_lens.ptr<int32_t>();
  a.query_start = p.seqs.query_start.ptr<int32_t>();
  a.num_seqs = int(p.seqs.seq_lens.shape[0]);
  a.page_size = p.seqs.page_size;
  a.page_shift = (a.page_size & (a.page_size - 1)) == 0 ? __builtin_ctz(unsigned(a.page_size)) : -1;
  a.one_page = a.page_shift >= 0 && a.page_size % mla_wg::kKeys == 0 &&
               int64_t(a.page_size) * p.cache.stride[1] < (int64_t(1) << 31);
  a.heads = int(p.q.shape[1]);
  a.head_groups = a.heads / mla_wg::kRows;
  const int64_t max_keys = p.seqs.block_table.shape[1] * int64_t(p.seqs.page_size);
  a.split_keys = mla_wg_split_keys();
  a.num_splits = int(std::max<int64_t>(1, (max_keys + a.split_keys - 1) / a.split_keys));
  a.scale = p.scale;
  a.out = p.out.data; a.s_ot = p.out.stride[0]; a.s_oh = p.out.stride[1];
  a.lse = p.lse.empty() ? nullptr : p.lse.ptr<float>();
  a.s_lse = p.lse.empty() ? 0 : p.lse.stride[0];
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_act(p.out.dtype, [&](auto to) { err = mla_wg::run<decltype(to)>(a, n, scratch, stream); });
  return err;
}

}  // namespace moex::kernels
