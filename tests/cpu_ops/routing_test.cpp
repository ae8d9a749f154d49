// route against an independent reference of the HF routers (Qwen3-MoE, Mixtral, DeepSeek-V2,
// DeepSeek-V3). Ids must be equal; ties go to the lower id (our contract; torch leaves it open).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

struct RouteCfg {
  int64_t experts = 8;
  int top_k = 2;
  ops::ScoringFunc scoring = ops::ScoringFunc::kSoftmax;
  ops::TopkMethod method = ops::TopkMethod::kGreedy;
  int n_group = 1, topk_group = 1;
  bool norm = false;
  float scale = 1.f;
};

// Indices of the k largest values (descending, ties to the lower index) among allowed ones.
std::vector<int> top_indices(const std::vector<double>& v, int k, const std::vector<bool>& allowed) {
  std::vector<int> idx;
  for (int i = 0; i < int(v.size()); ++i)
    if (allowed[size_t(i)]) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[size_t(a)] > v[size_t(b)]; });
  idx.resize(size_t(k));
  return idx;
}

// One token, following the HF modeling code: softmax in double; sigmoid + bias evaluated in
// fp32 as torch does (selection compares those fp32 values).
void ref_route(const RouteCfg& c, const float* logits, const float* bias, std::vector<int>* ids, std::vector<double>* w) {
  const int64_t e_count = c.experts;
  std::vector<double> score(static_cast<size_t>(e_count)), choice(static_cast<size_t>(e_count));
  if (c.scoring == ops::ScoringFunc::kSoftmax) {
    double mx = -1e300, sum = 0;
    for (int64_t e = 0; e < e_count; ++e) mx = std::max(mx, double(logits[e]));
    for (int64_t e = 0; e < e_count; ++e) sum += std::exp(double(logits[e]) - mx);
    for (int64_t e = 0; e < e_count; ++e) score[size_t(e)] = std::exp(double(logits[e]) - mx) / sum;
    choice = score;
  } else {
    for (int64_t e = 0; e < e_count; ++e) {
      const float s = 1.f / (1.f + std::exp(-logits[e]));
      score[size_t(e)] = s;
      choice[size_t(e)] = bias ? double(s + bias[e]) : double(s);
    }
  }
  std::vector<bool> allowed(size_t(e_count), true);
  if (c.method != ops::TopkMethod::kGreedy) {
    const int64_t gs = e_count / c.n_group;
    std::vector<double> gscore(size_t(c.n_group));
    for (int g = 0; g < c.n_group; ++g) {
      std::vector<double> members(choice.begin() + g * gs, choice.begin() + (g + 1) * gs);
      std::sort(members.rbegin(), members.rend());
      gscore[size_t(g)] = c.method == ops::TopkMethod::kNoauxTc ? double(float(members[0]) + float(members[1])) : members[0];
    }
    const auto keep = top_indices(gscore, c.topk_group, std::vector<bool>(size_t(c.n_group), true));
    for (int64_t e = 0; e < e_count; ++e)
      allowed[size_t(e)] = std::find(keep.begin(), keep.end(), int(e / gs)) != keep.end();
  }
  *ids = top_indices(choice, c.top_k, allowed);
  w->clear();
  for (int id : *ids) w->push_back(score[size_t(id)]);
  if (c.norm) {
    double s = std::accumulate(w->begin(), w->end(), 0.0);
    if (c.scoring == ops::ScoringFunc::kSigmoid) s += 1e-20;
    for (double& x : *w) x /= s;
  }
  for (double& x : *w) x *= c.scale;
}

void run_and_compare(const RouteCfg& c, const HostTensor& logits, const HostTensor* bias) {
  const int64_t n = logits.t.shape[0];
  auto be = cpu(2);
  HostTensor ids(DType::kI32, {n, c.top_k}), w(DType::kF32, {n, c.top_k});
  for (int64_t i = 0; i < ids.numel(); ++i) ids.i32()[i] = -7;
  w.fill_nan();
  ops::RouteParams p;
  p.logits = logits.t;
  if (bias) p.bias = bias->t;
  p.topk_ids = ids.t;
  p.topk_weights = w.t;
  p.scoring = c.scoring;
  p.method = c.method;
  p.top_k = c.top_k;
  p.n_group = c.n_group;
  p.topk_group = c.topk_group;
  p.norm_topk_prob = c.norm;
  p.routed_scaling_factor = c.scale;
  const Status s = be->route(p);
  ASSERT_TRUE(s.is_ok()) << s.message();
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int> rid;
    std::vector<double> rw;
    ref_route(c, logits.t.ptr<const float>() + t * c.experts, bias ? bias->t.ptr<const float>() : nullptr, &rid, &rw);
    for (int j = 0; j < c.top_k; ++j) {
      ASSERT_EQ(ids.i32()[t * c.top_k + j], rid[size_t(j)]) << "token " << t << " slot " << j;
      EXPECT_NEAR(w.get(t * c.top_k + j), rw[size_t(j)], 2e-6 * std::max(1.0, std::fabs(rw[size_t(j)])))
          << "token " << t << " slot " << j;
    }
  }
}

