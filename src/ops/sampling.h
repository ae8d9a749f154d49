// Token sampling on the device: one token id per row of logits, so a decode step copies B ids
// back instead of B x vocab logits. Same rule as the host Sampler (runtime/sampler.h): greedy
// (argmax, ties to the lower id) when temperature <= 0; otherwise candidates sorted by logit
// (ties by id), top-k, softmax at the temperature, top-p (smallest prefix reaching top_p, at least
// one token), then the first candidate whose cumulative probability exceeds uniform * total.
// The random draw comes from the caller (the host's per-sequence SplitMix64 stream), so a seed
// gives the same tokens on every backend up to rounding at a cumulative-probability boundary.
#pragma once
#include "core/tensor.h"

namespace moex::ops {

struct SampleParams {
  Tensor logits;       // [B, vocab] f32 or bf16 (strided rows)
  Tensor temperature;  // [B] f32; <= 0 = greedy
  Tensor top_k;        // [B] i32; 0 = off
  Tensor top_p;        // [B] f32; >= 1 = off
  Tensor uniform;      // [B] f32 in [0, 1): this step's random draw per row (unused when greedy),
                       // or [B] i64: raw 64-bit SplitMix64 outputs, mapped to [0, 1) by
                       // unit_double (core/random.h) exactly as the host Sampler maps its draw
  Tensor out_ids;      // [B] i32
};
// Invalid row values (NaN temperature, top_k < 0, top_p <= 0 or NaN, a sampled row's f32
// uniform outside [0, 1)): the CPU backend returns invalid_argument naming the row; a device
// backend cannot read them without a host sync, so it writes id -1 for that row instead.

}  // namespace moex::ops
