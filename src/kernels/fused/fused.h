// Launchers of the fused small ops of ops/fused.h. Shapes, dtypes and strides are validated by
// the backend (src/backend/cuda/cuda_fused_ops.cpp); these only launch.
#pragma once
#include <cuda_runtime.h>

#include "ops/fused.h"

namespace moex::kernels {

// residual += branch; out = rms_norm(residual) * weight: one block per row, rms_norm's block size.
cudaError_t launch_add_rms_norm(const ops::AddRmsNormParams& p, cudaStream_t stream);
// Per-head q/k norm, RoPE of q and k, K and V cache writes: one block per (token, head).
cudaError_t launch_qkv_rope_cache(const ops::QkvRopeCacheParams& p, cudaStream_t stream);
// Latent norm + RoPE of the rotary key and query, latent cache write, copy of the rotated query:
// one block per token for the latent, further blocks for the query pairs.
cudaError_t launch_mla_rope_cache(const ops::MlaRopeCacheParams& p, cudaStream_t stream);

}  // namespace moex::kernels
