// RoPE frequencies as Hugging Face computes them at model init (modeling_rope_utils.py), in fp32
// as torch does, so positions rotate by the same angles as the reference.
#pragma once
#include <vector>

#include "model/config/config.h"

namespace moex {

struct RopeTables {
  std::vector<float> inv_freq;  // [rot_dim / 2]
  float attn_scale = 1.f;       // multiplies cos and sin (YaRN's attention_factor; 1 otherwise)
};

// rot_dim: the rotated width of a head (head_dim for GQA, qk_rope_head_dim for MLA).
RopeTables compute_rope_tables(const RopeConfig& rope, int64_t rot_dim);

// DeepSeek's softmax-scale correction under YaRN: mscale(factor, mscale_all_dim)^2 when
// mscale_all_dim is set, else 1 (HF's yarn_apply_mscale).
double yarn_softmax_scale_factor(const RopeConfig& rope);

}  // namespace moex
