// Naive double-precision references for the benchmarked ops, written independently of the CPU
// backend so that `moex test-set --device cpu` checks that backend against something else.
// Inputs are host tensors of any float dtype (read through load_as_f32) with any strides;
// results come back as doubles in row-major order of the op's output shape. No intermediate
// rounding: these are the exact values the ops approximate.
#pragma once
#include <vector>

#include "core/status.h"
#include "ops/attention.h"
#include "ops/fused_moe.h"
#include "ops/norm.h"

namespace moex::bench::ref {

// out [n, hidden]; rows listed in `rows` only when non-empty (others are left 0).
Status fused_moe(const ops::FusedMoeParams& p, std::vector<double>* out);
// out [n, heads, kv_lora_rank], lse [n, heads].
Status mla_attention(const ops::MlaAttentionParams& p, std::vector<double>* out, std::vector<double>* lse);
// out [n, q_heads, head_dim_v].
Status gqa_attention(const ops::GqaAttentionParams& p, std::vector<double>* out);
// out [rows, dim].
Status rms_norm(const ops::RmsNormParams& p, std::vector<double>* out);

}  // namespace moex::bench::ref
