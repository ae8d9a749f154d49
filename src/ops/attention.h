// Attention over a paged KV cache.
//
// Paged cache: a pool of pages of `page_size` token slots. Slot s lives in page s / page_size
// at offset s % page_size. A sequence's pages are listed in its row of block_table.
// A step's queries are grouped by sequence: sequence i owns query rows
// [query_start[i], query_start[i+1]) and, after this step's tokens were written to the cache,
// has seq_lens[i] cached tokens; its last query row is at position seq_lens[i] - 1 and its
// queries are consecutive positions (prefill, decode and chunked prefill alike). Causal.
#pragma once
#include "core/tensor.h"

namespace moex::ops {

// dst[slot_mapping[t], :] = src[t, :]  (cast to dst dtype). Used to write K, V or MLA latents.
struct CacheWriteParams {
  Tensor src;           // [n, dim] strided rows
  Tensor slot_mapping;  // [n] i32
  Tensor dst;           // [num_slots, dim] (a cache seen as slots; strided rows allowed)
  // Optional, only with an f8e4m3 dst (the FP8 MLA latent cache, docs/kernels/mla.md): each
  // written row gets one power-of-two scale, the smallest with amax(row) <= 448 * scale, and
  // dst[slot, :] = e4m3(src[t, :] / scale) (exact division, RNE, satfinite); a zero, subnormal
  // or non-finite amax (NaN values ignored) gives scale 1. Empty: a plain cast, as before.
  Tensor dst_scale{};   // [num_slots] f32
};

struct PagedSeqs {
  Tensor block_table;  // [num_seqs, max_pages_per_seq] i32
  Tensor seq_lens;     // [num_seqs] i32
  Tensor query_start;  // [num_seqs + 1] i32
  int page_size = 64;
};

// Grouped-query attention (Qwen3-MoE, Mixtral). q head h reads kv head h / (q_heads / kv_heads).
struct GqaAttentionParams {
  Tensor q;        // [n, q_heads, head_dim]
  Tensor k_cache;  // [num_pages, page_size, kv_heads, head_dim]
  Tensor v_cache;  // [num_pages, page_size, kv_heads, head_dim_v]
  PagedSeqs seqs;
  Tensor out;      // [n, q_heads, head_dim_v]
  float scale = 1.f;
  int sliding_window = 0;  // > 0: query at position p sees keys at positions > p - sliding_window
};

// Multi-head latent attention, absorbed form (DeepSeek-V2/V3). One latent KV head of
// kv_lora_rank + rope_dim values per token shared by all query heads:
//   score(h, s) = scale * dot(q[t, h, :], cache[s, :])      over all kv_lora_rank + rope_dim dims
//   out[t, h, :] = sum_s softmax(score)(s) * cache[s, 0:kv_lora_rank]
struct MlaAttentionParams {
  Tensor q;      // [n, heads, kv_lora_rank + rope_dim]  (576 for DeepSeek-V3)
  Tensor cache;  // [num_pages, page_size, kv_lora_rank + rope_dim]
  PagedSeqs seqs;
  Tensor out;    // [n, heads, kv_lora_rank]
  Tensor lse;    // [n, heads] f32 log-sum-exp of the scaled scores (natural log), optional
  int kv_lora_rank = 512;
  float scale = 1.f;
  // Optional, only with an f8e4m3 cache (written by cache_write with dst_scale): latent value
  // cache[p, s, d] = e4m3 * cache_scale[p, s] for all kv_lora_rank + rope_dim features. Empty
  // with an e4m3 cache: scale 1.
  Tensor cache_scale{};  // [num_pages, page_size] f32
};

}  // namespace moex::ops
