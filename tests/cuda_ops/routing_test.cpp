// CUDA vs CPU routing: exact ids in the same slot order, weights to fp32 rounding.
#include <cmath>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

struct RouteCase {
  const char* name;
  int experts, top_k;
  ops::ScoringFunc scoring;
  ops::TopkMethod method;
  int n_group, topk_group;
  bool norm;
  float scaling;
};

const RouteCase kCases[] = {
    {"qwen3-30b-a3b", 128, 8, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, true, 1.f},
    {"mixtral", 8, 2, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, true, 1.f},
    {"deepseek-v2-lite", 64, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGreedy, 1, 1, false, 1.f},
    {"deepseek-v2", 160, 6, ops::ScoringFunc::kSoftmax, ops::TopkMethod::kGroupLimitedGreedy, 8, 3, false, 16.f},
    {"deepseek-v3", 256, 8, ops::ScoringFunc::kSigmoid, ops::TopkMethod::kNoauxTc, 8, 4, true, 2.5f},
    {"odd-sigmoid", 37, 5, ops::ScoringFunc::kSigmoid, ops::TopkMethod::kGreedy, 1, 1, true, 1.f},
};

class RoutingTest : public CudaOpsTest {
 protected:
  // quantum > 0 rounds logits to multiples of it, creating many exact ties.
  void check(const RouteCase& c, int64_t n, float quantum) {
    SCOPED_TRACE(std::string(c.name) + " n " + std::to_string(n) + " quantum " + std::to_string(quantum) + " seed " +
                 std::to_string(seed_));
    HostTensor logits = host_random(DType::kF32, {n, c.experts}, rng_, -4.f, 4.f);
    if (quantum > 0)
      for (int64_t i = 0; i < logits.t.numel(); ++i) logits.set(i, std::round(logits.get(i) / quantum) * quantum);
    const bool noaux = c.method == ops::TopkMethod::kNoauxTc;
    HostTensor bias = host_random(DType::kF32, {c.experts}, rng_, -0.1f, 0.1f);
    if (quantum > 0)
      for (int64_t i = 0; i < c.experts; ++i) bias.set(i, 0.f);  // keep ties exact under sigmoid + bias
    HostTensor ids = host_tensor(DType::kI32, {n, c.top_k});
    HostTensor w = host_tensor(DType::kF32, {n, c.top_k});
    ops::RouteParams p;
    p.scoring = c.scoring; p.method = c.method; p.top_k = c.top_k; p.n_group = c.n_group;
    p.topk_group = c.topk_group; p.norm_topk_prob = c.norm; p.routed_scaling_factor = c.scaling;
    p.logits = logits.t; p.bias = noaux ? bias.t : Tensor{}; p.topk_ids = ids.t; p.topk_weights = w.t;
    MOEX_ASSERT_OK(cpu_->route(p));
    DeviceTensor dl = to_device(*gpu_, logits), db = to_device(*gpu_, bias);
    DeviceTensor dids = device_poisoned(*gpu_, DType::kI32, {n, c.top_k});
    DeviceTensor dw = device_poisoned(*gpu_, DType::kF32, {n, c.top_k});
    p.logits = dl.t; p.bias = noaux ? db.t : Tensor{}; p.topk_ids = dids.t; p.topk_weights = dw.t;
    MOEX_ASSERT_OK(gpu_->route(p));
    HostTensor gids = to_host(*gpu_, dids), gw = to_host(*gpu_, dw);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n * c.top_k; ++i) mismatches += gids.i32(i) != ids.i32(i);
    EXPECT_EQ(mismatches, 0) << "first row: gpu " << gids.i32(0) << " cpu " << ids.i32(0);
    EXPECT_LT(rel_l2(gw, w), 1e-5);
  }
};

TEST_F(RoutingTest, ModelConfigsMatchCpuExactly) {
  for (const RouteCase& c : kCases)
    for (const int64_t n : {1, 7, 300}) check(c, n, 0.f);
}

TEST_F(RoutingTest, TiesGoToTheLowerExpertId) {
  for (const RouteCase& c : kCases) check(c, 64, 0.5f);
}

TEST_F(RoutingTest, RejectsTooManyExperts) {
  DeviceTensor l = device_poisoned(*gpu_, DType::kF32, {2, 2000});
  DeviceTensor ids = device_poisoned(*gpu_, DType::kI32, {2, 2});
  DeviceTensor w = device_poisoned(*gpu_, DType::kF32, {2, 2});
  ops::RouteParams p;
  p.logits = l.t; p.topk_ids = ids.t; p.topk_weights = w.t; p.top_k = 2;
  const Status st = gpu_->route(p);
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("route"), std::string::npos);
}

}  // namespace
}  // namespace moex::test
