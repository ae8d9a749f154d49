// Dense GEMM for few rows, bf16 x bf16: skinny_gemm.cu (mma.sync, m <= 16, any sm_80+ device)
// and skinny_wgmma.cu (Hopper warpgroup MMAs, m <= 256; the default for 17..64 rows on sm_90a,
// and up to 256 rows where it fills at most two waves).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moex::kernels::gemm {

// Rows of x the skinny kernel takes (one m16 MMA tile).
inline constexpr int kSkinnyMaxRows = 16;

struct SkinnyArgs {
  const void* x; int64_t sxb, sxm;   // x [b, m, k] bf16, k contiguous
  const void* w; int64_t swb, swn;   // w [b, n, k] bf16, k contiguous
  void* out; int64_t sob, som, son;  // out [b, m, n] f32 or bf16
  int m, n, k;
  float alpha;
  bool accumulate;
  // Launched as a programmatic dependent (pdl.cuh): each block prefetches its weight rows into L2,
  // then waits for the kernels before it. Set by the launchers from pdl::enabled().
  bool pdl;
};

// m <= kSkinnyMaxRows, k a multiple of 64, x and w rows 16-byte aligned.
bool skinny_gemm_applies(const SkinnyArgs& a);
cudaError_t launch_skinny_gemm(const SkinnyArgs& a, int batch, bool out_f32, cudaStream_t stream);

// Rows of x the wgmma streaming kernel takes (up to four m64 tiles).
inline constexpr int kSkinnyWgmmaMaxRows = 256;
// m <= kSkinnyWgmmaMaxRows, k a multiple of 64, x and w rows 16-byte aligned; the caller checks
// that the device runs sm_90a code (wgmma_available()).
bool skinny_wgmma_applies(const SkinnyArgs& a);
// Blocks it would launch (weight blocks x 64-row tiles x batch): the dense launcher's wave rule.
int64_t skinny_wgmma_blocks(const SkinnyArgs& a, int batch);
cudaError_t launch_skinny_wgmma(const SkinnyArgs& a, int batch, bool out_f32, cudaStream_t stream);
// MOEX_GEMM_DECODE=mma|wg (read at every launch; bits never change): mma keeps the other paths
// for m <= 256 (mma.sync decode kernel, 64-row pipelined tile, the wgmma tiles), wg sends every
// m <= 256 to the wgmma streaming kernel (comparisons).
enum class DecodeChoice { kAuto, kMma, kWg };
DecodeChoice decode_choice();

}  // namespace moex::kernels::gemm
