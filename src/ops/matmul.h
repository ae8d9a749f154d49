#pragma once
#include "core/tensor.h"

namespace moex::ops {

// out = alpha * x @ w^T (+ out if accumulate), fp32 accumulation in a fixed K order.
// 2-D: x [m, k], w [n, k] (nn.Linear layout), out [m, n].
// 3-D (batched, e.g. MLA's per-head absorption): x [b, m, k], w [b, n, k], out [b, m, n].
// x and out may be strided views; w rows are contiguous (stride 1 along k).
struct MatmulParams {
  Tensor x;    // [(b,) m, k] activation dtype
  Tensor w;    // [(b,) n, k] any float dtype
  Tensor out;  // [(b,) m, n] activation dtype or f32 (router logits)
  float alpha = 1.f;
  bool accumulate = false;
};

}  // namespace moex::ops
