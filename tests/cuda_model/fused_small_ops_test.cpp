// The fused small ops (ops/fused.h) in the engine: with them (the default) and without them
// (MOEX_FUSED_SMALL_OPS=0) the model computes the same values, so every logit of a prefill and of
// the decode steps after it is bit-identical, on the GPU (where the fused kernels replace ten
// small launches per GQA layer with three) and on the CPU reference (the op sequence itself).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace moex {
namespace {

std::string fixture_dir(const std::string& name) { return std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/" + name; }

// The model reads the knob when it is built, so the engine is created under it.
Expected<std::unique_ptr<Engine>> make_engine(const std::string& fixture, const std::string& device, bool fused) {
  if (fused) {
    unsetenv("MOEX_FUSED_SMALL_OPS");
  } else {
    setenv("MOEX_FUSED_SMALL_OPS", "0", 1);
  }
  EngineOptions o;
  o.model_dir = fixture_dir(fixture);
  o.device = device;
  o.page_size = 16;
  o.max_context = 512;
  auto e = Engine::create(o);
  unsetenv("MOEX_FUSED_SMALL_OPS");
  return e;
}

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
    auto fused = make_engine(GetParam(), device, true);
    if (!fused && std::string(device) == "cuda") {
      std::printf("no CUDA device (or moex built without CUDA): the GPU half of this test did not run\n");
      continue;
    }
    ASSERT_TRUE(fused.has_value()) << fused.status().message();
    auto separate = make_engine(GetParam(), device, false);
    ASSERT_TRUE(separate.has_value()) << separate.status().message();
    const std::vector<float> a = trace(**fused), b = trace(**separate);
    ASSERT_FALSE(a.empty());
    ASSERT_EQ(a.size(), b.size());
    size_t first_diff = a.size();
    for (size_t i = 0; i < a.size() && first_diff == a.size(); ++i)
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) first_diff = i;
    EXPECT_EQ(first_diff, a.size()) << "first differing logit " << first_diff << ": " << a[first_diff] << " vs "
                                    << b[first_diff];
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
