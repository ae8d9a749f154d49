// Engine::step_sample on a CUDA backend (skipped, with the reason, without one): the device
// sampler must pick what the host Sampler picks from the same step's logits, except where the
// draw lies within 1e-6 of a cumulative boundary.
#include <cstdio>

#include "runtime/engine_sampling_compare.h"

namespace moex {
namespace {

using sampling_test::compare;
using sampling_test::make_engine;

TEST(EngineSampling, CudaDeviceSamplerAgreesWithTheHostSampler) {
  auto engine = make_engine("cuda");
  if (!engine) GTEST_SKIP() << "no CUDA backend: device sampling in the engine not run";
  int compared = 0, at_boundary = 0, differ = 0;
  compare(*engine, 12, &compared, &at_boundary, &differ);
  std::printf("[engine sampling] compared %d, differ at a boundary %d, differ elsewhere %d\n", compared, at_boundary, differ);
  EXPECT_EQ(compared, 48);
  EXPECT_EQ(differ, 0);
  EXPECT_LE(at_boundary, 1);
}

}  // namespace
}  // namespace moex
