// Dense GEMM for few rows (decode), bf16 x bf16: see skinny_gemm.cu.
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
};

// m <= kSkinnyMaxRows, k a multiple of 64, x and w rows 16-byte aligned.
bool skinny_gemm_applies(const SkinnyArgs& a);
cudaError_t launch_skinny_gemm(const SkinnyArgs& a, int batch, bool out_f32, cudaStream_t stream);

}  // namespace moex::kernels::gemm
