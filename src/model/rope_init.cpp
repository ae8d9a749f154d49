#include "model/rope_init.h"

#include <algorithm>
#include <cmath>

namespace moex {
namespace {

// 1 / base^(2i / dim) for i < dim / 2: torch evaluates the exponent and the power in fp32.
std::vector<float> default_inv_freq(double base, int64_t dim) {
  std::vector<float> inv(size_t(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = float(2 * i) / float(dim);
    inv[size_t(i)] = 1.0f / std::pow(float(base), exponent);
  }
  return inv;
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

// Dimension index at which a frequency completes `num_rotations` turns over the original context.
double find_correction_dim(double num_rotations, int64_t dim, double base, double max_pos) {
  return (double(dim) * std::log(max_pos / (num_rotations * 2.0 * M_PI))) / (2.0 * std::log(base));
}

}  // namespace

RopeTables compute_rope_tables(const RopeConfig& rope, int64_t rot_dim) {
  RopeTables t;
  if (!rope.yarn) {
    t.inv_freq = default_inv_freq(rope.theta, rot_dim);
    return t;
  }
  // YaRN (_compute_yarn_parameters): blend interpolated and extrapolated frequencies with a
  // linear ramp between the correction dims (truncated to integers, HF's default).
  const double factor = rope.factor;
  const double orig = double(rope.original_max_position_embeddings);
  const double beta_fast = rope.beta_fast != 0 ? rope.beta_fast : 32.0;
  const double beta_slow = rope.beta_slow != 0 ? rope.beta_slow : 1.0;
  // The cos/sin factor HF applies (explicit attention_factor, else the mscale ratio, else
  // mscale(factor, 1)), resolved once by the config parser.
  t.attn_scale = float(rope.attention_factor);
  double low = find_correction_dim(beta_fast, rot_dim, rope.theta, orig);
  double high = find_correction_dim(beta_slow, rot_dim, rope.theta, orig);
  if (rope.truncate) {  // HF's default; "truncate": false keeps the fractional range
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(rot_dim - 1));
  if (low == high) high += 0.001;  // HF: prevent a zero-width ramp
  const float ramp_min = float(low);
  const float ramp_den = float(high - low);
  t.inv_freq.resize(size_t(rot_dim / 2));
  for (size_t i = 0; i < t.inv_freq.size(); ++i) {
    // pos_freqs = base^(2i / dim) in fp32, then both inverses from it, as torch does.
    const float pos = std::pow(float(rope.theta), float(2 * int64_t(i)) / float(rot_dim));
    const float inv_extrapolation = 1.0f / pos;
    const float inv_interpolation = 1.0f / (float(factor) * pos);
    const float ramp = std::clamp((float(i) - ramp_min) / ramp_den, 0.0f, 1.0f);
    const float extrapolation_factor = 1.0f - ramp;
    t.inv_freq[i] = inv_interpolation * (1.0f - extrapolation_factor) + inv_extrapolation * extrapolation_factor;
  }
  return t;
}

double yarn_softmax_scale_factor(const RopeConfig& rope) {
  if (!rope.yarn || rope.mscale_all_dim == 0) return 1.0;
  const double m = yarn_get_mscale(rope.factor, rope.mscale_all_dim);
  return m * m;
}

}  // namespace moex
