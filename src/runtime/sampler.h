// Token sampling on the host: greedy, or seeded temperature / top-k / top-p (applied in that
// order, as HF generate does). The random stream is our own (SplitMix64, core/random.h), so a
// seed gives the same tokens on every platform and standard library.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/cpu/sampling.h"
#include "core/random.h"
#include "core/status.h"

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
  // logits: [vocab] fp32. Takes one draw from the stream unless greedy.
  int32_t sample(const float* logits, int64_t vocab);
  double next_uniform();  // in [0, 1): unit_double(next_draw())
  // The raw 64-bit draw sample() would take next; a device sampler is handed these bits
  // (ops::SampleParams::uniform as i64) so it sees exactly this stream's uniform.
  uint64_t next_draw() { return rng_.next(); }
  bool greedy() const { return params_.temperature <= 0.f; }
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  SplitMix64 rng_;
  cpu::SampleRowScratch scratch_;
};

// "sampling: <field> ..." when a parameter is outside its domain (NaN temperature, top_k < 0,
// top_p <= 0 or NaN).
Status validate(const SamplingParams& params);

int32_t argmax(const float* logits, int64_t vocab);

}  // namespace moex
