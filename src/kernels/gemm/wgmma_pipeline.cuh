// Hopper warpgroup-MMA mainloop: C(128, BN) = A @ B^T with A and B given as row pointers, the
// same interface and shared-memory staging as mma_pipeline.cuh (so dense and MoE launchers
// swap one for the other). 256 threads = 2 warpgroups, each owning 64 rows x BN columns with
// wgmma m64nBNk16 (bf16 -> fp32) reading both operands from shared memory through 128-byte
// swizzle descriptors. All 256 threads also load: a STAGES-deep cp.async ring of BK = 64
// slices in exactly the layout of mma_pipeline.cuh (128-byte rows, chunk c of row r at
// c ^ (r & 7)), which is the wgmma 128B-swizzle K-major layout once each tile is 1024-byte aligned.
//
// Pipeline (one barrier per K slice): at slice kt every thread waits for its copies of slice
// kt, fences them into the async proxy, and meets the others at the barrier; the barrier also
// tells that every warpgroup retired its wgmma group kt - 1 - KEEP (each keeps KEEP groups in
// flight), so the loads for slice kt + kAhead go into that group's stage. Then the warpgroup
// issues the 4 k16 wgmmas of slice kt, commits them and waits until KEEP groups are in flight.
//
// K order: every output element is one fp32 accumulator updated by k16 steps in ascending K
// order, zero padding past K, no split-K: the same sequence as mma.sync m16n8k16 in
// mma_pipeline.cuh. Whether one wgmma k16 step rounds like one m16n8k16 step is the hardware's
// business: tests/cuda_ops/wgmma_test.cpp compares the bits (docs/kernels/gemm.md).
//
// Shared memory (dynamic, Cfg::kSmemBytes, base rounded up to 1024 bytes inside the kernel):
//   [0, kPipeBytes)          STAGES x { A (128, 64) bf16, B (BN, 64) bf16 } swizzled;
//   [0, kCBytes)             after the mainloop: the fp32 tile C (128, BN + 8) for the epilogue;
//   [kMainBytes, +8*(BM+BN)) the row pointers (nullptr = a zero row).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/gemm/mma_pipeline.cuh"
#include "kernels/gemm/wgmma_ptx.cuh"

namespace moex::kernels::gemm {

// BN columns; STAGES slices of the ring; KEEP wgmma groups left in flight across the barrier (1:
// the tensor cores work through it; 0: one more slice of loads in flight); MIN_BLOCKS per SM.
template <int BN_, int STAGES_, int KEEP_, int MIN_BLOCKS_>
struct WgConfig {
  static constexpr int BM = 128, BN = BN_, STAGES = STAGES_, KEEP = KEEP_, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int kThreads = 256;              // two warpgroups
  static constexpr int kAhead = STAGES - 1 - KEEP;  // slices loading while one computes
  static constexpr int kAcc = BN / 2;      // fp32 accumulators per thread (m64nBN over 128 threads)
  static constexpr int kCStride = BN + 8;  // floats
  static constexpr int kStageElems = (BM + BN) * kPipeBK;
  static constexpr size_t kPipeBytes = size_t(STAGES) * kStageElems * 2;
  static constexpr size_t kCBytes = size_t(BM) * kCStride * 4;
  static constexpr size_t kMainBytes = kPipeBytes > kCBytes ? kPipeBytes : kCBytes;
  // + 1024: the dynamic base is rounded up to the 1024-byte alignment the swizzle needs (static
  // shared memory of the kernel, e.g. MoE slot lists, may shift it).
  static constexpr size_t kSmemBytes = kMainBytes + size_t(BM + BN) * sizeof(void*) + 1024;
  static_assert(BN == 128 || BN == 256, "wgmma m64n128 or m64n256");
  static_assert(KEEP == 0 || KEEP == 1, "0 or 1 wgmma group in flight");
  static_assert(kAhead >= 1, "at least one slice loading");
};
// 128x256, 4 stages (192 KiB), one block per SM, one wgmma group in flight: dense 4096^3 at
// 601 TFLOP/s on an H100 (docs/kernels/gemm.md; KEEP = 0 gave 554).
using WgWide = WgConfig<256, 4, 1, 1>;
// 128x128, 3 stages (96 KiB), two blocks per SM (one's epilogue overlaps the other's mainloop),
// KEEP = 0 (two slices loading): the best of five 128x128 variants on fused MoE (gemm.md).
using WgSquare = WgConfig<128, 3, 0, 2>;

template <class Cfg>
struct WgSmem {
  char* base;  // 1024-byte aligned
  __device__ static WgSmem from(char* raw) {
    const uintptr_t p = (reinterpret_cast<uintptr_t>(raw) + 1023) & ~uintptr_t(1023);
    return WgSmem{reinterpret_cast<char*>(p)};
  }
  __device__ float* c() const { return reinterpret_cast<float*>(base); }  // (BM, kCStride)
  __device__ float& c(int r, int col) const { return c()[r * Cfg::kCStride + col]; }
  __device__ const __nv_bfloat16** a_row() const {  // [BM]
    return reinterpret_cast<const __nv_bfloat16**>(base + Cfg::kMainBytes);
  }
  __device__ const __nv_bfloat16** b_row() const { return a_row() + Cfg::BM; }  // [BN]
};

template <class Cfg, class Kernel>
cudaError_t wg_prepare(Kernel* kernel) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Cfg::kSmemBytes));
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
}

