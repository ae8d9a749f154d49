// The tensor-core split kernel of GQA paged attention (gqa_split_tc.cu): bf16 q / K / V, head
// dim 64 or 128 (q/k and v alike), at most 16 query heads per KV head. Include from .cu files only.
#pragma once
#include "kernels/attention/common/paged_attention.cuh"
#include "ops/attention.h"

namespace moex::kernels::attention {

// The tensor-core split launcher for these shapes, dtypes and strides, or nullptr (then the
// CUDA-core attn_split_kernel runs). Depends only on p's shapes, dtypes and alignment, never on
// the batch, so every row of a model takes the same kernel.
// gqa_split_tc_supported(p) is in attention.h.
SplitLauncher gqa_split_tc_launcher(const ops::GqaAttentionParams& p);

}  // namespace moex::kernels::attention