TEST(Route, Qwen3MoeSoftmaxTopkRenorm) {
  MOEX_TRACE_SEED();
  RouteCfg c{128, 8, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, true, 1.f};
  for (int64_t n : {1, 3, 17, 97}) run_and_compare(c, random_tensor(DType::kF32, {n, 128}, -4, 4), nullptr);
}

TEST(Route, MixtralTop2) {
  MOEX_TRACE_SEED();
  RouteCfg c{8, 2, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, true, 1.f};
  run_and_compare(c, random_tensor(DType::kF32, {97, 8}, -3, 3), nullptr);
}

TEST(Route, DeepseekV2LiteGreedyScaled) {
  MOEX_TRACE_SEED();
  RouteCfg c{64, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, false, 1.f};
  run_and_compare(c, random_tensor(DType::kF32, {33, 64}, -3, 3), nullptr);
  c.scale = 16.f;
  run_and_compare(c, random_tensor(DType::kF32, {33, 64}, -3, 3), nullptr);
}

TEST(Route, DeepseekV2GroupLimitedGreedy) {
  MOEX_TRACE_SEED();
  RouteCfg c{160, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGroupLimitedGreedy, 8, 3, false, 16.f};
  run_and_compare(c, random_tensor(DType::kF32, {97, 160}, -3, 3), nullptr);
}

TEST(Route, DeepseekV3NoauxTc) {
  MOEX_TRACE_SEED();
  RouteCfg c{256, 8, ops::ScoringFunc::kSigmoid, ops::TopkMethod::kNoauxTc, 8, 4, true, 2.5f};
  HostTensor bias = random_tensor(DType::kF32, {256}, -0.2, 0.2);
  run_and_compare(c, random_tensor(DType::kF32, {97, 256}, -4, 4), &bias);
  c.norm = false;
  run_and_compare(c, random_tensor(DType::kF32, {17, 256}, -4, 4), &bias);
  // Very negative logits: tiny sigmoid scores, where the +1e-20 in the renormalisation shows.
  c.norm = true;
  run_and_compare(c, random_tensor(DType::kF32, {5, 256}, -60, -40), &bias);
}

TEST(Route, AllEqualLogitsPickLowestIds) {
  for (auto method : {ops::TopkMethod::kGreedy, ops::TopkMethod::kGroupLimitedGreedy, ops::TopkMethod::kNoauxTc}) {
    RouteCfg c{64, 6, method == ops::TopkMethod::kNoauxTc ? ops::ScoringFunc::kSigmoid : ops::ScoringFunc::kSoftmax,
               method, 8, 3, true, 1.f};
    HostTensor logits(DType::kF32, {3, 64});
    for (int64_t i = 0; i < logits.numel(); ++i) logits.set(i, 0.25);
    HostTensor bias(DType::kF32, {64});
    for (int64_t i = 0; i < 64; ++i) bias.set(i, 0.0);
    run_and_compare(c, logits, method == ops::TopkMethod::kNoauxTc ? &bias : nullptr);
    auto be = cpu(1);
    HostTensor ids(DType::kI32, {3, 6}), w(DType::kF32, {3, 6});
    ops::RouteParams p;
    p.logits = logits.t;
    if (method == ops::TopkMethod::kNoauxTc) p.bias = bias.t;
    p.topk_ids = ids.t;
    p.topk_weights = w.t;
    p.scoring = c.scoring;
    p.method = method;
    p.top_k = 6;
    p.n_group = 8;
    p.topk_group = 3;
    p.norm_topk_prob = true;
    ASSERT_TRUE(be->route(p).is_ok());
    for (int j = 0; j < 6; ++j) {
      EXPECT_EQ(ids.i32()[2 * 6 + j], j);
      EXPECT_NEAR(w.get(2 * 6 + j), 1.0 / 6, 1e-6);
    }
  }
}

TEST(Route, ManyTiesFromFewDistinctLogits) {
  MOEX_TRACE_SEED();
  HostTensor logits(DType::kF32, {97, 64});
  for (int64_t i = 0; i < logits.numel(); ++i) logits.set(i, 0.5 * random_int(0, 3));
  run_and_compare({64, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, true, 1.f}, logits, nullptr);
  run_and_compare({64, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGroupLimitedGreedy, 8, 3, false, 1.f}, logits,
                  nullptr);
  HostTensor bias(DType::kF32, {64});
  for (int64_t i = 0; i < 64; ++i) bias.set(i, 0.125 * random_int(0, 2));
  run_and_compare({64, 6, ops::ScoringFunc::kSigmoid, ops::TopkMethod::kNoauxTc, 8, 3, true, 2.5f}, logits, &bias);
}

