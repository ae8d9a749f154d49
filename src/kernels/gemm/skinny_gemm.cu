// Dense out = alpha * x @ w^T (+ out) for few rows (decode: m <= 16), streaming w once. Two
// kernels with the same bits, chosen by the number of weight rows (launch_skinny_gemm):
//
// Block ring (the first version; wide n: qkv, Mixtral qkv, lm_head): a block of 1, 2 or 4 warps
// x 16 weight rows shares one cp.async ring of 64-wide K slices and one 16-row token tile, one
// __syncthreads per slice.
//
// Warp ring (narrow n, long K: o_proj, q_a, kv_a): ncu on the block ring (H100) showed it bound
// by the instructions one warp issues per slice (~116 at ~4 cycles each, one warp per SM for
// o_proj: 19 us for 16.8 MB). Here every warp is an independent pipeline that owns 8 weight rows
// (one n8 MMA tile, one accumulator chain) and all m <= 16 token rows (one m16 tile), with its
// own ring of 8 stages of 128-wide K slices (two 64-wide sub-tiles, 128-byte rows, 16-byte
// chunk c of row r at chunk c ^ (r & 7)): no block barrier (cp.async.wait_group + __syncwarp),
// per-lane addresses computed once, token rows loaded only below m (rows past m and weight rows
// past n are left unset: they only feed outputs that are not stored), twice the warps. o_proj
// went from 19 to 13 us (ncu) and q_a / kv_a (K = 7168) to 20 us: now about 37 ns per k16 step
// of the one dependent MMA chain per output, which the bits contract does not let us split.
// Its 48 KB per warp give wide GEMMs more than one wave, so those stay on the block ring.
//
// Bits: each output element is a chain of m16n8k16 bf16 MMAs from a zero accumulator in ascending
// K order, token row = A operand, weight row = B operand: the same chain as every other tile
// (mma_tile.cuh, mma_pipeline.cuh, wgmma_pipeline.cuh, skinny_wgmma.cu), so a row's bits do not
// depend on m or on the path (tests/cuda_ops/matmul_test.cpp, RowBitsDoNotDependOn*,
// DecodeKernelBitsEqualTheOtherTiles).
#include <cstdlib>
#include <cstring>

#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gemm/ptx.cuh"
#include "kernels/gemm/skinny_gemm.h"

namespace moex::kernels::gemm {
namespace {

using bf16 = __nv_bfloat16;

// ---- Warp ring (narrow n, long K): each warp an independent pipeline of 8 weight rows.
constexpr int kSub = 64;        // K per sub-tile: 8 chunks of 16 bytes per row
constexpr int kKSub = 2;        // sub-tiles per stage: 128 of K per wait
constexpr int kTokens = 16;     // one m16 MMA tile of token rows
constexpr int kRows = 8;        // weight rows per warp: one n8 MMA tile
constexpr int kStages = 8;      // ring depth per warp: 7 slices (14 KB of weights) in flight
constexpr int kWSubBytes = kRows * 128, kXSubBytes = kTokens * 128;
constexpr int kStageBytes = kKSub * (kWSubBytes + kXSubBytes);  // 6 KB
constexpr int kWarpBytes = kStages * kStageBytes;               // 48 KB per warp

template <int W, class TOut>
__global__ void __launch_bounds__(32 * W) skinny_warp_kernel(SkinnyArgs a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t ring = ptx::smem_addr(smem_raw) + uint32_t(warp * kWarpBytes);  // this warp's stages
  const int b = blockIdx.y, n0 = (blockIdx.x * W + warp) * kRows;
  // Whole warp past n: it touches nothing, so it may leave before the PDL wait (blocks are one
  // warp, W = 1, so no block has a warp that waits and one that does not).
  static_assert(W == 1, "the early return below assumes one warp per block");
  if (n0 >= a.n) return;  // (no block barrier below)
  const bf16* x = static_cast<const bf16*>(a.x) + b * a.sxb;  // [m, k]
  const bf16* w = static_cast<const bf16*>(a.w) + b * a.swb;  // [n, k]
  if (a.pdl) {  // this warp's weight rows into L2 while the kernel before finishes, then wait
    if (lane < kRows && n0 + lane < a.n) pdl::prefetch_l2(w + int64_t(n0 + lane) * a.swn, uint32_t(a.k) * 2u);
    pdl::wait();
  }

  // Weight chunks: 8 rows x 8 chunks per sub-tile = 2 per lane (rows lane / 8 and lane / 8 + 4).
  const bf16* wsrc[2];  // nullptr: a row past n
  uint32_t wdst[2];     // offset in a sub-tile
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = lane / 8 + 4 * i, ch = lane % 8;
    wsrc[i] = n0 + r < a.n ? w + int64_t(n0 + r) * a.swn + ch * 8 : nullptr;
    wdst[i] = uint32_t(r * 128 + ((ch ^ (r & 7)) << 4));
  }
  // Token chunks: rows lane / 8 + 4 j (j = 0..3), loaded only below m.
  const bf16* xsrc[4];
  uint32_t xdst[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int r = lane / 8 + 4 * j, ch = lane % 8;
    xsrc[j] = r < a.m ? x + int64_t(r) * a.sxm + ch * 8 : nullptr;
    xdst[j] = uint32_t(kKSub * kWSubBytes + r * 128 + ((ch ^ (r & 7)) << 4));
  }
  // ldmatrix row addresses. A (tokens, x4 per k16 step jj): row lane % 16, chunk 2 jj + lane / 16.
  // B (weights, x4 per pair of k16 steps jj, jj + 1): row lane % 8, chunk 2 jj + lane / 8.
  uint32_t aoff[4], boff[2];
#pragma unroll
  for (int jj = 0; jj < 4; ++jj) {
    const int r = lane & 15, ch = 2 * jj + (lane >> 4);
    aoff[jj] = uint32_t(kKSub * kWSubBytes + r * 128 + ((ch ^ (r & 7)) << 4));
  }
#pragma unroll
  for (int p = 0; p < 2; ++p) {
    const int r = lane & 7, ch = 4 * p + (lane >> 3);
    boff[p] = uint32_t(r * 128 + ((ch ^ (r & 7)) << 4));
  }

