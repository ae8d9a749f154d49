// Engine::step_sample: a batch of sequences, each with its own sampler, sampled in one step.
// On the CPU backend it must equal step() + each Sampler. The CUDA counterpart lives in
// tests/cuda_model/engine_sampling_cuda_test.cpp (label gpu).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/engine_sampling_compare.h"

namespace moex {
namespace {

using sampling_test::compare;
using sampling_test::make_engine;

TEST(EngineSampling, CpuStepSampleEqualsStepPlusSampler) {
  auto engine = make_engine("cpu");
  ASSERT_TRUE(engine);
  int compared = 0, at_boundary = 0, differ = 0;
  compare(*engine, 6, &compared, &at_boundary, &differ);
  EXPECT_EQ(compared, 24);
  EXPECT_EQ(at_boundary + differ, 0);  // the same code on the same logits
}

TEST(EngineSampling, StepSampleRejectsBadParameters) {
  auto engine = make_engine("cpu");
  ASSERT_TRUE(engine);
  Sequence seq;
  seq.tokens = {1, 2, 3};
  SamplingParams p;
  p.temperature = 1.f;
  p.top_p = -0.5f;
  Sampler s(p);
  std::vector<int32_t> ids;
  const Status st = engine->step_sample({&seq}, {&s}, &ids);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("top_p"), std::string::npos) << st.message();
  EXPECT_EQ(engine->step_sample({&seq}, {}, &ids).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moex
