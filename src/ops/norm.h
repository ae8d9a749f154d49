#pragma once
#include "core/tensor.h"

namespace moex::ops {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, fp32 math.
// Rows may be strided (the per-head q/k norm of Qwen3 views [tokens * heads, head_dim]);
// out may alias x.
struct RmsNormParams {
  Tensor x;       // [rows, dim]
  Tensor weight;  // [dim] any float dtype
  Tensor out;     // [rows, dim]
  float eps = 1e-6f;
};

}  // namespace moex::ops