  const int subs_total = a.k / kSub;
  const int slices = (subs_total + kKSub - 1) / kKSub;  // the last may hold one sub-tile
  const bool x_rows[4] = {true, 4 < a.m, 8 < a.m, 12 < a.m};  // warp-uniform: rows 4 j.. exist
  auto load = [&](int stage, int slice) {
    const uint32_t base = ring + uint32_t(stage * kStageBytes);
#pragma unroll
    for (int s = 0; s < kKSub; ++s) {
      if (slice * kKSub + s >= subs_total) break;  // uniform
      const int64_t k0 = int64_t(slice * kKSub + s) * kSub;
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (wsrc[i] != nullptr) ptx::cp_async_16(base + s * kWSubBytes + wdst[i], wsrc[i] + k0, 16);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (x_rows[j] && xsrc[j] != nullptr) ptx::cp_async_16(base + s * kXSubBytes + xdst[j], xsrc[j] + k0, 16);
    }
  };

  float acc[4] = {};  // tokens lane / 4 (+ 8) x weight rows 2 (lane % 4) (+ 1)
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < slices) load(st, st);
    ptx::cp_async_commit();
  }
  for (int kt = 0; kt < slices; ++kt) {
    ptx::cp_async_wait<kStages - 2>();
    __syncwarp();  // every lane's copies of slice kt visible; every lane done reading slice kt - 1
    if (kt + kStages - 1 < slices) load((kt + kStages - 1) % kStages, kt + kStages - 1);
    ptx::cp_async_commit();
    const uint32_t base = ring + uint32_t((kt % kStages) * kStageBytes);
    const int subs = min(kKSub, subs_total - kt * kKSub);
#pragma unroll
    for (int s = 0; s < kKSub; ++s) {
      if (s >= subs) break;  // uniform: a short last slice
      const uint32_t sb = base + s * kWSubBytes, sx = base + s * kXSubBytes;
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        uint32_t bfrag[4];  // k16 steps 2p (regs 0, 1) and 2p + 1 (regs 2, 3) of the sub-tile
        ptx::ldmatrix_x4(bfrag, sb + boff[p]);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          uint32_t afrag[4];
          ptx::ldmatrix_x4(afrag, sx + aoff[2 * p + h]);
          ptx::mma_bf16_16816(acc, afrag, bfrag[2 * h], bfrag[2 * h + 1]);
        }
      }
    }
  }
  ptx::cp_async_wait<0>();

  TOut* out = static_cast<TOut*>(a.out) + b * a.sob;  // [m, n]
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int t = lane / 4 + (q / 2) * 8;
    const int n = n0 + (lane % 4) * 2 + (q % 2);
    if (t >= a.m || n >= a.n) continue;
    TOut* o = out + int64_t(t) * a.som + int64_t(n) * a.son;
    float v = a.alpha * acc[q];
    if (a.accumulate) v = to_f32(*o) + v;
    *o = from_f32<TOut>(v);
  }
}

