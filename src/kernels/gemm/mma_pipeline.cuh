// Pipelined tensor-core mainloop for large tiles: C(BM, BN) = A @ B^T with A and B given as
// row pointers (contiguous, 16-byte aligned along K, K % 8 == 0). 256 threads (8 warps), a
// STAGES-deep cp.async ring of BK = 64 slices in XOR-swizzled shared memory, ldmatrix fragments
// and mma.sync m16n8k16 bf16 -> fp32.
//
// Determinism (the contract shared with mma_tile.cuh): every output element is accumulated in
// one fp32 register by k16 MMAs in ascending K order (k = 0..15, 16..31, ...), padding zeros
// past K. The WMMA tiles of mma_tile.cuh lower to the same m16n8k16 instruction with the same
// order, so a row gets the same bits from every configuration here and there, whatever BM, BN or
// the other rows of the tile. No split-K.
//
// Shared memory (dynamic, Cfg::kSmemBytes):
//   [0, kPipeBytes)          STAGES x { A (BM, 64) bf16, B (BN, 64) bf16 }, 128-byte rows; the
//                            16-byte chunk c of row r lives at chunk c ^ (r & 7), so the 8 rows
//                            an ldmatrix phase reads hit 8 distinct bank groups;
//   [0, kCBytes)             after the mainloop: the fp32 tile C (BM, BN + 8) for the epilogue;
//   [kMainBytes, +8*(BM+BN)) the row pointers (nullptr = a zero row).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/gemm/ptx.cuh"

namespace moex::kernels::gemm {

constexpr int kPipeBK = 64;        // K elements per stage: one 128-byte smem row per tile row
constexpr int kPipeThreads = 256;  // 8 warps

template <int BM_, int BN_, int WARPS_M_, int STAGES_, int MIN_BLOCKS_>
struct PipeConfig {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = 8 / WARPS_M_;
  static constexpr int STAGES = STAGES_, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int TM = BM / WARPS_M, TN = BN / WARPS_N;  // warp tile
  static constexpr int MI = TM / 16, NI = TN / 8;             // m16 x n8 MMAs per warp per k16
  static constexpr int kCStride = BN + 8;  // floats; float2 stores of a half-warp avoid conflicts
  static constexpr int kStageElems = (BM + BN) * kPipeBK;
  static constexpr size_t kPipeBytes = size_t(STAGES) * kStageElems * 2;
  static constexpr size_t kCBytes = size_t(BM) * kCStride * 4;
  static constexpr size_t kMainBytes = kPipeBytes > kCBytes ? kPipeBytes : kCBytes;
  static constexpr size_t kSmemBytes = kMainBytes + size_t(BM + BN) * sizeof(void*);
  static_assert(WARPS_M * WARPS_N == 8, "8 warps");
  static_assert(TM % 16 == 0 && TN % 16 == 0, "warp tile is a multiple of 16x16");
  static_assert(BM % 32 == 0 && BN % 32 == 0, "each thread loads whole rows: 32 rows per pass");
  static_assert(STAGES >= 2, "at least double buffering");
};
// 128x256, warp tile 64x64, one block per SM (144 KiB of stages).
using PipeWide = PipeConfig<128, 256, 2, 3, 1>;
// The same with a 4-deep ring (192 KiB): more bytes in flight per SM.
using PipeWide4 = PipeConfig<128, 256, 2, 4, 1>;
// 128x128, warp tile 64x32, two blocks per SM (96 KiB each).
using PipeSquare = PipeConfig<128, 128, 2, 3, 2>;
// 64x128, warp tile 32x32, for 17-64 rows per expert / per matrix.
using PipeShort = PipeConfig<64, 128, 2, 4, 2>;

template <class Cfg>
struct PipeSmem {
  char* base;
  __device__ __nv_bfloat16* a(int st) const {  // (BM, 64) swizzled
    return reinterpret_cast<__nv_bfloat16*>(base) + size_t(st) * Cfg::kStageElems;
  }
  __device__ __nv_bfloat16* b(int st) const { return a(st) + Cfg::BM * kPipeBK; }  // (BN, 64) swizzled
  __device__ float* c() const { return reinterpret_cast<float*>(base); }            // (BM, kCStride)
  __device__ float& c(int r, int col) const { return c()[r * Cfg::kCStride + col]; }
  __device__ const __nv_bfloat16** a_row() const {  // [BM]
    return reinterpret_cast<const __nv_bfloat16**>(base + Cfg::kMainBytes);
  }
  __device__ const __nv_bfloat16** b_row() const { return a_row() + Cfg::BM; }  // [BN]
};

// Sets the dynamic shared memory a pipelined kernel needs (beyond the 48 KiB default).
template <class Cfg, class Kernel>
cudaError_t pipe_prepare(Kernel* kernel) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes));
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
}

