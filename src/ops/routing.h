// Expert selection for one MoE layer. Integer outputs are exact: every backend must pick the
// same experts in the same slot order. Ties are broken toward the lower expert id: moex's own
// rule (torch.topk leaves the order of equal values unspecified), see docs/kernels/routing.md.
#pragma once
#include "core/tensor.h"

namespace moex::ops {

enum class ScoringFunc : uint8_t { kSoftmax, kSigmoid };
enum class TopkMethod : uint8_t {
  kGreedy,              // top-k over all experts
  kGroupLimitedGreedy,  // DeepSeek-V2: group score = max in group; keep topk_group groups
  kNoauxTc,             // DeepSeek-V3: sigmoid + bias for selection; group score = sum of top-2
};

struct RouteParams {
  Tensor logits;        // [n, E] f32 router logits
  Tensor bias;          // [E] f32 e_score_correction_bias (kNoauxTc only), else empty
  Tensor topk_ids;      // [n, top_k] i32 out, slot order = descending selection score
  Tensor topk_weights;  // [n, top_k] f32 out, after renormalisation and routed scaling
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  TopkMethod method = TopkMethod::kGreedy;
  int top_k = 1;
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.f;
};

}  // namespace moex::ops
