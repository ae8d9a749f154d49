// Causal attention for prompt processing over a ragged batch (the non-absorbed MLA form: q/k head
// dim 192, v head dim 128; also plain GQA shapes). Docs: docs/kernels/prefill_attention.md. The
// CPU backend is the reference.
//
// Sequence i owns rows [cu_seqlens[i], cu_seqlens[i+1]) of q, k, v, out and lse, at positions
// 0..len-1. Query head h reads KV head h / (HQ / H). Query at position t sees the keys s of its
// own sequence with s <= t (causal) or all of them (causal = false), and, when window > 0, only
// those with t - s < window. score = scale * dot(q, k) in f32; softmax and the weighted sum of v
// in f32; out rounded once to its dtype. lse[t, h] = natural log of sum_s exp(score - max) + max
// (f32; -inf for a row that sees no key, whose out is 0).
#pragma once
#include "core/tensor.h"

namespace moex::ops {

struct PrefillAttentionParams {
  Tensor q;           // [T, HQ, Dk] bf16 or f32, contiguous along Dk
  Tensor k;           // [T, H, Dk]
  Tensor v;           // [T, H, Dv]
  Tensor cu_seqlens;  // [B + 1] i32, cu[0] = 0, non-decreasing, cu[B] = T
  bool causal = true;
  float scale = 1.f;
  int window = 0;     // sliding window in keys (0 = unlimited)
  Tensor out;         // [T, HQ, Dv] bf16 or f32
  Tensor lse;         // optional [T, HQ] f32
};

}  // namespace moex::ops
