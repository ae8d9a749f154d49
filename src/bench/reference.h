// Naive double-precision references for the benchmarked ops, written independently of the CPU
// backend so that `moex test-set --device cpu` checks that backend against something else.
// Inputs are host tensors of any float dtype (read through load_as_f32) with any strides;
// results come back as doubles in row-major order of the op's output shape. No intermediate
// rounding: these are the exact values the ops approximate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "ops/attention.h"
#include "ops/fused_moe.h"
#include "ops/norm.h"
#include "ops/nsa.h"

namespace moex::bench::ref {

// out [n, hidden]; rows listed in `rows` only when non-empty (others are left 0).
Status fused_moe(const ops::FusedMoeParams& p, std::vector<double>* out);
// out [n, heads, kv_lora_rank], lse [n, heads].
Status mla_attention(const ops::MlaAttentionParams& p, std::vector<double>* out, std::vector<double>* lse);
// out [n, q_heads, head_dim_v].
Status gqa_attention(const ops::GqaAttentionParams& p, std::vector<double>* out);
// out [rows, dim].
Status rms_norm(const ops::RmsNormParams& p, std::vector<double>* out);

// ---- Native Sparse Attention (reference_nsa.cpp) ----
struct NsaResult {
  std::vector<double> out, out_cmp, out_sel, out_win;  // [T, HQ, Dv]
  std::vector<int32_t> sel_idx;                        // [T, H, select_n], ascending, -1 padded
};
// All rows, or only those with rows_wanted[row] != 0 (the others stay 0 / -1).
Status nsa_forward(const ops::NsaForwardParams& p, NsaResult* r, const std::vector<char>& rows_wanted = {});
// Importance [t / l' + 1] of query position t for one KV head: q [g][Dk] its query heads,
// kc [>= visible blocks][Dk] the compressed keys (cfg.scale applies).
std::vector<double> nsa_importance(const ops::NsaConfig& cfg, int64_t t, const std::vector<std::vector<double>>& q,
                                   const std::vector<std::vector<double>>& kc);
// The chosen blocks of query t [select_n], ascending, -1 padded.
std::vector<int32_t> nsa_select(const ops::NsaConfig& cfg, int64_t t, const std::vector<double>& imp);

}  // namespace moex::bench::ref
