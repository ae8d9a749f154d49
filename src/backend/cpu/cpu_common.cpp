#include "backend/cpu/cpu_common.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

// Runtime dispatch between an AVX2 and a baseline build of the hot loops. Neither enables FMA,
// and every loop keeps the per-lane operation order of the source, so the two clones return
// bit-identical results (tests/cpu_ops checks the public ops, which run whichever clone the
// machine picks).
#if defined(__GNUC__) && !defined(__clang__)
// The vector helpers below are always inlined; the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
// MOEX_CPU_NO_CLONES builds the baseline loops only (used to check that both clones agree).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MOEX_CPU_NO_CLONES)
#define MOEX_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOEX_CLONES
#endif

namespace moex::cpu {

// ---------------------------------------------------------------- checks

std::string shape_of(const Tensor& t) { return t.shape_string(); }

Status check_tensor(const char* op, const char* name, const Tensor& t, int ndim) {
  if (t.device != DeviceType::kCpu) return invalid_argument(std::string(op) + ": " + name + " is not on the CPU");
  if (t.ndim != ndim)
    return invalid_argument(std::string(op) + ": " + name + " must have " + std::to_string(ndim) + " dims, got " +
                            shape_of(t));
  for (int d = 0; d < ndim; ++d)
    if (t.shape[d] < 0) return invalid_argument(std::string(op) + ": " + name + " has a negative dim " + shape_of(t));
  if (t.data == nullptr && t.numel() > 0) return invalid_argument(std::string(op) + ": " + name + " is null");
  return Status::ok();
}

Status check_float(const char* op, const char* name, const Tensor& t) {
  if (!dtype_is_float(t.dtype))
    return invalid_argument(std::string(op) + ": " + name + " must be a float dtype, got " + shape_of(t));
  return Status::ok();
}

Status check_output(const char* op, const char* name, const Tensor& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16)
    return invalid_argument(std::string(op) + ": " + name + " must be f32, bf16 or f16, got " + shape_of(t));
  return Status::ok();
}

Status check_i32(const char* op, const char* name, const Tensor& t) {
  if (t.dtype != DType::kI32) return invalid_argument(std::string(op) + ": " + name + " must be i32, got " + shape_of(t));
  return Status::ok();
}

Status check_dim(const char* op, const char* name, const Tensor& t, int d, int64_t expected) {
  if (t.shape[d] != expected)
    return invalid_argument(std::string(op) + ": " + name + " dim " + std::to_string(d) + " must be " +
                            std::to_string(expected) + ", got " + shape_of(t));
  return Status::ok();
}

