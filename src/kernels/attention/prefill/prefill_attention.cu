// Causal prefill attention on tensor cores (flash-attention-2 schedule). Contract:
// src/ops/prefill_attention.h; notes: docs/kernels/prefill_attention.md.
//
// A CTA owns 64 query rows of one (sequence, query head); warp w holds rows 16w..16w+15 and their
// Q fragments in registers. The keys are walked in 64-key tiles in ascending order (fixed order,
// no split: a row's bits depend only on its own sequence), K/V tiles double-buffered in shared
// memory by cp.async with an XOR swizzle of the 16-byte chunks (chunk c of row r at c ^ (r & 7))
// so that ldmatrix reads are conflict-free. S = Q K^T and P stay in registers (P becomes the A
// operand of O += P V via ldmatrix.trans of V). Softmax runs online in f32 in log2 units (the
// scale is pre-multiplied by log2 e). Positions past the sequence end are masked by position
// (K/V rows past it are zero-filled by cp.async, their scores -inf), never by multiplying.
//
// Schedule: a one-CTA kernel lists the (sequence, query block) pairs longest first (query block
// j of any sequence walks j + 1 key tiles when causal), and the attention grid runs over that
// list times the heads, heads fastest, so the heaviest CTAs start first.
//
// Fragment layout (PTX ISA 9.7.14.5.8, m16n8k16): lane = 4 gr + gc; A {row gr, gr+8} x {cols 2gc,
// 2gc+1 | 2gc+8, 2gc+9}; B {k 2gc, 2gc+1 | 2gc+8, 2gc+9} x {col gr}; C {row gr: cols 2gc, 2gc+1;
// row gr+8: the same}.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/attention/prefill/prefill_attention.h"
#include "kernels/gemm/ptx.cuh"

