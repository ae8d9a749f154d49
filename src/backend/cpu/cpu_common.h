// Shared helpers of the CPU reference backend: parameter checks, row loads/stores with
// conversion to fp32, and the one dot product every reduction over features uses.
//
// Reduction order (the determinism contract of this backend): a dot product or sum of squares
// over K elements keeps kLanes = 16 partial sums; element i goes to lane i % 16, in increasing
// i. The lanes are then combined in a fixed binary tree (dot_tree below). No reduction is ever
// split across threads, and blocking over rows/columns never changes which lane an element goes
// to, so a result does not depend on the thread count, the batch, or which function clone
// (AVX2 or baseline) runs. No FMA is used (neither clone enables it), so the clones compute
// the identical sequence of IEEE operations per lane.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
// Contraction of a * b + c into one FMA would make results depend on the instruction set the
// build targets (g++ contracts by default whenever FMA is enabled, e.g. -march=native). Every
// CPU backend file includes this header first, so all of them compute plain mul-then-add.
#pragma GCC optimize("fp-contract=off")
#endif
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace moex::cpu {

inline constexpr int kLanes = 16;

struct Ctx {
  int threads = 1;  // OpenMP threads for parallel loops
};

// ---- checks: each returns invalid_argument("<op>: <tensor> ...") on failure ----
Status check_tensor(const char* op, const char* name, const Tensor& t, int ndim);
Status check_float(const char* op, const char* name, const Tensor& t);   // f32/bf16/f16/f8
Status check_output(const char* op, const char* name, const Tensor& t);  // f32/bf16/f16
Status check_i32(const char* op, const char* name, const Tensor& t);
Status check_dim(const char* op, const char* name, const Tensor& t, int d, int64_t expected);
// Innermost stride must be 1 (rows may be strided).
Status check_inner_contiguous(const char* op, const char* name, const Tensor& t);
std::string shape_of(const Tensor& t);

// Combines 16 lane sums in a fixed tree: ((l0+l8)+(l4+l12)) + ((l2+l10)+(l6+l14)) + odd lanes
// likewise; written out in cpu_common.cpp, identical for every caller.
float dot_tree(const float* lanes);  // [kLanes]

// sum_i a[i] * b[i] in the lane order described above.
float dot_f32(const float* a, const float* b, int64_t k);  // a [k], b [k]
// sum_i a[i]^2, same order.
float sum_squares_f32(const float* a, int64_t k);  // a [k]

// fp32 values of every f16 / fp8 e4m3 bit pattern (built on first use; the backend builds them
// when it is created, outside any parallel region).
const float* f16_table();  // [65536]
const float* f8_table();   // [256]

// Converts n elements starting at p (element stride `stride`) of dtype t to fp32.
void load_row(const void* p, DType t, int64_t stride, int64_t n, float* dst);  // dst [n]
// Stores n fp32 values (rounding like the GPU) to p with element stride `stride`.
void store_row(void* p, DType t, int64_t stride, int64_t n, const float* src);  // src [n]

// Rows of a float tensor viewed as [rows, cols] (leading dims flattened by the caller),
// converted once to a contiguous fp32 copy. f32 contiguous rows are used in place.
struct F32Rows {
  std::vector<float> storage;
  std::vector<const float*> row;  // [rows]
};
void load_rows(const Tensor& t, int64_t rows, int64_t cols, int64_t row_stride, F32Rows* out, const Ctx& ctx);

// Element (i) of an i32 tensor with stride.
inline int32_t i32_at(const Tensor& t, int64_t i) { return t.ptr<const int32_t>()[i * t.stride[0]]; }

// Weight row access for matmul-like kernels: w is [rows, k] with contiguous rows of `row_stride`
// elements. For each output column c in [c0, c1) and each x row r in [0, m):
//   out[r * out_stride + c] = dot(x[r], w[c])   (fp32, lane order above)
// `scratch` must hold kScratchFloats floats (per thread).
inline constexpr int64_t kScratchFloats = 4096;
void gemm_cols(const float* const* x, int64_t m, const void* w, DType wt, int64_t row_stride, int64_t k,
               int64_t c0, int64_t c1, float* out, int64_t out_stride, float* scratch);

// silu(g) = g / (1 + exp(-g)) in fp32 (expf from libm).
// Runs f(i, thread) for i in [0, n) over ctx.threads OpenMP threads (serially when the work,
// n * cost_per_item, is too small to pay for waking threads). f must not throw: scratch is
// allocated by the caller before, one slice per thread.
template <class F>
void parallel_for(const Ctx& ctx, int64_t n, int64_t cost_per_item, F&& f) {
  const int threads = ctx.threads < 1 ? 1 : ctx.threads;
  if (threads == 1 || n <= 1 || n * cost_per_item < (int64_t(1) << 14)) {
    for (int64_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
  // Dynamic chunks: on a shared (oversubscribed) machine a descheduled thread then holds up
  // only its current chunk. Which thread runs an item never changes the item's result.
  const int64_t chunk = std::max<int64_t>(1, n / (int64_t(threads) * 8));
#pragma omp parallel for num_threads(threads) schedule(dynamic, chunk)
  for (int64_t i = 0; i < n; ++i) f(i, omp_get_thread_num());
}

inline float silu(float g) { return g / (1.f + std::exp(-g)); }

}  // namespace moex::cpu