Status check_inner_contiguous(const char* op, const char* name, const Tensor& t) {
  if (t.ndim > 0 && t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
    return invalid_argument(std::string(op) + ": " + name + " must have stride 1 in its last dim " + shape_of(t));
  return Status::ok();
}

// ---------------------------------------------------------------- reductions

float dot_tree(const float* l) {
  // The butterfly a 16-lane shuffle-xor reduction performs (offsets 8, 4, 2, 1).
  float s[8], t[4];
  for (int j = 0; j < 8; ++j) s[j] = l[j] + l[j + 8];
  for (int j = 0; j < 4; ++j) t[j] = s[j] + s[j + 4];
  const float u0 = t[0] + t[2];
  const float u1 = t[1] + t[3];
  return u0 + u1;
}

namespace {

inline float bf16_bits_to_f32(uint16_t h) {
  const uint32_t b = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

template <class W>
[[gnu::always_inline]] inline float cvt(W v) {
  if constexpr (sizeof(W) == 2) return bf16_bits_to_f32(v);
  else return v;
}

// 8 floats as one value: a ymm register in the AVX2 clone, two xmm in the baseline one. The
// arithmetic is per lane, so both clones do the same IEEE operations.
typedef float V8f __attribute__((vector_size(32)));
typedef uint32_t V8u __attribute__((vector_size(32)));
typedef uint16_t V8h __attribute__((vector_size(16)));

[[gnu::always_inline]] inline V8f load8(const float* p) {
  V8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline V8f load8(const uint16_t* p) {  // 8 bf16 -> fp32
  V8h h;
  std::memcpy(&h, p, sizeof(h));
  const V8u u = __builtin_convertvector(h, V8u) << 16;
  V8f f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
[[gnu::always_inline]] inline void store8(float* p, V8f v) { std::memcpy(p, &v, sizeof(v)); }

// acc[r][i % 16] += x[r][i] * w[i] for i in [i0, i1), i0 a multiple of 16, increasing i.
// Lanes 0-7 live in lo[r], lanes 8-15 in hi[r].
template <class W, int R>
[[gnu::always_inline]] inline void lanes_kernel(const float* const* x, const W* w, int64_t i0, int64_t i1,
                                                float (*acc)[kLanes]) {
  V8f lo[R], hi[R];
  const float* xr[R];
  for (int r = 0; r < R; ++r) {
    lo[r] = load8(acc[r]);
    hi[r] = load8(acc[r] + 8);
    xr[r] = x[r];
  }
  int64_t i = i0;
  for (; i + kLanes <= i1; i += kLanes) {
    const V8f w0 = load8(w + i), w1 = load8(w + i + 8);
    for (int r = 0; r < R; ++r) {
      lo[r] += load8(xr[r] + i) * w0;
      hi[r] += load8(xr[r] + i + 8) * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store8(acc[r], lo[r]);
    store8(acc[r] + 8, hi[r]);
  }
  for (int j = 0; i + j < i1; ++j) {
    const float wv = cvt(w[i + j]);
    for (int r = 0; r < R; ++r) acc[r][j] += x[r][i + j] * wv;
  }
}

MOEX_CLONES void lanes_f32(const float* const* x, int rows, const float* w, int64_t i0, int64_t i1,
                           float (*acc)[kLanes]) {
  switch (rows) {
    case 1: lanes_kernel<float, 1>(x, w, i0, i1, acc); break;
    case 2: lanes_kernel<float, 2>(x, w, i0, i1, acc); break;
    case 3: lanes_kernel<float, 3>(x, w, i0, i1, acc); break;
    default: lanes_kernel<float, 4>(x, w, i0, i1, acc); break;
  }
}

MOEX_CLONES void lanes_bf16(const float* const* x, int rows, const uint16_t* w, int64_t i0, int64_t i1,
                            float (*acc)[kLanes]) {
  switch (rows) {
    case 1: lanes_kernel<uint16_t, 1>(x, w, i0, i1, acc); break;
    case 2: lanes_kernel<uint16_t, 2>(x, w, i0, i1, acc); break;
    case 3: lanes_kernel<uint16_t, 3>(x, w, i0, i1, acc); break;
    default: lanes_kernel<uint16_t, 4>(x, w, i0, i1, acc); break;
  }
}

MOEX_CLONES void squares_lanes(const float* a, int64_t k, float* acc) {
  float s[1][kLanes] = {};
  lanes_kernel<float, 1>(&a, a, 0, k, s);
  for (int j = 0; j < kLanes; ++j) acc[j] = s[0][j];
}

}  // namespace

const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = f16_to_f32(uint16_t(h));
    return t;
  }();
  return table.data();
}

const float* f8_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(256);
    for (uint32_t v = 0; v < 256; ++v) t[v] = f8e4m3_to_f32(uint8_t(v));
    return t;
  }();
  return table.data();
}

float dot_f32(const float* a, const float* b, int64_t k) {
  float acc[1][kLanes] = {};
  lanes_f32(&a, 1, b, 0, k, acc);
  return dot_tree(acc[0]);
}

float sum_squares_f32(const float* a, int64_t k) {
  float acc[kLanes];
  squares_lanes(a, k, acc);
  return dot_tree(acc);
}

// ---------------------------------------------------------------- conversions

void load_row(const void* p, DType t, int64_t stride, int64_t n, float* dst) {
  switch (t) {
    case DType::kF32: {
      const float* s = static_cast<const float*>(p);
      if (stride == 1) std::memcpy(dst, s, size_t(n) * 4);
      else for (int64_t i = 0; i < n; ++i) dst[i] = s[i * stride];
      break;
    }
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_f32(s[i * stride]);
      break;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(p);
      const float* lut = f16_table();
      for (int64_t i = 0; i < n; ++i) dst[i] = lut[s[i * stride]];
      break;
    }
    case DType::kF8E4M3: {
      const uint8_t* s = static_cast<const uint8_t*>(p);
      const float* lut = f8_table();
      for (int64_t i = 0; i < n; ++i) dst[i] = lut[s[i * stride]];
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) dst[i] = 0.f;
      break;
  }
}

