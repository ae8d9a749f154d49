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

// out[i] = dtype(float((2 u_i - 1) * half_width)), u_i = unit_double(splitmix64(stream + i))
// (core/random.h), i the flat index, one rounding to out's dtype: the seeded random weights of
// `--random-weights`, generated where they live and bit-identical on every backend (and in
// tools/hf_random_parity.py).
struct RandomUniformParams {
  Tensor out;        // [n] contiguous, f32 / bf16 / f16
  uint64_t stream;   // e.g. splitmix64(seed ^ fnv1a(tensor name))
  float half_width;  // values in [-half_width, half_width)
};

}  // namespace moex::ops
