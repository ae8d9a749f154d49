#pragma once
#include "core/tensor.h"

namespace moex::ops {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, fp32 math.
// Rows may be strided; x and out may also be [tokens, heads, dim] with any token and head
// strides (the per-head q/k norm of Qwen3 on column slices of a fused q|k|v projection), where
// each (token, head) is a row. out may alias x.
struct RmsNormParams {
  Tensor x;       // [rows, dim] or [tokens, heads, dim]
  Tensor weight;  // [dim] any float dtype
  Tensor out;     // same shape as x
  float eps = 1e-6f;
};

}  // namespace moex::ops
