// The decode-graph path of ModelBase (MOEX_CUDA_GRAPHS=1) on the CPU reference, which cannot
// capture: each decode shape then runs eagerly on one recorded workspace, rewound every step
// (Workspace::rewind). Its logits must equal the plain path's bit for bit, across shape changes.
// The GPU half (capture and replay) is tests/cuda_model/step_graphs_test.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/engine_knobs.h"
#include "runtime/engine.h"

namespace moex {
namespace {

using test::engine_under_knob;

// Prefill of two sequences, 4 decode steps of both, 3 of the first alone.
std::vector<float> decode_trace(Engine& e) {
  const int64_t vocab = e.model().config().vocab_size;
  std::vector<Sequence> seqs(2);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 9 + 5 * i; ++j) seqs[size_t(i)].tokens.push_back(int32_t((j * 13 + i * 7 + 1) % vocab));
  std::vector<float> logits, all;
  auto run = [&](std::vector<Sequence*> ptrs, int steps) {
    for (int step = 0; step < steps; ++step) {
      const Status st = e.step(ptrs, &logits);
      ASSERT_TRUE(st.is_ok()) << st.message();
      all.insert(all.end(), logits.begin(), logits.end());
      for (Sequence* s : ptrs) s->tokens.push_back(int32_t((s->tokens.back() * 3 + 2) % vocab));
    }
  };
  run({&seqs[0], &seqs[1]}, 5);
  e.release(&seqs[1]);
  run({&seqs[0]}, 3);
  e.release(&seqs[0]);
  return all;
}

TEST(StepGraphsCpu, RecordedWorkspaceGivesTheSameLogits) {
  for (const char* fixture : {"qwen3_moe", "deepseek_v2"}) {
    SCOPED_TRACE(fixture);
    auto with = engine_under_knob(fixture, "cpu", "MOEX_CUDA_GRAPHS", "1", 256);
    ASSERT_TRUE(with.has_value()) << with.status().message();
    auto without = engine_under_knob(fixture, "cpu", "MOEX_CUDA_GRAPHS", "0", 256);
    ASSERT_TRUE(without.has_value()) << without.status().message();
    const std::vector<float> a = decode_trace(**with), b = decode_trace(**without);
    ASSERT_FALSE(a.empty());
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace moex