template <int W, class TOut>
cudaError_t launch_warp_w(const SkinnyArgs& a, int batch, cudaStream_t stream) {
  auto* kernel = skinny_warp_kernel<W, TOut>;
  constexpr int smem = W * kWarpBytes;
  // Per call, as for the other tiles: the attribute belongs to the current device's context.
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((a.n + kRows * W - 1) / (kRows * W)), unsigned(batch));
  return pdl::launch(kernel, grid, dim3(32 * W), smem, stream, a.pdl, a);
}

constexpr int kSliceK = 64;   // K per stage: 8 chunks of 16 bytes per row

// ---- Block ring (wide n): a block of W warps x 16 weight rows shares one ring and token tile.
template <int W, int ST>
struct SkinnySmem {
  bf16 w[ST][16 * W][kSliceK];  // weight rows of the block, 16-byte chunks XOR-swizzled by row
  bf16 x[ST][kTokens][kSliceK];  // token rows, same swizzle
};

__device__ __forceinline__ int swizzle(int row, int chunk) { return (chunk ^ (row & 7)) * 8; }

template <int W, int ST, class TOut>
__global__ void __launch_bounds__(32 * W) skinny_block_kernel(SkinnyArgs a) {
  constexpr int kThreads = 32 * W, kRows = 16 * W;
  constexpr int kWChunks = kRows * 8 / kThreads;                   // = 4 weight chunks per thread
  constexpr int kXChunks = (kTokens * 8 + kThreads - 1) / kThreads;  // token chunks per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<SkinnySmem<W, ST>*>(smem_raw);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int b = blockIdx.y, n0 = blockIdx.x * kRows;
  const bf16* x = static_cast<const bf16*>(a.x) + b * a.sxb;  // [m, k]
  const bf16* w = static_cast<const bf16*>(a.w) + b * a.swb;  // [n, k]
  if (a.pdl) {  // the block's weight rows into L2 while the kernel before finishes, then wait
    if (tid < kRows && n0 + tid < a.n) pdl::prefetch_l2(w + int64_t(n0 + tid) * a.swn, uint32_t(a.k) * 2u);
    pdl::wait();
  }

  const bf16* wsrc[kWChunks];  // this thread's weight chunks; rows past n read nothing
  bool wvalid[kWChunks];
#pragma unroll
  for (int i = 0; i < kWChunks; ++i) {
    const int c = tid + i * kThreads, r = c / 8;
    wvalid[i] = n0 + r < a.n;
    wsrc[i] = w + int64_t(wvalid[i] ? n0 + r : 0) * a.swn + (c % 8) * 8;
  }
  const bf16* xsrc[kXChunks];
  bool xvalid[kXChunks];
#pragma unroll
  for (int i = 0; i < kXChunks; ++i) {
    const int c = tid + i * kThreads, r = c / 8;
    xvalid[i] = c < kTokens * 8 && r < a.m;
    xsrc[i] = x + int64_t(xvalid[i] ? r : 0) * a.sxm + (c % 8) * 8;
  }
  auto load = [&](int stage, int slice) {
    const int k0 = slice * kSliceK;
#pragma unroll
    for (int i = 0; i < kWChunks; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      ptx::cp_async_16(ptx::smem_addr(&s.w[stage][r][swizzle(r, c % 8)]), wsrc[i] + k0, wvalid[i] ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < kXChunks; ++i) {
      const int c = tid + i * kThreads, r = c / 8;
      if (c < kTokens * 8)
        ptx::cp_async_16(ptx::smem_addr(&s.x[stage][r][swizzle(r, c % 8)]), xsrc[i] + k0, xvalid[i] ? 16 : 0);
    }
  };

  float acc[2][4] = {};  // [n8 tile][fragment]: tokens lane / 4 (+ 8), rows (lane % 4) * 2 (+ 1)
  const int slices = a.k / kSliceK;
#pragma unroll
  for (int st = 0; st < ST - 1; ++st) {
    if (st < slices) load(st, st);
    ptx::cp_async_commit();
  }
  for (int kt = 0; kt < slices; ++kt) {
    ptx::cp_async_wait<ST - 2>();
    __syncthreads();  // slice kt visible to all; the stage of kt - 1 is free
    if (kt + ST - 1 < slices) load((kt + ST - 1) % ST, kt + ST - 1);
    ptx::cp_async_commit();
    const int st = kt % ST;
#pragma unroll
    for (int kk = 0; kk < kSliceK / 16; ++kk) {
      uint32_t bfrag[4];  // [0..1]: the warp's rows 0-7 (n tile 0), [2..3]: rows 8-15 (n tile 1)
      const int wr = warp * 16 + (lane & 7) + ((lane >> 4) << 3);
      ptx::ldmatrix_x4(bfrag, ptx::smem_addr(&s.w[st][wr][swizzle(wr, 2 * kk + ((lane >> 3) & 1))]));
      uint32_t afrag[4];
      const int xr = lane & 15;
      ptx::ldmatrix_x4(afrag, ptx::smem_addr(&s.x[st][xr][swizzle(xr, 2 * kk + (lane >> 4))]));
      ptx::mma_bf16_16816(acc[0], afrag, bfrag[0], bfrag[1]);
      ptx::mma_bf16_16816(acc[1], afrag, bfrag[2], bfrag[3]);
    }
  }
  ptx::cp_async_wait<0>();

  TOut* out = static_cast<TOut*>(a.out) + b * a.sob;  // [m, n]
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int t = lane / 4 + (q / 2) * 8;
      const int n = n0 + warp * 16 + nt * 8 + (lane % 4) * 2 + (q % 2);
      if (t >= a.m || n >= a.n) continue;
      TOut* o = out + int64_t(t) * a.som + int64_t(n) * a.son;
      float v = a.alpha * acc[nt][q];
      if (a.accumulate) v = to_f32(*o) + v;
      *o = from_f32<TOut>(v);
    }
  }
}

