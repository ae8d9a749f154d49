#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "runtime/page_pool.h"
#include "runtime/sampler.h"

namespace moex {
namespace {

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.f, 2.0f};
  Sampler s({});
  EXPECT_EQ(s.sample(logits.data(), 4), 1);
  EXPECT_EQ(argmax(logits.data(), 4), 1);
}

TEST(Sampler, SameSeedSameTokensOtherSeedDiffers) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(float(i));
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 7;
  Sampler a(p), b(p);
  p.seed = 8;
  Sampler c(p);
  int differ = 0;
  for (int i = 0; i < 64; ++i) {
    const int32_t x = a.sample(logits.data(), 50);
    EXPECT_EQ(x, b.sample(logits.data(), 50));
    differ += x != c.sample(logits.data(), 50);
  }
  EXPECT_GT(differ, 0);
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  // probabilities at T=1 ~ softmax([3, 2, 1, 0, ...]).
  std::vector<float> logits = {3.f, 2.f, 1.f, 0.f, -1.f, -2.f};
  SamplingParams p;
  p.temperature = 1.f;
  p.top_k = 2;
  Sampler top_k(p);
  for (int i = 0; i < 200; ++i) EXPECT_LT(top_k.sample(logits.data(), 6), 2);
  p.top_k = 0;
  p.top_p = 0.5f;  // p(0) = 0.636 >= 0.5: only token 0
  Sampler top_p(p);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(top_p.sample(logits.data(), 6), 0);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.f, std::log(3.f)};  // p = 0.25, 0.75
  SamplingParams p;
  p.temperature = 1.f;
  p.seed = 1;
  Sampler s(p);
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(logits.data(), 2);
  EXPECT_NEAR(double(ones) / n, 0.75, 0.015);
}

// The CPU sample op fed the raw draws of a Sampler's stream gives exactly the Sampler's tokens:
// greedy, temperature, top-k, top-p and combinations, many rows (one stream each), many steps.
TEST(Sampler, CpuSampleOpMatchesTheSamplerStepByStep) {
  const uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  SCOPED_TRACE("seed " + std::to_string(seed));
  SplitMix64 gen(seed);
  auto backend = make_cpu_backend(2);
  const int64_t rows = 24, vocab = 3000, steps = 6;
  std::vector<SamplingParams> params(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    SamplingParams& p = params[size_t(r)];
    const int mode = int(r % 6);  // greedy, temperature, top-k, top-p, both, both with k 1
    p.temperature = mode == 0 ? 0.f : float(0.3 + 1.5 * gen.uniform());
    p.top_k = mode == 2 || mode == 4 ? 1 + int(gen.next() % 200) : (mode == 5 ? 1 : 0);
    p.top_p = mode >= 3 ? float(0.5 + 0.49 * gen.uniform()) : 1.f;
    p.seed = gen.next();
  }
  std::vector<Sampler> host, device;  // same seeds: one samples, one hands out its draws
  for (const SamplingParams& p : params) {
    host.emplace_back(p);
    device.emplace_back(p);
  }
  const size_t n = static_cast<size_t>(rows);
  std::vector<float> logits(n * static_cast<size_t>(vocab)), temperature(n), top_p(n);
  std::vector<int32_t> top_k(n), ids(n);
  std::vector<int64_t> draws(n);
  for (int64_t r = 0; r < rows; ++r) {
    temperature[size_t(r)] = params[size_t(r)].temperature;
    top_k[size_t(r)] = params[size_t(r)].top_k;
    top_p[size_t(r)] = params[size_t(r)].top_p;
  }
  ops::SampleParams op;
  op.logits = Tensor::make(logits.data(), DType::kF32, {rows, vocab});
  op.temperature = Tensor::make(temperature.data(), DType::kF32, {rows});
  op.top_k = Tensor::make(top_k.data(), DType::kI32, {rows});
  op.top_p = Tensor::make(top_p.data(), DType::kF32, {rows});
  op.uniform = Tensor::make(draws.data(), DType::kI64, {rows});
  op.out_ids = Tensor::make(ids.data(), DType::kI32, {rows});
  int sampled_differ = 0;
  for (int64_t step = 0; step < steps; ++step) {
    for (float& l : logits) l = float((gen.uniform() - 0.5) * 12.0);
    if (step == 1) std::fill(logits.begin(), logits.end(), 0.5f);  // all tied
    for (int64_t r = 0; r < rows; ++r) draws[size_t(r)] = device[size_t(r)].greedy() ? 0 : int64_t(device[size_t(r)].next_draw());
    const Status st = backend->sample(op);
    ASSERT_TRUE(st.is_ok()) << st.message();
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t want = host[size_t(r)].sample(logits.data() + r * vocab, vocab);
      EXPECT_EQ(ids[size_t(r)], want) << "step " << step << " row " << r;
      sampled_differ += !host[size_t(r)].greedy() && want != argmax(logits.data() + r * vocab, vocab);
    }
  }
  EXPECT_GT(sampled_differ, 0);  // the sampled rows really sampled
}

TEST(Sampler, ValidateRejectsBadParameters) {
  SamplingParams p;
  EXPECT_TRUE(validate(p).is_ok());
  p.top_k = -1;
  EXPECT_EQ(validate(p).code(), StatusCode::kInvalidArgument);
  p = {};
  p.top_p = 0.f;
  EXPECT_EQ(validate(p).code(), StatusCode::kInvalidArgument);
  p = {};
  p.temperature = std::nanf("");
  EXPECT_NE(validate(p).message().find("temperature"), std::string::npos);
}

TEST(PagePool, ReservesReleasesAndRefusesWhenFull) {
  PagePool pool(4, 16);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.reserve(&a, 17).is_ok());  // 2 pages
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(pool.reserve(&a, 32).is_ok());  // still 2
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(pool.reserve(&b, 32).is_ok());
  EXPECT_EQ(pool.free_pages(), 0);
  const Status full = pool.reserve(&b, 33);
  EXPECT_EQ(full.code(), StatusCode::kOutOfMemory);
  EXPECT_NE(full.message().find("KV cache full"), std::string::npos);
  pool.release(&a);
  EXPECT_EQ(pool.free_pages(), 2);
  EXPECT_TRUE(a.empty());
  ASSERT_TRUE(pool.reserve(&b, 64).is_ok());
  EXPECT_EQ(b.size(), 4u);
}

}  // namespace
}  // namespace moex
