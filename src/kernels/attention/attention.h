// Paged attention launchers (ops/attention.h). GQA and absorbed MLA share one split-KV kernel
// (attention/common/paged_attention.cuh); MLA is the case of one latent KV head whose first
// kv_lora_rank features are the values.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/scratch.h"
#include "ops/attention.h"

namespace moex::kernels {

// Keys per split, chosen from the row's own key count (its position + 1), so a row's splits (and
// bits) depend only on itself, never on the batch: rows of at most kAttnShortRowKeys keys split
// in `short_keys` (64 by default: more blocks for few tokens), longer rows in 256-key splits
// (bounded partials for large batches).
constexpr int kAttnSplitKeysLong = 256, kAttnShortRowKeys = 4096;
__host__ __device__ constexpr int attn_split_keys(int row_keys, int short_keys) {
  return row_keys <= kAttnShortRowKeys ? short_keys : kAttnSplitKeysLong;
}
// Splits to launch for rows of at most max_keys keys: the most any such row can have.
constexpr int attn_num_splits(int64_t max_keys, int short_keys) {
  const int64_t short_rows = (std::min<int64_t>(max_keys, kAttnShortRowKeys) + short_keys - 1) / short_keys;
  const int64_t long_rows = (max_keys + kAttnSplitKeysLong - 1) / kAttnSplitKeysLong;
  const int64_t n = std::max(short_rows, long_rows);
  return n > 0 ? int(n) : 1;
}
// The paged-attention variant, read once from the environment for A/B benchmarks (the choice
// never depends on the batch): MOEX_ATTN_SHORT_SPLIT = 64 (default) or 256 keys per split of
// short rows; MOEX_ATTN_HOIST = 1 (default) reads a tile's page ids once per tile and shares
// them by shuffle, 0 reads each key's page id in its own load chain; MOEX_GQA_TC = 1 (default)
// runs GQA splits on tensor cores where the shapes allow (gqa/gqa_split_tc.h), 0 on CUDA cores;
// MOEX_GQA_TC_SPLIT = 64, 128 or 256 (default 256) keys per split of short rows there.
struct AttnVariant {
  int short_split_keys = 64;
  bool hoist_pages = true;
  bool gqa_tensor_cores = true;
  int gqa_tc_short_split_keys = 256;
};
AttnVariant attn_variant();

constexpr int kAttnMaxHeadDim = 1024;
constexpr int kAttnMaxValueDim = 512;

// Whether GQA splits of these shapes, dtypes and strides can run on tensor cores
// (gqa/gqa_split_tc.cu: bf16, head dim 64 or 128, at most 16 query heads per KV head); the choice
// never depends on the batch.
bool gqa_split_tc_supported(const ops::GqaAttentionParams& p);

cudaError_t launch_gqa_attention(const ops::GqaAttentionParams& p, Scratch& scratch, cudaStream_t stream);
cudaError_t launch_mla_attention(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