template <int W, class TOut>
cudaError_t launch_block_w(const SkinnyArgs& a, int batch, cudaStream_t stream) {
  // Ring depth: one block's bytes in flight are (kStages - 1) x 16 W rows x 128 bytes. Narrow
  // blocks get deeper rings (64 / 72 / 80 KB of shared memory for W = 1 / 2 / 4): a 1-warp block
  // of an 8-stage ring measured 10.4 us for a 2 MB k_proj (512 x 2048) on an H100, DRAM-latency
  // bound (32 blocks x 14 KB in flight).
  constexpr int kStages = W == 1 ? 16 : (W == 2 ? 12 : 8);
  auto* kernel = skinny_block_kernel<W, kStages, TOut>;
  constexpr int smem = int(sizeof(SkinnySmem<W, kStages>));
  // Per call, as for the other tiles: the attribute belongs to the current device's context.
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((a.n + 16 * W - 1) / (16 * W)), unsigned(batch));
  return pdl::launch(kernel, grid, dim3(32 * W), smem, stream, a.pdl, a);
}

// MOEX_GEMM_DECODE_RING=warp|block forces one of the two kernels (benchmarks, tests; same bits).
int forced_ring() {
  const char* v = std::getenv("MOEX_GEMM_DECODE_RING");
  if (v == nullptr) return 0;
  if (std::strcmp(v, "warp") == 0) return 1;
  if (std::strcmp(v, "block") == 0) return 2;
  return 0;
}

}  // namespace

bool skinny_gemm_applies(const SkinnyArgs& a) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return a.m >= 1 && a.m <= kSkinnyMaxRows && a.k % kSub == 0 && a.k > 0 && aligned(a.x) && aligned(a.w) &&
         a.sxm % 8 == 0 && a.sxb % 8 == 0 && a.swn % 8 == 0 && a.swb % 8 == 0;
}

cudaError_t launch_skinny_gemm(const SkinnyArgs& args, int batch, bool out_f32, cudaStream_t stream) {
  if (batch > 65535) return cudaErrorInvalidValue;
  SkinnyArgs a = args;
  a.pdl = pdl::enabled();
  // Warp ring while its 48 KB-per-warp blocks fit in one wave (4 per SM): o_proj, q_a, kv_a.
  // Wider GEMMs (qkv 5120 rows, Mixtral qkv, lm_head) measured faster on the block ring, whose
  // blocks share one token tile and need less shared memory per weight row (docs/kernels/gemm.md).
  const int64_t warps = (int64_t(a.n) + kRows - 1) / kRows * batch;
  const int ring = forced_ring();
  if (ring == 1 || (ring == 0 && warps <= 4 * int64_t(sm_count())))
    return out_f32 ? launch_warp_w<1, float>(a, batch, stream) : launch_warp_w<1, bf16>(a, batch, stream);
  // Block ring: blocks of 16, 32 or 64 weight rows, the fewest that still give about two blocks
  // per SM, so that narrow GEMMs spread out.
  const int64_t two_waves = 2 * int64_t(sm_count());
  const int64_t rows_per_sm = (int64_t(a.n) * batch + two_waves - 1) / two_waves;
  if (rows_per_sm <= 16) return out_f32 ? launch_block_w<1, float>(a, batch, stream) : launch_block_w<1, bf16>(a, batch, stream);
  if (rows_per_sm <= 32) return out_f32 ? launch_block_w<2, float>(a, batch, stream) : launch_block_w<2, bf16>(a, batch, stream);
  return out_f32 ? launch_block_w<4, float>(a, batch, stream) : launch_block_w<4, bf16>(a, batch, stream);
}

}  // namespace moex::kernels::gemm
