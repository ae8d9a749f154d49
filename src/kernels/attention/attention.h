// Paged attention launchers (ops/attention.h). GQA and absorbed MLA share one split-KV kernel
// (attention/common/paged_attention.cuh); MLA is the case of one latent KV head whose first
// kv_lora_rank features are the values.
#pragma once
#include <cuda_runtime.h>

#include "kernels/common/scratch.h"
#include "ops/attention.h"

namespace moex::kernels {

// Keys per split: a fixed constant, so a row's splits (and bits) depend only on its own range.
constexpr int kAttnSplitKeys = 256;
constexpr int kAttnMaxHeadDim = 1024;
constexpr int kAttnMaxValueDim = 512;

cudaError_t launch_gqa_attention(const ops::GqaAttentionParams& p, Scratch& scratch, cudaStream_t stream);
cudaError_t launch_mla_attention(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
