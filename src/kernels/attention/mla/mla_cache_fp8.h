// Quantizing cache_write for the FP8 MLA latent cache (ops::CacheWriteParams with dst_scale):
// one power-of-two scale per row, dst = e4m3(src / scale). See docs/kernels/mla.md.
#pragma once
#include <cuda_runtime.h>

#include "ops/attention.h"

namespace moex::kernels {

// src f32/bf16/f16 [n, dim], dst f8e4m3 [slots, dim], dst_scale f32 [slots]; validated by the
// backend.
cudaError_t launch_cache_write_fp8(const ops::CacheWriteParams& p, cudaStream_t stream);

}  // namespace moex::kernels