// Stores the warpgroup's accumulators into s.c() (m64nN layout: warp w of the warpgroup owns
// rows 16 w .. 16 w + 15; register 4 j + {0, 1} is (lane / 4, 8 j + 2 (lane % 4) + {0, 1}),
// 4 j + {2, 3} the same 8 rows down).
template <class Cfg>
__device__ void wg_store_acc(const WgSmem<Cfg>& s, const float (&acc)[Cfg::kAcc], int tid) {
  const int lane = tid & 31, wq = (tid >> 5) & 3, wgi = tid >> 7;
  const int r = wgi * 64 + wq * 16 + (lane >> 2);
#pragma unroll
  for (int j = 0; j < Cfg::BN / 8; ++j) {
    const int col = j * 8 + 2 * (lane & 3);
    *reinterpret_cast<float2*>(&s.c(r, col)) = make_float2(acc[4 * j], acc[4 * j + 1]);
    *reinterpret_cast<float2*>(&s.c(r + 8, col)) = make_float2(acc[4 * j + 2], acc[4 * j + 3]);
  }
}

// Computes the tile into s.c(). Same contract as pipe_tile: s.a_row() / s.b_row() filled, row 0
// of each non-null, a __syncthreads() before; ends with a __syncthreads() (s.c() ready).
// `rows` (grouped MoE tiles, often far fewer than 128 rows): A rows in use, rows >= rows are
// nullptr; a warpgroup whose 64 rows are all past it issues no wgmma (a tile of <= 64 rows costs
// half the tensor-core time), and its s.c() rows are left unset. kSkipLoads: rows past the tile
// (A) or past N (B, nullptr) are not loaded at all instead of zero-filled (row r of C depends on
// row r of A only and column c on row c of B, and those are never stored). Neither changes the
// bits of a stored element (docs/kernels/fused_moe.md).
template <class Cfg, bool kSkipLoads = false>
__device__ void wg_tile(const WgSmem<Cfg>& s, int K, int rows = Cfg::BM) {
  using bf16 = __nv_bfloat16;
  constexpr int kBK = kPipeBK;
  constexpr int kARows = Cfg::BM / 32, kBRows = Cfg::BN / 32;  // rows each thread loads
  // The warpgroup index and its "issues wgmma" flag are warp-uniform; reading them through a
  // shuffle tells ptxas so. Computed per thread, the wgmma path looked divergent to it and it
  // serialized the 128x256 tiles' wgmmas (ptxas C7518 on dense_wg_kernel and the MoE WgWide
  // kernels; found by gemm5). Same instructions, same bits.
  const int tid = threadIdx.x, wgi = __shfl_sync(0xffffffffu, tid >> 7, 0);
  const bool mma_on = __shfl_sync(0xffffffffu, wgi * 64 < rows, 0);  // uniform per warpgroup
  const int lrow = tid >> 3, lchunk = tid & 7;
  const uint32_t ld_off = uint32_t(lrow * 128 + ((lchunk ^ (lrow & 7)) << 4));
  const bf16* a_src[kARows];  // [kARows] A rows lrow + 32 i, each [K], or nullptr
  const bf16* b_src[kBRows];  // [kBRows] B rows lrow + 32 i, each [K], or nullptr
#pragma unroll
  for (int i = 0; i < kARows; ++i) a_src[i] = s.a_row()[lrow + 32 * i];
#pragma unroll
  for (int i = 0; i < kBRows; ++i) b_src[i] = s.b_row()[lrow + 32 * i];
  const bf16* const a_any = s.a_row()[0];  // a valid address for zero-fill copies (row 0 exists)
  const bf16* const b_any = s.b_row()[0];
  const uint32_t smem0 = ptx::smem_addr(s.base);
  constexpr uint32_t kStageBytes = Cfg::kStageElems * 2, kBOff = Cfg::BM * kBK * 2;

  auto load_stage = [&](int st, int kt) {
    const int k = kt * kBK + lchunk * 8;
    const bool in_k = k < K;
    const uint32_t a_dst = smem0 + st * kStageBytes + ld_off;
#pragma unroll
    for (int i = 0; i < kARows; ++i) {
      const bool ok = in_k && a_src[i] != nullptr;
      if (!kSkipLoads || a_src[i] != nullptr)
        ptx::cp_async_16(a_dst + i * 32 * 128, ok ? a_src[i] + k : a_any, ok ? 16 : 0);
    }
    const uint32_t b_dst = a_dst + kBOff;
#pragma unroll
    for (int i = 0; i < kBRows; ++i) {
      const bool ok = in_k && b_src[i] != nullptr;
      if (!kSkipLoads || b_src[i] != nullptr)
        ptx::cp_async_16(b_dst + i * 32 * 128, ok ? b_src[i] + k : b_any, ok ? 16 : 0);
    }
  };

  float acc[Cfg::kAcc];  // this thread's share of the warpgroup's 64 x BN accumulators
#pragma unroll
  for (int i = 0; i < Cfg::kAcc; ++i) acc[i] = 0.f;

  constexpr int kAhead = Cfg::kAhead;
  const int nk = (K + kBK - 1) / kBK;
#pragma unroll
  for (int st = 0; st < kAhead; ++st) {
    if (st < nk) load_stage(st, st);
    ptx::cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    ptx::cp_async_wait<kAhead - 1>();
    wg::fence_proxy_async();
    __syncthreads();  // slice kt landed for all; wgmma group kt - 1 - KEEP retired in both warpgroups
    {
      const int next = kt + kAhead;
      if (next < nk) load_stage(next % Cfg::STAGES, next);
      ptx::cp_async_commit();
    }
    if (mma_on) {
      const uint32_t a_base = smem0 + (kt % Cfg::STAGES) * kStageBytes + wgi * 64 * 128;
      const uint32_t b_base = smem0 + (kt % Cfg::STAGES) * kStageBytes + kBOff;
      const uint64_t da = wg::desc_sw128(a_base), db = wg::desc_sw128(b_base);
      wg::fence_operands(acc);
      wg::fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) wg::mma<Cfg::BN>(acc, da + 2 * kk, db + 2 * kk);  // +32 bytes per k16
      wg::commit();
      wg::wait<Cfg::KEEP>();
      wg::fence_operands(acc);
    }
  }
  if (mma_on) {
    wg::wait<0>();
    wg::fence_operands(acc);
  }
  ptx::cp_async_wait<0>();
  __syncthreads();  // every warpgroup is done with the stages: C may overwrite them

  if (mma_on) wg_store_acc<Cfg>(s, acc, tid);
  __syncthreads();
}

}  // namespace moex::kernels::gemm
