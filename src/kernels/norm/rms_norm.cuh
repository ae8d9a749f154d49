// The per-row math of RMSNorm as device helpers, shared by rms_norm.cu and the fused kernels of
// src/kernels/fused/ so that a fused kernel computes every element with the same instructions
// (bit-identical results; the block size and the reduction order are part of that contract).
#pragma once
#include "kernels/common/dtype.cuh"

namespace moex::kernels {

// Threads per row: the reduction order below depends on it, so every kernel that must match
// rms_norm's bits launches rows of this many threads.
inline int rms_norm_threads(int dim) { return dim >= 1024 ? 1024 : (dim + 31) / 32 * 32; }

// 1 / sqrt(mean(x^2) + eps) of one row, returned to every thread of the block. `ss` is this
// thread's partial sum of squares: fmaf(v, v, ss) from 0 over its columns c = threadIdx.x,
// threadIdx.x + blockDim.x, ... in that order. Warps reduce by butterflies, warp partials are
// summed in index order. Called by every thread of the block; warp_part is [32] shared floats.
__device__ __forceinline__ float rms_norm_inv(float ss, int dim, float eps, float* warp_part) {
  ss = warp_sum(ss);
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) total += warp_part[i];
  return 1.f / sqrtf(total / float(dim) + eps);  // IEEE div/sqrt, like the CPU reference
}

// One normalised element: (x * inv) * w, two roundings like the CPU reference.
__device__ __forceinline__ float rms_norm_scale(float x, float inv, float w) { return __fmul_rn(__fmul_rn(x, inv), w); }

}  // namespace moex::kernels
