// Engine-level A/B tests of knobs that must not change a single logit (fused small ops, decode
// graphs, programmatic dependent launch): engines built from a test fixture under an environment
// knob, and the bitwise comparison of two logit traces of one scenario.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace moex::test {

inline std::string fixture_dir(const std::string& name) {
  return std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/" + name;
}

// An engine for `fixture` on `device` (pages of 16 tokens), built while the environment knob
// `name` is `value` (nullptr: unset). Models read such knobs when they are built, so the knob
// is unset again afterwards.
inline Expected<std::unique_ptr<Engine>> engine_under_knob(const std::string& fixture, const std::string& device,
                                                           const char* name, const char* value,
                                                           int max_context = 512) {
  if (value != nullptr) setenv(name, value, 1);
  else unsetenv(name);
  EngineOptions o;
  o.model_dir = fixture_dir(fixture);
  o.device = device;
  o.page_size = 16;
  o.max_context = max_context;
  auto e = Engine::create(o);
  unsetenv(name);
  return e;
}

// True when a CUDA engine can be made here (a device, and moex built with CUDA).
inline bool cuda_engine_available() {
  static const bool ok = [] {
    EngineOptions o;
    o.model_dir = fixture_dir("qwen3_moe");
    o.device = "cuda";
    return Engine::create(o).has_value();
  }();
  return ok;
}

// Two logit traces of one scenario: non-empty, of one size and equal bit for bit (the first
// differing logit is named). Call as ASSERT_NO_FATAL_FAILURE(expect_same_logit_bits(a, b)).
inline void expect_same_logit_bits(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_FALSE(a.empty());
  ASSERT_EQ(a.size(), b.size());
  size_t first_diff = a.size();
  for (size_t i = 0; i < a.size() && first_diff == a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) first_diff = i;
  EXPECT_EQ(first_diff, a.size()) << "first differing logit " << first_diff << ": " << a[first_diff] << " vs "
                                  << b[first_diff];
}

}  // namespace moex::test
