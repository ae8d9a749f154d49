// Dense out = alpha * x @ w^T (+ out) for few rows (decode: m <= 16), streaming w once at memory
// bandwidth. The WMMA 16-row tile (mma_tile.cuh) it replaces loads each K slice into registers,
// then shared memory, then computes, with one slice in flight: at m = 1 that is latency-bound
// (a Qwen3-30B-A3B q_proj, 16.8 MB, took ~100 us; its floor is 5.6 us).
//
// Layout: a block of W warps owns 16 * W weight rows (each warp 16 rows = two n8 MMA tiles) and
// all m <= 16 token rows (one m16 tile, rows past m zero-filled). The K loop streams 64-element
// slices (128 bytes per row) through a ring of ST cp.async stages (8 to 16), so ST - 1 slices per
// block are in flight. W is chosen from n so that small-n GEMMs still spread over the SMs.
//
// Bits: each output element is a chain of m16n8k16 bf16 MMAs from a zero accumulator in ascending
// K order, token row = A operand, weight row = B operand: the same chain as every other tile
// (mma_tile.cuh, mma_pipeline.cuh, wgmma_pipeline.cuh), so a row's bits do not depend on m or on
// the path (tests/cuda_ops/matmul_test.cpp, RowBitsDoNotDependOn*).
#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/gemm/ptx.cuh"
#include "kernels/gemm/skinny_gemm.h"

namespace moex::kernels::gemm {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kSliceK = 64;   // K per stage: 8 chunks of 16 bytes per row
constexpr int kTokens = 16;   // one m16 MMA tile of token rows

template <int W, int ST>
struct SkinnySmem {
  bf16 w[ST][16 * W][kSliceK];  // weight rows of the block, 16-byte chunks XOR-swizzled by row
  bf16 x[ST][kTokens][kSliceK];  // token rows, same swizzle
};

__device__ __forceinline__ int swizzle(int row, int chunk) { return (chunk ^ (row & 7)) * 8; }

template <int W, int ST, class TOut>
__global__ void __launch_bounds__(32 * W) skinny_gemm_kernel(SkinnyArgs a) {
  constexpr int kThreads = 32 * W, kRows = 16 * W;
  constexpr int kWChunks = kRows * 8 / kThreads;                   // = 4 weight chunks per thread
  constexpr int kXChunks = (kTokens * 8 + kThreads - 1) / kThreads;  // token chunks per thread
  extern __shared__ __align__(128) unsigned char smem_raw[];
  auto& s = *reinterpret_cast<SkinnySmem<W, ST>*>(smem_raw);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int b = blockIdx.y, n0 = blockIdx.x * kRows;
  const bf16* x = static_cast<const bf16*>(a.x) + b * a.sxb;  // [m, k]
  const bf16* w = static_cast<const bf16*>(a.w) + b * a.swb;  // [n, k]

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
cudaError_t launch_w(const SkinnyArgs& a, int batch, cudaStream_t stream) {
  // Ring depth: one block's bytes in flight are (kStages - 1) x 16 W rows x 128 bytes. Narrow
  // blocks get deeper rings (64 / 72 / 80 KB of shared memory for W = 1 / 2 / 4): a 1-warp block
  // of an 8-stage ring measured 10.4 us for a 2 MB k_proj (512 x 2048) on an H100, DRAM-latency
  // bound (32 blocks x 14 KB in flight).
  constexpr int kStages = W == 1 ? 16 : (W == 2 ? 12 : 8);
  auto* kernel = skinny_gemm_kernel<W, kStages, TOut>;
  constexpr int smem = int(sizeof(SkinnySmem<W, kStages>));
  // Per call, as for the other tiles: the attribute belongs to the current device's context.
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((a.n + 16 * W - 1) / (16 * W)), unsigned(batch));
  kernel<<<grid, 32 * W, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

bool skinny_gemm_applies(const SkinnyArgs& a) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return a.m >= 1 && a.m <= kSkinnyMaxRows && a.k % kSliceK == 0 && a.k > 0 && aligned(a.x) && aligned(a.w) &&
         a.sxm % 8 == 0 && a.sxb % 8 == 0 && a.swn % 8 == 0 && a.swb % 8 == 0;
}

cudaError_t launch_skinny_gemm(const SkinnyArgs& a, int batch, bool out_f32, cudaStream_t stream) {
  if (batch > 65535) return cudaErrorInvalidValue;
  // Blocks of 16, 32 or 64 weight rows: the fewest rows per block that still gives about two
  // blocks per SM, so that narrow GEMMs (k/v projections, routers) spread out.
  const int64_t two_waves = 2 * int64_t(sm_count());
  const int64_t rows_per_sm = (int64_t(a.n) * batch + two_waves - 1) / two_waves;
  if (rows_per_sm <= 16) return out_f32 ? launch_w<1, float>(a, batch, stream) : launch_w<1, bf16>(a, batch, stream);
  if (rows_per_sm <= 32) return out_f32 ? launch_w<2, float>(a, batch, stream) : launch_w<2, bf16>(a, batch, stream);
  return out_f32 ? launch_w<4, float>(a, batch, stream) : launch_w<4, bf16>(a, batch, stream);
}

}  // namespace moex::kernels::gemm
