// matmul: out = alpha * x @ w^T (+ out). Each output element is one dot product over k in the
// 16-lane order of cpu_common.h; threads split output columns (and batch entries), never k.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {

Status matmul(const Ctx& ctx, const ops::MatmulParams& p) {
  constexpr const char* op = "matmul";
  const int nd = p.x.ndim;
  if (nd != 2 && nd != 3) return invalid_argument("matmul: x must be [m, k] or [b, m, k], got " + shape_of(p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "x", p.x, nd));
  MOEX_RETURN_IF_ERROR(check_float(op, "x", p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "w", p.w, nd));
  MOEX_RETURN_IF_ERROR(check_float(op, "w", p.w));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "w", p.w));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, nd));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int b0 = nd - 2;  // index of the m / n dim
  const int64_t batch = nd == 3 ? p.x.shape[0] : 1;
  const int64_t m = p.x.shape[b0], k = p.x.shape[b0 + 1], n = p.w.shape[b0];
  if (nd == 3) {
    MOEX_RETURN_IF_ERROR(check_dim(op, "w", p.w, 0, batch));
    MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, batch));
  }
  MOEX_RETURN_IF_ERROR(check_dim(op, "w", p.w, b0 + 1, k));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, b0, m));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, b0 + 1, n));
  if (m == 0 || n == 0) return Status::ok();

  // x of each batch entry as fp32 rows.
  std::vector<F32Rows> xr(static_cast<size_t>(batch));
  for (int64_t bi = 0; bi < batch; ++bi) {
    Tensor xb = nd == 3 ? p.x.slice(0, bi, bi + 1) : p.x;
    load_rows(xb, m, k, p.x.stride[b0], &xr[size_t(bi)], ctx);
  }
  // Work items: (batch entry, block of output columns).
  const int64_t cb = m <= 4 ? 16 : 32;
  const int64_t blocks = (n + cb - 1) / cb;
  const int64_t per_thread = m * cb + kScratchFloats;  // tmp [m, cb] + weight conversion scratch
  std::vector<float> scratch(static_cast<size_t>(ctx.threads * per_thread));
  const size_t ws = dtype_size(p.w.dtype), os = dtype_size(p.out.dtype);
  const int64_t w_batch = nd == 3 ? p.w.stride[0] : 0, out_batch = nd == 3 ? p.out.stride[0] : 0;
  const int64_t os_m = p.out.stride[b0], os_n = p.out.stride[b0 + 1];
  parallel_for(ctx, batch * blocks, m * cb * k, [&](int64_t item, int th) {
    const int64_t bi = item / blocks, c0 = (item % blocks) * cb, c1 = std::min(n, c0 + cb);
    float* tmp = scratch.data() + th * per_thread;  // [m, c1 - c0]
    const char* w = static_cast<const char*>(p.w.data) + bi * w_batch * int64_t(ws);  // [n, k]
    gemm_cols(xr[size_t(bi)].row.data(), m, w, p.w.dtype, p.w.stride[b0], k, c0, c1, tmp, c1 - c0, tmp + m * cb);
    char* out = static_cast<char*>(p.out.data) + bi * out_batch * int64_t(os);  // [m, n]
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        const size_t idx = size_t(r * os_m + c * os_n);
        float v = p.alpha * tmp[r * (c1 - c0) + (c - c0)];
        if (p.accumulate) v = load_as_f32(out, p.out.dtype, idx) + v;
        store_from_f32(out, p.out.dtype, idx, v);
      }
    }
  });
  return Status::ok();
}

}  // namespace moex::cpu
