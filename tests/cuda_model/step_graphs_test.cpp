// Decode steps through captured graphs (MOEX_CUDA_GRAPHS=1, ModelBase::forward_graph): the first
// decode step of a shape runs eagerly and records its workspace, the second is captured and
// replayed, later ones replay. Every logit must be bit-identical to the eager engine's, across
// shape changes (two sequences, then one). On the CPU the backend refuses to capture, so the
// same test checks the workspace record / rewind path there.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/engine_knobs.h"
#include "runtime/engine.h"

namespace moex {
namespace {

using test::engine_under_knob;
using test::expect_same_logit_bits;

// Logits of a prefill of two sequences, 6 decode steps of both, 4 decode steps of the second
// alone, then a 400-token prefill of a third sequence (it grows the backend's scratch, which the
// second sequence's captured graph addressed: that graph must be captured again, not replayed)
// and 3 more decode steps of the second alone (fixed next tokens).
std::vector<float> trace(Engine& e) {
  const int64_t vocab = e.model().config().vocab_size;
  std::vector<Sequence> seqs(3);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 21 + 9 * i; ++j) seqs[size_t(i)].tokens.push_back(int32_t((j * 37 + i * 11 + 3) % vocab));
  for (int j = 0; j < 400; ++j) seqs[2].tokens.push_back(int32_t((j * 13 + 7) % vocab));
  std::vector<float> logits, all;
  auto run = [&](std::vector<Sequence*> ptrs, int steps) {
    for (int step = 0; step < steps; ++step) {
      const Status st = e.step(ptrs, &logits);
      EXPECT_TRUE(st.is_ok()) << st.message();
      if (!st.is_ok()) return;
      all.insert(all.end(), logits.begin(), logits.end());
      for (Sequence* s : ptrs) s->tokens.push_back(int32_t((s->tokens.back() * 5 + 1) % vocab));
    }
  };
  run({&seqs[0], &seqs[1]}, 7);
  e.release(&seqs[0]);
  run({&seqs[1]}, 4);
  run({&seqs[2]}, 1);
  run({&seqs[1]}, 3);
  e.release(&seqs[1]);
  e.release(&seqs[2]);
  return all;
}

class StepGraphs : public ::testing::TestWithParam<const char*> {};

TEST_P(StepGraphs, DecodeLogitsAreBitIdenticalToEagerSteps) {
  for (const char* device : {"cuda", "cpu"}) {
    SCOPED_TRACE(std::string(GetParam()) + " on " + device);
    // The knob is read when the model is built.
    auto graphs = engine_under_knob(GetParam(), device, "MOEX_CUDA_GRAPHS", "1");
    if (!graphs && std::string(device) == "cuda") {
      std::printf("no CUDA device (or moex built without CUDA): the GPU half of this test did not run\n");
      continue;
    }
    ASSERT_TRUE(graphs.has_value()) << graphs.status().message();
    auto eager = engine_under_knob(GetParam(), device, "MOEX_CUDA_GRAPHS", "0");
    ASSERT_TRUE(eager.has_value()) << eager.status().message();
    const std::vector<float> a = trace(**graphs), b = trace(**eager);
    ASSERT_NO_FATAL_FAILURE(expect_same_logit_bits(a, b));
    std::printf("%s on %s: %zu logits compared\n", GetParam(), device, a.size());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StepGraphs, ::testing::Values("qwen3_moe", "mixtral_swa", "deepseek_v3"));

}  // namespace
}  // namespace moex
