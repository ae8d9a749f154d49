#include "runtime/sampler.h"

#include <cmath>
#include <string>

namespace moex {

int32_t argmax(const float* logits, int64_t vocab) { return cpu::argmax_row(logits, vocab); }

Status validate(const SamplingParams& params) {
  if (std::isnan(params.temperature)) return invalid_argument("sampling: temperature is NaN");
  if (params.top_k < 0) return invalid_argument("sampling: top_k must be >= 0, got " + std::to_string(params.top_k));
  if (!(params.top_p > 0.f)) return invalid_argument("sampling: top_p must be > 0");
  return Status::ok();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed ^ 0x9e3779b97f4a7c15ull) {}

double Sampler::next_uniform() { return unit_double(next_draw()); }

// The per-row rule lives in backend/cpu/sampling.cpp so the CPU sample op shares it exactly.
int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (greedy()) return argmax(logits, vocab);
  const double u = next_uniform();
  return cpu::sample_row(logits, vocab, params_.temperature, params_.top_k, params_.top_p, u, &scratch_);
}

}  // namespace moex
