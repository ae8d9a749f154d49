// Router logits out [m, n] f32 = alpha * x [m, k] @ w [n, k]^T (+ out), bf16 operands, few
// columns (MoE routers: 8 to 256 experts): see router_gemm.cu for its own K order.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moex::kernels::gemm {

// The router kernel takes f32 outputs with n <= kRouterMaxCols (and the shape limits of
// router_gemm_applies) for EVERY m, so that a row's bits never depend on the batch.
inline constexpr int kRouterMaxCols = 256;
// K chunk of one partial sum (16 k16 steps); the partials are added in ascending chunk order.
inline constexpr int kRouterChunk = 256;

struct RouterArgs {
  const void* x; int64_t sxb, sxm;   // x [b, m, k] bf16, k contiguous
  const void* w; int64_t swb, swn;   // w [b, n, k] bf16, k contiguous
  float* out; int64_t sob, som, son;  // out [b, m, n] f32
  int m, n, k;
  float alpha;
  bool accumulate;
};

// n <= kRouterMaxCols, k % 32 == 0 and k <= kRouterMaxK, x and w rows 16-byte aligned. Depends
// on the shape and alignment only, never on m.
inline constexpr int kRouterMaxK = 32768;
bool router_gemm_applies(const RouterArgs& a);
cudaError_t launch_router_gemm(const RouterArgs& a, int batch, cudaStream_t stream);

}  // namespace moex::kernels::gemm
