// Launchers for the small ops of ops/elementwise.h, ops/norm.h, ops/rope.h and cache_write.
// Shapes and dtypes are validated by the backend; these only launch.
#pragma once
#include <cuda_runtime.h>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/norm.h"
#include "ops/rope.h"

namespace moex::kernels {

cudaError_t launch_embedding(const ops::EmbeddingParams& p, cudaStream_t stream);
cudaError_t launch_copy(const ops::CopyParams& p, cudaStream_t stream);  // up to 4 dims
cudaError_t launch_add(const ops::AddParams& p, cudaStream_t stream);
cudaError_t launch_silu_mul(const ops::SiluMulParams& p, cudaStream_t stream);
cudaError_t launch_random_uniform(const ops::RandomUniformParams& p, cudaStream_t stream);
cudaError_t launch_rms_norm(const ops::RmsNormParams& p, cudaStream_t stream);
cudaError_t launch_rope(const ops::RopeParams& p, cudaStream_t stream);
cudaError_t launch_cache_write(const ops::CacheWriteParams& p, cudaStream_t stream);

}  // namespace moex::kernels