TEST(Route, GroupLimitExcludesBestExpertsOfDroppedGroups) {
  // 8 experts in 4 groups of 2, keep 2 groups, top-3. Group maxima: 5, 1, 4, 4.5 -> groups 0, 3
  // stay, so expert 4 (logit 4) is out and the third slot goes to expert 1 (logit -5).
  HostTensor logits(DType::kF32, {1, 8});
  const float v[8] = {5, -5, 1, 1, 4, -9, 4.5f, -9};
  for (int i = 0; i < 8; ++i) logits.set(i, v[i]);
  auto be = cpu(1);
  HostTensor ids(DType::kI32, {1, 3}), w(DType::kF32, {1, 3});
  ops::RouteParams p;
  p.logits = logits.t;
  p.topk_ids = ids.t;
  p.topk_weights = w.t;
  p.method = ops::TopkMethod::kGroupLimitedGreedy;
  p.top_k = 3;
  p.n_group = 4;
  p.topk_group = 2;
  ASSERT_TRUE(be->route(p).is_ok());
  EXPECT_EQ(ids.i32()[0], 0);
  EXPECT_EQ(ids.i32()[1], 6);
  EXPECT_EQ(ids.i32()[2], 1);
  // noaux_tc ranks groups by the sum of their two best: sigmoid scores with zero bias.
  // Group 1 (two good experts) beats group 0 (one excellent, one terrible).
  const float v3[8] = {8, -8, 2, 2, -1, -1, -2, -2};
  for (int i = 0; i < 8; ++i) logits.set(i, v3[i]);
  HostTensor bias(DType::kF32, {8});
  for (int i = 0; i < 8; ++i) bias.set(i, 0.0);
  p.bias = bias.t;
  p.scoring = ops::ScoringFunc::kSigmoid;
  p.method = ops::TopkMethod::kNoauxTc;
  HostTensor ids2(DType::kI32, {1, 2}), w2(DType::kF32, {1, 2});
  p.topk_ids = ids2.t;
  p.topk_weights = w2.t;
  p.top_k = 2;
  p.topk_group = 1;
  ASSERT_TRUE(be->route(p).is_ok());
  EXPECT_EQ(ids2.i32()[0], 2);
  EXPECT_EQ(ids2.i32()[1], 3);
}

TEST(Route, TokenResultIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  HostTensor logits = random_tensor(DType::kF32, {17, 256}, -4, 4);
  HostTensor bias = random_tensor(DType::kF32, {256}, -0.2, 0.2);
  ops::RouteParams p;
  p.bias = bias.t;
  p.scoring = ops::ScoringFunc::kSigmoid;
  p.method = ops::TopkMethod::kNoauxTc;
  p.top_k = 8;
  p.n_group = 8;
  p.topk_group = 4;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.5f;
  HostTensor ids(DType::kI32, {17, 8}), w(DType::kF32, {17, 8});
  p.logits = logits.t;
  p.topk_ids = ids.t;
  p.topk_weights = w.t;
  ASSERT_TRUE(cpu(2)->route(p).is_ok());
  for (int64_t t = 0; t < 17; t += 4) {
    HostTensor ids1(DType::kI32, {1, 8}), w1(DType::kF32, {1, 8});
    p.logits = logits.t.slice(0, t, t + 1);
    p.topk_ids = ids1.t;
    p.topk_weights = w1.t;
    ASSERT_TRUE(cpu(1)->route(p).is_ok());
    EXPECT_TRUE(same_bytes(ids1.t.data, ids.t.ptr<int32_t>() + t * 8, 32));
    EXPECT_TRUE(same_bytes(w1.t.data, w.t.ptr<float>() + t * 8, 32));
  }
}

TEST(Route, RejectsBadConfigs) {
  auto be = cpu(1);
  HostTensor logits = random_tensor(DType::kF32, {2, 8});
  HostTensor ids(DType::kI32, {2, 9}), w(DType::kF32, {2, 9});
  ops::RouteParams p;
  p.logits = logits.t;
  p.topk_ids = ids.t;
  p.topk_weights = w.t;
  p.top_k = 9;  // > experts
  EXPECT_EQ(be->route(p).code(), StatusCode::kInvalidArgument);
  HostTensor ids2(DType::kI32, {2, 2}), w2(DType::kF32, {2, 2});
  p.topk_ids = ids2.t;
  p.topk_weights = w2.t;
  p.top_k = 2;
  p.method = ops::TopkMethod::kGroupLimitedGreedy;
  p.n_group = 3;  // does not divide 8
  EXPECT_EQ(be->route(p).code(), StatusCode::kInvalidArgument);
  p.method = ops::TopkMethod::kNoauxTc;
  p.scoring = ops::ScoringFunc::kSigmoid;
  p.n_group = 2;
  const Status s = be->route(p);  // no bias
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bias"), std::string::npos);
  p.topk_ids = w2.t;  // f32 ids
  EXPECT_EQ(be->route(p).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moex::test