namespace moex::kernels::prefill {
namespace {

constexpr int kWarps = kBlockRows / 16;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// PTX wrappers shared with the GEMMs (gemm/ptx.cuh).
using gemm::ptx::cp_async_16;
using gemm::ptx::cp_async_commit;
using gemm::ptx::cp_async_wait;
using gemm::ptx::ldmatrix_x4;
using gemm::ptx::ldmatrix_x4_trans;
using gemm::ptx::mma_bf16_16816;
using gemm::ptx::pack_bf16x2;
using gemm::ptx::smem_addr;
// Element offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] bf16 tile.
template <int D>
__device__ __forceinline__ int swz(int r, int c) { return r * D + ((c ^ (r & 7)) << 3); }

// One entry of the schedule: sequence and query block.
struct Item {
  int seq, block;
};

// Lists the (sequence, query block) pairs, blocks with more key tiles first. One CTA; the order
// inside one block index is whatever atomics give (it only affects speed, never values).
__global__ void schedule_kernel(const int32_t* __restrict__ cu, int num_seqs, Item* __restrict__ items,
                                int* __restrict__ count) {
  __shared__ int s_max, s_n;
  if (threadIdx.x == 0) { s_max = 0; s_n = 0; }
  __syncthreads();
  int mx = 0;
  for (int i = threadIdx.x; i < num_seqs; i += blockDim.x) {
    const int len = cu[i + 1] - cu[i];
    mx = max(mx, (len + kBlockRows - 1) / kBlockRows);
  }
  atomicMax(&s_max, mx);
  __syncthreads();
  for (int j = s_max - 1; j >= 0; --j) {
    for (int i = threadIdx.x; i < num_seqs; i += blockDim.x) {
      const int len = cu[i + 1] - cu[i];
      if ((len + kBlockRows - 1) / kBlockRows > j) items[atomicAdd(&s_n, 1)] = Item{i, j};
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = s_n;
}

template <int DK, int DV>
constexpr int smem_bytes() { return 2 * kBlockKeys * (DK + DV) * 2; }

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) attention_kernel(Params p, const Item* __restrict__ items,
                                                             const int* __restrict__ count) {
  static_assert(DK % 64 == 0 && DV % 64 == 0, "head dims must be multiples of 64 (8-chunk swizzle groups)");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __nv_bfloat16* s_k = reinterpret_cast<__nv_bfloat16*>(smem_raw);  // [2][kBlockKeys][DK]
  __nv_bfloat16* s_v = s_k + 2 * kBlockKeys * DK;                      // [2][kBlockKeys][DV]

  const int item_idx = blockIdx.x / p.hq;
  if (item_idx >= *count) return;
  const Item it = items[item_idx];
  const int head = blockIdx.x % p.hq;
  const int kvh = head / (p.hq / p.h);
  const int seq0 = p.cu_seqlens[it.seq];
  const int len = p.cu_seqlens[it.seq + 1] - seq0;
  const int t0 = it.block * kBlockRows;  // first query position of the CTA
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, gc = lane % 4;

  // Key tiles [kt_lo, kt_hi): causal rows see keys <= their position; a window drops the keys
  // that even the CTA's last row no longer sees.
  const int t_last = min(t0 + kBlockRows, len) - 1;
  const int key_end = p.causal ? t_last + 1 : len;
  const int key_begin = p.window > 0 ? max(0, t0 - p.window + 1) : 0;
  const int kt_lo = key_begin / kBlockKeys;
  const int kt_hi = (key_end + kBlockKeys - 1) / kBlockKeys;

  const __nv_bfloat16* qg = static_cast<const __nv_bfloat16*>(p.q);
  const __nv_bfloat16* kg = static_cast<const __nv_bfloat16*>(p.k) + int64_t(kvh) * p.k_sh;
  const __nv_bfloat16* vg = static_cast<const __nv_bfloat16*>(p.v) + int64_t(kvh) * p.v_sh;

  auto load_tile = [&](int kt, int buf) {
    __nv_bfloat16* dk = s_k + buf * kBlockKeys * DK;
    __nv_bfloat16* dv = s_v + buf * kBlockKeys * DV;
    constexpr int kCk = DK / 8, kCv = DV / 8;
#pragma unroll 4
    for (int c = tid; c < kBlockKeys * kCk; c += kThreads) {
      const int r = c / kCk, ch = c % kCk, key = kt * kBlockKeys + r;
      const bool ok = key < len;
      const __nv_bfloat16* src = ok ? kg + int64_t(seq0 + key) * p.k_st + ch * 8 : kg;
      cp_async_16(dk + swz<DK>(r, ch), src, ok);
    }
#pragma unroll 4
    for (int c = tid; c < kBlockKeys * kCv; c += kThreads) {
      const int r = c / kCv, ch = c % kCv, key = kt * kBlockKeys + r;
      const bool ok = key < len;
      const __nv_bfloat16* src = ok ? vg + int64_t(seq0 + key) * p.v_st + ch * 8 : vg;
      cp_async_16(dv + swz<DV>(r, ch), src, ok);
    }
  };

  if (kt_lo < kt_hi) load_tile(kt_lo, 0);
  cp_async_commit();

  // Q fragments of this warp's 16 rows (rows past the sequence read as 0).
  const int r0 = t0 + warp * 16 + gr, r1 = r0 + 8;  // positions of this lane's two rows
  uint32_t qa[DK / 16][4];
  {
    const __nv_bfloat16* q0 = qg + int64_t(seq0 + r0) * p.q_st + int64_t(head) * p.q_sh;
    const __nv_bfloat16* q1 = qg + int64_t(seq0 + r1) * p.q_st + int64_t(head) * p.q_sh;
    const bool ok0 = r0 < len, ok1 = r1 < len;
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      const int c = kk * 16 + 2 * gc;
      qa[kk][0] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + c) : 0u;
      qa[kk][1] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + c) : 0u;
      qa[kk][2] = ok0 ? *reinterpret_cast<const uint32_t*>(q0 + c + 8) : 0u;
      qa[kk][3] = ok1 ? *reinterpret_cast<const uint32_t*>(q1 + c + 8) : 0u;
    }
  }

