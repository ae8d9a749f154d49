// Small ops: embedding lookup, strided copy/cast, residual add, SwiGLU.
#pragma once
#include "core/tensor.h"

namespace moex::ops {

struct EmbeddingParams {
  Tensor ids;    // [n] i32, each in [0, vocab)
  Tensor table;  // [vocab, hidden] any float dtype
  Tensor out;    // [n, hidden] activation dtype
};

// out = cast(src), elementwise, any float dtypes, any strides, same shape (up to 4 dims).
struct CopyParams {
  Tensor src;  // [...]
  Tensor dst;  // [...] same shape
};

// out = a + b_scale * b (fp32 math, one rounding to out's dtype). out may alias a or b.
struct AddParams {
  Tensor a;    // [rows, dim]
  Tensor b;    // [rows, dim]
  Tensor out;  // [rows, dim]
  float b_scale = 1.f;
};

// out[r, i] = silu(x[r, i]) * x[r, inter + i]: gate in the first half, up in the second.
struct SiluMulParams {
  Tensor x;    // [rows, 2 * inter]
  Tensor out;  // [rows, inter]
};

}  // namespace moex::ops
