#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moex {

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
  }
  return int32_t(best);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed ^ 0x9e3779b97f4a7c15ull) {}

double Sampler::next_uniform() { return rng_.uniform(); }

int32_t Sampler::sample(const float* logits, int64_t vocab) {
  if (params_.temperature <= 0.f) return argmax(logits, vocab);

  // Candidates sorted by logit, descending; equal logits keep id order (stable).
  order_.resize(size_t(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  int64_t keep = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    keep = params_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
  } else {
    std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }

  // Softmax over the kept candidates at this temperature (fp64 for a stable cumulative sum).
  probs_.resize(size_t(keep));
  const double inv_t = 1.0 / double(params_.temperature);
  const double max_logit = double(logits[order_[0]]);
  double total = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    probs_[i] = std::exp((double(logits[order_[i]]) - max_logit) * inv_t);
    total += probs_[i];
  }
  // top-p: the smallest prefix whose probability reaches top_p (at least one token).
  if (params_.top_p < 1.f) {
    double cumulative = 0.0;
    int64_t cut = keep;
    for (int64_t i = 0; i < keep; ++i) {
      cumulative += probs_[i] / total;
      if (cumulative >= double(params_.top_p)) { cut = i + 1; break; }
    }
    keep = cut;
    total = 0.0;
    for (int64_t i = 0; i < keep; ++i) total += probs_[i];
  }
  const double r = next_uniform() * total;
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += probs_[i];
    if (r < acc) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace moex
