#include <gtest/gtest.h>

#include <cmath>
#include <vector>

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
