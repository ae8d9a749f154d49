// Tensor-core MLA decode (absorbed form, DeepSeek-V2/V3: bf16 q [n, heads, 576], bf16 latent
// cache [pages, page_size, 576] or e4m3 cache + per-token f32 scales [pages, page_size],
// values = first 512 features). See docs/kernels/mla.md.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/scratch.h"
#include "ops/attention.h"

namespace moex::kernels {

// The split plan: a fixed number of keys per split chosen from the block table's width only
// (never from seq_lens, which live on the GPU, nor from the batch), so a row's bits do not
// depend on the batch it runs in.
struct MlaDecodePlan {
  int split_keys = 512;  // multiple of the 32-key tile
  int num_splits = 1;
  int row_groups = 4;    // 16-row groups per CTA (1, 2 or 4)
  int max_group = 1;     // query tokens of one sequence packed into one CTA (1 or 2)
  int row_tiles = 1;     // CTAs along the row axis per (token group, split)
};
MlaDecodePlan plan_mla_decode(int64_t n, int64_t num_seqs, int heads, int64_t max_keys);

// True when the tensor-core kernel takes these params (bf16 q, bf16 or e4m3 cache, 576/512,
// aligned rows; e4m3 rows 16-byte aligned); an e4m3 cache has no other kernel, and
// the generic split-KV kernel handles everything else. Depends only on dtypes, dims and
// alignment, never on the batch's composition, so a row alone and in a batch use one kernel.
bool mla_decode_tc_supported(const ops::MlaAttentionParams& p);

cudaError_t launch_mla_decode_tc(const ops::MlaAttentionParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
