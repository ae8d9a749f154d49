// Token sampling on the host: greedy, or seeded temperature / top-k / top-p (applied in that
// order, as HF generate does). The random stream is our own (SplitMix64, core/random.h), so a
// seed gives the same tokens on every platform and standard library.
#pragma once
#include <cstdint>
#include <vector>

#include "core/random.h"

namespace moex {

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy (argmax, ties to the lower id)
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: [vocab] fp32
  int32_t sample(const float* logits, int64_t vocab);
  double next_uniform();  // in [0, 1)

 private:
  SamplingParams params_;
  SplitMix64 rng_;
  std::vector<int32_t> order_;   // scratch: candidate ids
  std::vector<double> probs_;    // scratch
};

int32_t argmax(const float* logits, int64_t vocab);

}  // namespace moex