  float o[DV / 8][4];
#pragma unroll
  for (int n = 0; n < DV / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const float sl2 = p.scale * kLog2e;
  const int warp_row0 = t0 + warp * 16;  // this warp's first and last positions decide masking
  const int warp_row1 = warp_row0 + 15;

  // ldmatrix lane addressing: matrix mi = lane / 8 and its row lane % 8.
  const int mi = lane >> 3, mr = lane & 7;

  for (int kt = kt_lo; kt < kt_hi; ++kt) {
    const int buf = (kt - kt_lo) & 1;
    if (kt + 1 < kt_hi) load_tile(kt + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const __nv_bfloat16* tk = s_k + buf * kBlockKeys * DK;
    const __nv_bfloat16* tv = s_v + buf * kBlockKeys * DV;
    const int key0 = kt * kBlockKeys;

    // A warp whose rows all precede this tile (causal) or sit past the sequence skips it.
    const bool warp_active = (!p.causal || key0 <= warp_row1) && warp_row0 < len &&
                             (p.window <= 0 || warp_row0 - (key0 + kBlockKeys - 1) < p.window);
    if (warp_active) {
      float s[kBlockKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kBlockKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < kBlockKeys / 16; ++np) {
          uint32_t b[4];
          const int key = np * 16 + mr + ((mi >> 1) << 3);
          ldmatrix_x4(b, smem_addr(tk + swz<DK>(key, kk * 2 + (mi & 1))));
          mma_bf16_16816(s[2 * np], qa[kk], b[0], b[1]);
          mma_bf16_16816(s[2 * np + 1], qa[kk], b[2], b[3]);
        }
      }
      // Mask only where the tile can hold an invisible key for one of the warp's rows.
      const bool need_mask = (p.causal && key0 + kBlockKeys - 1 > warp_row0) || key0 + kBlockKeys > len ||
                             (p.window > 0 && warp_row1 - key0 >= p.window);
#pragma unroll
      for (int n = 0; n < kBlockKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[n][e] * sl2;
          if (need_mask) {
            const int kp = key0 + n * 8 + 2 * gc + (e & 1);
            const int qp = e < 2 ? r0 : r1;
            const bool vis = kp < len && (!p.causal || kp <= qp) && (p.window <= 0 || qp - kp < p.window);
            if (!vis) x = -INFINITY;
          }
          s[n][e] = x;
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kBlockKeys / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mn = fmaxf(m[r], mx);
        const bool none = mn == -INFINITY;  // no visible key yet: keep everything at 0
        const float a = none ? 1.f : exp2f(m[r] - mn);
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kBlockKeys / 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& x = s[n][2 * r + e];
            x = none ? 0.f : exp2f(x - mn);
            sum += x;
          }
        l[r] = l[r] * a + sum;
        m[r] = mn;
#pragma unroll
        for (int n = 0; n < DV / 8; ++n) { o[n][2 * r] *= a; o[n][2 * r + 1] *= a; }
      }
      // O += P V, 16 keys per k-step.
#pragma unroll
      for (int kk = 0; kk < kBlockKeys / 16; ++kk) {
        uint32_t pa[4];
        pa[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < DV / 16; ++dp) {
          uint32_t b[4];
          const int key = kk * 16 + mr + ((mi & 1) << 3);
          ldmatrix_x4_trans(b, smem_addr(tv + swz<DV>(key, dp * 2 + (mi >> 1))));
          mma_bf16_16816(o[2 * dp], pa, b[0], b[1]);
          mma_bf16_16816(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int pos = r == 0 ? r0 : r1;
    if (pos >= len) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    const int64_t row = seq0 + pos;
    if (p.out_bf16) {
      __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(p.out) + row * p.o_st + int64_t(head) * p.o_sh;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) {
        const int c = n * 8 + 2 * gc;
        dst[c] = __float2bfloat16_rn(o[n][2 * r] * inv);
        dst[c + 1] = __float2bfloat16_rn(o[n][2 * r + 1] * inv);
      }
    } else {
      float* dst = static_cast<float*>(p.out) + row * p.o_st + int64_t(head) * p.o_sh;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) {
        const int c = n * 8 + 2 * gc;
        dst[c] = o[n][2 * r] * inv;
        dst[c + 1] = o[n][2 * r + 1] * inv;
      }
    }
    if (p.lse != nullptr && gc == 0)
      p.lse[row * p.lse_st + head] = l[r] > 0.f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
  }
}

__global__ void to_bf16_kernel(const void* __restrict__ src, bool src_bf16, int64_t rows, int64_t heads, int64_t d,
                               int64_t s_st, int64_t s_sh, __nv_bfloat16* __restrict__ dst) {
  const int64_t n = rows * heads * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % d, h = (i / d) % heads, r = i / (d * heads);
    const int64_t off = r * s_st + h * s_sh + c;
    dst[i] = src_bf16 ? static_cast<const __nv_bfloat16*>(src)[off] : __float2bfloat16_rn(static_cast<const float*>(src)[off]);
  }
}

template <int DK, int DV>
cudaError_t launch_attention(const Params& p, const Item* items, const int* count, int grid, cudaStream_t stream) {
  constexpr int smem = smem_bytes<DK, DV>();
  cudaError_t err = cudaFuncSetAttribute(attention_kernel<DK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  attention_kernel<DK, DV><<<grid, kThreads, smem, stream>>>(p, items, count);
  return cudaGetLastError();
}

// Upper bound of the schedule's length: sum over sequences of ceil(len / 64).
int64_t max_items(const Params& p) { return int64_t(p.tokens) / kBlockRows + p.num_seqs; }

}  // namespace

bool supported_dims(int dk, int dv) {
  return (dk == 192 && dv == 128) || (dk == 128 && dv == 128) || (dk == 64 && dv == 64);
}

size_t scratch_bytes(const Params& p) { return 256 + (size_t(max_items(p)) * sizeof(Item) + 255) / 256 * 256; }

cudaError_t launch(const Params& p, void* scratch, cudaStream_t stream) {
  if (p.tokens == 0 || p.num_seqs == 0) return cudaSuccess;
  int* count = static_cast<int*>(scratch);
  Item* items = reinterpret_cast<Item*>(static_cast<char*>(scratch) + 256);
  schedule_kernel<<<1, 256, 0, stream>>>(p.cu_seqlens, p.num_seqs, items, count);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t grid = max_items(p) * p.hq;
  if (grid > int64_t(0x7fffffff)) return cudaErrorInvalidConfiguration;
  if (p.dk == 192 && p.dv == 128) return launch_attention<192, 128>(p, items, count, int(grid), stream);
  if (p.dk == 128 && p.dv == 128) return launch_attention<128, 128>(p, items, count, int(grid), stream);
  if (p.dk == 64 && p.dv == 64) return launch_attention<64, 64>(p, items, count, int(grid), stream);
  return cudaErrorInvalidValue;
}

cudaError_t launch_to_bf16(const void* src, bool src_bf16, int64_t rows, int64_t heads, int64_t d, int64_t s_st,
                           int64_t s_sh, void* dst, cudaStream_t stream) {
  const int64_t n = rows * heads * d;
  if (n == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65536);
  to_bf16_kernel<<<int(blocks), 256, 0, stream>>>(src, src_bf16, rows, heads, d, s_st, s_sh,
                                                   static_cast<__nv_bfloat16*>(dst));
  return cudaGetLastError();
}

}  // namespace moex::kernels::prefill
