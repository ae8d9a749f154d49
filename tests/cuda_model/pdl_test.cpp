// Programmatic dependent launch (kernels/common/pdl.cuh): the decode GEMMs prefetch their weights
// and wait while the kernel before them finishes. Only when blocks start changes, never what
// they compute: every logit of a prefill and of decode steps (eager and graph-replayed) must be
// bit-identical with MOEX_PDL=0 and with PDL on. A misplaced wait (a read or write of an
// activation before the previous kernel completed) would show up here as differing logits.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/engine_knobs.h"
#include "runtime/engine.h"

namespace moex {
namespace {

using test::cuda_engine_available;
using test::engine_under_knob;
using test::expect_same_logit_bits;

// Logits of a prefill of three sequences, 8 decode steps of all, then 5 of the last alone;
// MOEX_PDL=pdl for the whole trace (it is read at every launch), the model built under
// MOEX_CUDA_GRAPHS=graphs.
Expected<std::vector<float>> trace(const std::string& fixture, const char* pdl, const char* graphs) {
  setenv("MOEX_PDL", pdl, 1);
  auto engine = engine_under_knob(fixture, "cuda", "MOEX_CUDA_GRAPHS", graphs);
  std::vector<float> all;
  Status st = engine.status();
  if (engine) {
    Engine& e = **engine;
    const int64_t vocab = e.model().config().vocab_size;
    std::vector<Sequence> seqs(3);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 17 + 13 * i; ++j) seqs[size_t(i)].tokens.push_back(int32_t((j * 31 + i * 7 + 5) % vocab));
    std::vector<float> logits;
    auto run = [&](std::vector<Sequence*> ptrs, int steps) {
      for (int step = 0; step < steps && st.is_ok(); ++step) {
        st = e.step(ptrs, &logits);
        all.insert(all.end(), logits.begin(), logits.end());
        for (Sequence* s : ptrs) s->tokens.push_back(int32_t((s->tokens.back() * 3 + 2) % vocab));
      }
    };
    run({&seqs[0], &seqs[1], &seqs[2]}, 9);
    run({&seqs[2]}, 5);
  }
  unsetenv("MOEX_PDL");
  if (!st.is_ok()) return st;
  return all;
}

class PdlLogits : public ::testing::TestWithParam<const char*> {};

TEST_P(PdlLogits, BitIdenticalWithAndWithoutPdl) {
  for (const char* graphs : {"0", "1"}) {
    SCOPED_TRACE(std::string(GetParam()) + ", MOEX_CUDA_GRAPHS=" + graphs);
    if (!cuda_engine_available()) GTEST_SKIP() << "no CUDA device (or moex built without CUDA): not run";
    auto off = trace(GetParam(), "0", graphs);
    ASSERT_TRUE(off.has_value()) << off.status().message();
    auto on = trace(GetParam(), "1", graphs);
    ASSERT_TRUE(on.has_value()) << on.status().message();
    ASSERT_NO_FATAL_FAILURE(expect_same_logit_bits(*off, *on));
    std::printf("%s, graphs %s: %zu logits compared\n", GetParam(), graphs, off->size());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PdlLogits, ::testing::Values("qwen3_moe", "mixtral_swa", "deepseek_v3"));

}  // namespace
}  // namespace moex
