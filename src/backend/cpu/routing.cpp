// route: expert selection (see docs/kernels/routing.md for the rules and how they map to HF).
//
// Per token, in fp32:
//   softmax scoring: prob[e] = exp(l[e] - max l) / sum_e' exp(l[e'] - max l), the sum in
//     increasing expert id. Selection compares the logits themselves (softmax is strictly
//     increasing), so the chosen ids never depend on the exp implementation of a backend.
//   sigmoid scoring: score[e] = 1 / (1 + exp(-l[e])); selection compares score[e] (+ bias[e]
//     for noaux_tc), rounded to fp32 as written.
//   group limiting: group value = max selection value in the group (group_limited_greedy) or
//     the sum of its two largest (noaux_tc); the topk_group best groups stay, the rest drop out.
//   top-k: repeated arg-max over the remaining experts, so slots come in descending selection
//     value; equal values go to the lower expert (or group) id.
//   weights: prob / score of the chosen experts; if norm_topk_prob divide by their sum in slot
//     order (+1e-20 for sigmoid scoring, as DeepSeek-V3 does); then times routed_scaling_factor.
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

// Index of the largest v[i] with allowed[i], the lowest index on ties; -1 if none is allowed.
int64_t arg_max(const float* v, const uint8_t* allowed, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (!allowed[i]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  return best;
}

}  // namespace

