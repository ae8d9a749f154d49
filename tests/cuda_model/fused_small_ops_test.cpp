// The fused small ops (ops/fused.h) in the engine: with them (the default) and without them
// (MOEX_FUSED_SMALL_OPS=0) the model computes the same values, so every logit of a prefill and of
// the decode steps after it is bit-identical, on the GPU (where the fused kernels replace ten
// small launches per GQA layer with three) and on the CPU reference (the op sequence itself).
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

// Logits of a 2-sequence batch: a prefill, then 4 greedy-free decode steps (fixed next tokens).
std::vector<float> trace(Engine& e) {
  const int64_t vocab = e.model().config().vocab_size;
  std::vector<Sequence> seqs(2);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 19 + 7 * i; ++j) seqs[size_t(i)].tokens.push_back(int32_t((j * 31 + i * 17 + 5) % vocab));
  std::vector<Sequence*> ptrs{&seqs[0], &seqs[1]};
  std::vector<float> logits, all;
  for (int step = 0; step < 5; ++step) {
    const Status st = e.step(ptrs, &logits);
    EXPECT_TRUE(st.is_ok()) << st.message();
    if (!st.is_ok()) break;
    all.insert(all.end(), logits.begin(), logits.end());
    for (auto& s : seqs) s.tokens.push_back(int32_t((s.tokens.back() * 7 + 3) % vocab));
  }
  for (auto& s : seqs) e.release(&s);
  return all;
}

class FusedSmallOps : public ::testing::TestWithParam<const char*> {};

TEST_P(FusedSmallOps, LogitsAreBitIdenticalWithAndWithoutFusion) {
  for (const char* device : {"cuda", "cpu"}) {
    SCOPED_TRACE(std::string(GetParam()) + " on " + device);
    // The knob is read when the model is built: unset = fused (the default), 0 = separate ops.
    auto fused = engine_under_knob(GetParam(), device, "MOEX_FUSED_SMALL_OPS", nullptr);
    if (!fused && std::string(device) == "cuda") {
      std::printf("no CUDA device (or moex built without CUDA): the GPU half of this test did not run\n");
      continue;
    }
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    auto separate = engine_under_knob(GetParam(), device, "MOEX_FUSED_SMALL_OPS", "0");
    ASSERT_TRUE(separate.has_value()) << separate.status().message();
    const std::vector<float> a = trace(**fused), b = trace(**separate);
    ASSERT_NO_FATAL_FAILURE(expect_same_logit_bits(a, b));
    std::printf("%s on %s: %zu logits compared\n", GetParam(), device, a.size());
  }
}

// Qwen3 (per-head q/k norm), Mixtral (none, sliding window), DeepSeek (residual adds + norms;
// with and without the q LoRA, V3's routing).
INSTANTIATE_TEST_SUITE_P(Fixtures, FusedSmallOps,
                         ::testing::Values("qwen3_moe", "qwen3_moe_bf16", "mixtral", "mixtral_swa", "deepseek_v2",
                                           "deepseek_v2_qlora", "deepseek_v3"));

}  // namespace
}  // namespace moex
