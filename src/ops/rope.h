#pragma once
#include "core/tensor.h"

namespace moex::ops {

// Rotary position embedding, in place, on the first rot_dim = 2 * inv_freq.size(0) features of
// each head. angle(p, i) = float(p) * inv_freq[i] (fp32), then cos/sin scaled by attn_scale
// (YaRN's mscale; 1 otherwise).
//   interleaved = false (NeoX / HF rotate_half): pairs (i, i + rot_dim/2).
//   interleaved = true  (GPT-J / DeepSeek):      pairs (2i, 2i + 1).
struct RopeParams {
  Tensor x;          // [n, heads, head_dim] strided view, head_dim >= rot_dim
  Tensor positions;  // [n] i32
  Tensor inv_freq;   // [rot_dim / 2] f32
  float attn_scale = 1.f;
  bool interleaved = false;
};

}  // namespace moex::ops
