// Token sampling on the GPU (ops/sampling.h): one block per row, no full sort. Algorithm and
// complexity: docs/kernels/sampling.md.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/sampling.h"

namespace moex::kernels {

// Ids take at most 20 bits of the 64-bit sort key, and the fixed-point weights of a whole row
// (2^44 per unit weight) must fit in 64 bits.
constexpr int64_t kSampleMaxVocab = (int64_t(1) << 20) - 1;

// Shapes and dtypes are validated by the caller (CudaBackend::sample).
cudaError_t launch_sample(const ops::SampleParams& p, cudaStream_t stream);

}  // namespace moex::kernels
