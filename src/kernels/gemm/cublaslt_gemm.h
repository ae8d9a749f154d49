// Opt-in cuBLASLt path for the dense bf16 matmul (MOEX_GEMM=cublaslt): see cublaslt_gemm.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moex::kernels::gemm {

struct LtArgs {
  const void* x; int64_t sxb, sxm;   // x [b, m, k] bf16, k contiguous
  const void* w; int64_t swb, swn;   // w [b, n, k] bf16, k contiguous
  void* out; int64_t sob, som, son;  // out [b, m, n] f32 or bf16
  int m, n, k, batch;
  float alpha;
  bool accumulate;  // out += alpha * x @ w^T
  bool out_f32;
};

// MOEX_GEMM=cublaslt, read at every call (tests switch it in one process).
bool cublaslt_requested();
// Layouts cuBLASLt takes here: out rows contiguous (son == 1), 16-byte aligned pointers and
// leading dimensions, m, n, k >= 1.
bool cublaslt_applies(const LtArgs& a);
cudaError_t launch_cublaslt(const LtArgs& a, cudaStream_t stream);

}  // namespace moex::kernels::gemm