// Computes the tile into s.c(). Expects s.a_row() / s.b_row() filled, row 0 of each non-null
// (used as a harmless source address for zero-filled chunks), and a __syncthreads() before.
// Ends with a __syncthreads(): s.c() is ready to read.
template <class Cfg>
__device__ void pipe_tile(const PipeSmem<Cfg>& s, int K) {
  using bf16 = __nv_bfloat16;
  constexpr int kARows = Cfg::BM / 32, kBRows = Cfg::BN / 32;  // rows each thread loads
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int lrow = tid >> 3, lchunk = tid & 7;
  // Loader: thread tid copies chunk lchunk of rows lrow + 32 i; its swizzled chunk is fixed.
  const uint32_t ld_off = uint32_t(lrow * 128 + ((lchunk ^ (lrow & 7)) << 4));
  const bf16* a_src[kARows];  // [kARows] A rows lrow + 32 i, each [K]
  const bf16* b_src[kBRows];  // [kBRows] B rows lrow + 32 i, each [K]
#pragma unroll
  for (int i = 0; i < kARows; ++i) a_src[i] = s.a_row()[lrow + 32 * i];
#pragma unroll
  for (int i = 0; i < kBRows; ++i) b_src[i] = s.b_row()[lrow + 32 * i];
  const bf16* const a_any = s.a_row()[0];
  const bf16* const b_any = s.b_row()[0];
  const uint32_t smem0 = ptx::smem_addr(s.base);
  constexpr uint32_t kStageBytes = Cfg::kStageElems * 2, kBOff = Cfg::BM * kPipeBK * 2;

  auto load_stage = [&](int st, int kt) {
    const int k = kt * kPipeBK + lchunk * 8;
    const bool in_k = k < K;
    const uint32_t a_dst = smem0 + st * kStageBytes + ld_off;
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      const bool ok = in_k && a_src[i] != nullptr;
      ptx::cp_async_16(a_dst + i * 32 * 128, ok ? a_src[i] + k : a_any, ok ? 16 : 0);
    }
    const uint32_t b_dst = a_dst + kBOff;
#pragma unroll
    for (int i = 0; i < kBRows; ++i) {
      const bool ok = in_k && b_src[i] != nullptr;
      ptx::cp_async_16(b_dst + i * 32 * 128, ok ? b_src[i] + k : b_any, ok ? 16 : 0);
    }
  };

  // Fragment addresses: every row a lane addresses has row & 7 == lane & 7 (tiles start at
  // multiples of 8), so the swizzle is a per-lane XOR with (lane & 7).
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
  const uint32_t swz = uint32_t(lane & 7);
  // A: lanes 0-15 rows 0-15 at k 0-7, lanes 16-31 rows 0-15 at k 8-15 (a0..a3 of m16n8k16).
  const uint32_t a_frag_row = uint32_t((wm * Cfg::TM + (lane & 15)) * 128);
  const uint32_t a_khalf = uint32_t(lane >> 4);
  // B (stored n-major): lanes 0-7 n 0-7 k 0-7, 8-15 n 0-7 k 8-15, 16-23 n 8-15 k 0-7, 24-31
  // n 8-15 k 8-15: b0, b1 of two adjacent n8 blocks.
  const uint32_t b_frag_row = uint32_t((wn * Cfg::TN + (lane & 7) + ((lane >> 4) << 3)) * 128);
  const uint32_t b_khalf = uint32_t((lane >> 3) & 1);

  float acc[Cfg::MI][Cfg::NI][4];  // (MI, NI, 4): m16n8 accumulators of this warp
#pragma unroll
  for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NI; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

  const int nk = (K + kPipeBK - 1) / kPipeBK;
#pragma unroll
  for (int st = 0; st < Cfg::STAGES - 1; ++st) {
    if (st < nk) load_stage(st, st);
    ptx::cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    ptx::cp_async_wait<Cfg::STAGES - 2>();
    __syncthreads();  // stage kt landed for everyone; stage kt - 1 is free to overwrite
    {
      const int next = kt + Cfg::STAGES - 1;
      if (next < nk) load_stage(next % Cfg::STAGES, next);
      ptx::cp_async_commit();
    }
    const uint32_t a_base = smem0 + (kt % Cfg::STAGES) * kStageBytes;
    const uint32_t b_base = a_base + kBOff;
#pragma unroll
    for (int kk = 0; kk < kPipeBK / 16; ++kk) {
      uint32_t af[Cfg::MI][4];
      uint32_t bfr[Cfg::NI / 2][4];
#pragma unroll
      for (int i = 0; i < Cfg::MI; ++i)
        ptx::ldmatrix_x4(af[i], a_base + a_frag_row + i * 16 * 128 + (((kk * 2 + a_khalf) ^ swz) << 4));
#pragma unroll
      for (int j = 0; j < Cfg::NI / 2; ++j)
        ptx::ldmatrix_x4(bfr[j], b_base + b_frag_row + j * 16 * 128 + (((kk * 2 + b_khalf) ^ swz) << 4));
#pragma unroll
      for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::NI; ++j)
          ptx::mma_bf16_16816(acc[i][j], af[i], bfr[j / 2][(j % 2) * 2], bfr[j / 2][(j % 2) * 2 + 1]);
    }
  }
  ptx::cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages: C may overwrite them

  // Accumulator layout of m16n8k16: d0, d1 at (lane / 4, 2 * (lane % 4) + {0, 1}); d2, d3 8 rows down.
#pragma unroll
  for (int i = 0; i < Cfg::MI; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NI; ++j) {
      const int r = wm * Cfg::TM + i * 16 + (lane >> 2);
      const int col = wn * Cfg::TN + j * 8 + 2 * (lane & 3);
      *reinterpret_cast<float2*>(&s.c(r, col)) = make_float2(acc[i][j][0], acc[i][j][1]);
      *reinterpret_cast<float2*>(&s.c(r + 8, col)) = make_float2(acc[i][j][2], acc[i][j][3]);
    }
  __syncthreads();
}

}  // namespace moex::kernels::gemm