Status route(const Ctx& ctx, const ops::RouteParams& p) {
  constexpr const char* op = "route";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "logits", p.logits, 2));
  if (p.logits.dtype != DType::kF32) return invalid_argument("route: logits must be f32, got " + shape_of(p.logits));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "logits", p.logits));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "topk_ids", p.topk_ids, 2));
  MOEX_RETURN_IF_ERROR(check_i32(op, "topk_ids", p.topk_ids));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "topk_ids", p.topk_ids));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "topk_weights", p.topk_weights, 2));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "topk_weights", p.topk_weights));
  if (p.topk_weights.dtype != DType::kF32)
    return invalid_argument("route: topk_weights must be f32, got " + shape_of(p.topk_weights));
  const int64_t n = p.logits.shape[0], num_experts = p.logits.shape[1];
  const int64_t k = p.top_k;
  if (k < 1 || k > num_experts)
    return invalid_argument("route: top_k " + std::to_string(k) + " must be in [1, " + std::to_string(num_experts) + "]");
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_ids", p.topk_ids, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_ids", p.topk_ids, 1, k));
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_weights", p.topk_weights, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "topk_weights", p.topk_weights, 1, k));
  const bool noaux = p.method == ops::TopkMethod::kNoauxTc;
  const bool grouped = p.method != ops::TopkMethod::kGreedy;
  if (noaux) {
    MOEX_RETURN_IF_ERROR(check_tensor(op, "bias", p.bias, 1));
    if (p.bias.dtype != DType::kF32) return invalid_argument("route: bias must be f32, got " + shape_of(p.bias));
    MOEX_RETURN_IF_ERROR(check_dim(op, "bias", p.bias, 0, num_experts));
    if (p.scoring != ops::ScoringFunc::kSigmoid) return invalid_argument("route: noaux_tc needs sigmoid scoring");
  } else if (!p.bias.empty()) {
    return invalid_argument("route: bias is only used by noaux_tc; pass an empty tensor");
  }
  const int64_t groups = grouped ? p.n_group : 1;
  if (groups < 1 || num_experts % groups != 0)
    return invalid_argument("route: n_group " + std::to_string(p.n_group) + " must divide the expert count " +
                            std::to_string(num_experts));
  const int64_t group_size = num_experts / groups;
  const int64_t keep_groups = grouped ? p.topk_group : 1;
  if (grouped) {
    if (keep_groups < 1 || keep_groups > groups)
      return invalid_argument("route: topk_group " + std::to_string(p.topk_group) + " must be in [1, n_group]");
    if (keep_groups * group_size < k)
      return invalid_argument("route: topk_group * experts per group is smaller than top_k");
    if (noaux && group_size < 2) return invalid_argument("route: noaux_tc needs at least 2 experts per group");
  }
  std::vector<float> bias(static_cast<size_t>(noaux ? num_experts : 0));
  if (noaux) load_row(p.bias.data, DType::kF32, p.bias.stride[0], num_experts, bias.data());

  // Per thread: sel [E], val [E] (exp or score), allowed [E], group values [groups].
  const int64_t per = 2 * num_experts + groups;
  std::vector<float> fbuf(static_cast<size_t>(ctx.threads * per));
  std::vector<uint8_t> abuf(static_cast<size_t>(ctx.threads * (num_experts + groups)));
  parallel_for(ctx, n, num_experts * k, [&](int64_t t, int th) {
    const float* l = p.logits.ptr<const float>() + t * p.logits.stride[0];  // [E]
    float* sel = fbuf.data() + th * per;  // [E] selection values
    float* val = sel + num_experts;       // [E] exp(l - max) or sigmoid score
    float* gval = val + num_experts;      // [groups]
    uint8_t* allowed = abuf.data() + th * (num_experts + groups);
    uint8_t* gallowed = allowed + num_experts;
    float denom_all = 1.f;
    if (p.scoring == ops::ScoringFunc::kSoftmax) {
      float mx = l[0];
      for (int64_t e = 1; e < num_experts; ++e) mx = l[e] > mx ? l[e] : mx;
      float sum = 0.f;
      for (int64_t e = 0; e < num_experts; ++e) {
        val[e] = std::exp(l[e] - mx);
        sum += val[e];
        sel[e] = l[e];
      }
      denom_all = sum;
    } else {
      for (int64_t e = 0; e < num_experts; ++e) {
        val[e] = 1.f / (1.f + std::exp(-l[e]));
        sel[e] = noaux ? val[e] + bias[size_t(e)] : val[e];
      }
    }
    for (int64_t e = 0; e < num_experts; ++e) allowed[e] = 1;
    if (grouped) {
      for (int64_t g = 0; g < groups; ++g) {
        const float* s = sel + g * group_size;  // [group_size]
        if (noaux) {  // sum of the two largest
          const int64_t i1 = arg_max(s, allowed + g * group_size, group_size);
          allowed[g * group_size + i1] = 0;
          const int64_t i2 = arg_max(s, allowed + g * group_size, group_size);
          allowed[g * group_size + i1] = 1;
          gval[g] = s[i1] + s[i2];
        } else {
          float mx = s[0];
          for (int64_t i = 1; i < group_size; ++i) mx = s[i] > mx ? s[i] : mx;
          gval[g] = mx;
        }
      }
      // Keep the topk_group best groups (1 = candidate, 2 = kept), then drop the others' experts.
      uint8_t* keep = gallowed;
      for (int64_t g = 0; g < groups; ++g) keep[g] = 1;
      for (int64_t j = 0; j < keep_groups; ++j) {
        int64_t best = -1;
        for (int64_t g = 0; g < groups; ++g)
          if (keep[g] == 1 && (best < 0 || gval[g] > gval[best])) best = g;
        keep[best] = 2;
      }
      for (int64_t g = 0; g < groups; ++g)
        if (keep[g] != 2)
          for (int64_t i = 0; i < group_size; ++i) allowed[g * group_size + i] = 0;
    }
    int32_t* ids = p.topk_ids.ptr<int32_t>() + t * p.topk_ids.stride[0];    // [top_k]
    float* w = p.topk_weights.ptr<float>() + t * p.topk_weights.stride[0];  // [top_k]
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = arg_max(sel, allowed, num_experts);
      allowed[e] = 0;
      ids[j] = int32_t(e);
      w[j] = p.scoring == ops::ScoringFunc::kSoftmax ? val[e] / denom_all : val[e];
    }
    if (p.norm_topk_prob) {
      float sum = 0.f;
      for (int64_t j = 0; j < k; ++j) sum += w[j];
      if (p.scoring == ops::ScoringFunc::kSigmoid) sum += 1e-20f;
      for (int64_t j = 0; j < k; ++j) w[j] /= sum;
    }
    for (int64_t j = 0; j < k; ++j) w[j] *= p.routed_scaling_factor;
  });
  return Status::ok();
}

}  // namespace moex::cpu