void store_row(void* p, DType t, int64_t stride, int64_t n, const float* src) {
  switch (t) {
    case DType::kF32: {
      float* d = static_cast<float*>(p);
      for (int64_t i = 0; i < n; ++i) d[i * stride] = src[i];
      break;
    }
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(p);
      for (int64_t i = 0; i < n; ++i) d[i * stride] = f32_to_bf16(src[i]);
      break;
    }
    default:
      for (int64_t i = 0; i < n; ++i) store_from_f32(p, t, size_t(i * stride), src[i]);
      break;
  }
}

void load_rows(const Tensor& t, int64_t rows, int64_t cols, int64_t row_stride, F32Rows* out, const Ctx& ctx) {
  out->row.resize(size_t(rows));
  const int64_t inner = t.ndim > 0 ? t.stride[t.ndim - 1] : 1;
  if (t.dtype == DType::kF32 && (inner == 1 || cols <= 1)) {
    for (int64_t r = 0; r < rows; ++r) out->row[r] = t.ptr<const float>() + r * row_stride;
    return;
  }
  out->storage.resize(size_t(rows * cols));
  const size_t es = dtype_size(t.dtype);
  const char* base = static_cast<const char*>(t.data);
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r)
    load_row(base + r * row_stride * int64_t(es), t.dtype, inner, cols, out->storage.data() + r * cols);
  for (int64_t r = 0; r < rows; ++r) out->row[r] = out->storage.data() + r * cols;
}

// ---------------------------------------------------------------- gemm

void gemm_cols(const float* const* x, int64_t m, const void* w, DType wt, int64_t row_stride, int64_t k,
               int64_t c0, int64_t c1, float* out, int64_t out_stride, float* scratch) {
  // Rows of x in chunks of 16 keep the chunk in L1/L2 while the weight rows [c0, c1) stream
  // through; within a chunk, 4 x rows share each converted weight element.
  constexpr int64_t kRowChunk = 16;
  // f16 / fp8 weights are converted to fp32 in scratch in pieces whose start is a multiple of
  // 16, so every element keeps lane i % 16.
  const int64_t piece = kScratchFloats;  // a multiple of 16
  const size_t es = dtype_size(wt);
  for (int64_t m0 = 0; m0 < m; m0 += kRowChunk) {
    const int64_t m1 = std::min(m, m0 + kRowChunk);
    for (int64_t c = c0; c < c1; ++c) {
      const char* wrow = static_cast<const char*>(w) + c * row_stride * int64_t(es);
      for (int64_t r = m0; r < m1; r += 4) {
        const int rows = int(std::min<int64_t>(4, m1 - r));
        float acc[4][kLanes] = {};
        if (wt == DType::kF32) {
          lanes_f32(x + r, rows, reinterpret_cast<const float*>(wrow), 0, k, acc);
        } else if (wt == DType::kBF16) {
          lanes_bf16(x + r, rows, reinterpret_cast<const uint16_t*>(wrow), 0, k, acc);
        } else {
          for (int64_t i0 = 0; i0 < k; i0 += piece) {
            const int64_t i1 = std::min(k, i0 + piece);
            load_row(wrow + i0 * int64_t(es), wt, 1, i1 - i0, scratch);
            // Pieces start at multiples of 16: local index % 16 == global index % 16.
            const float* xs[4];
            for (int q = 0; q < rows; ++q) xs[q] = x[r + q] + i0;
            lanes_f32(xs, rows, scratch, 0, i1 - i0, acc);
          }
        }
        for (int q = 0; q < rows; ++q) out[(r + q) * out_stride + (c - c0)] = dot_tree(acc[q]);
      }
    }
  }
}

}  // namespace moex::cpu
