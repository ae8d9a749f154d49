// embedding, copy, add, silu_mul: row-wise loops; each row is converted to fp32, computed,
// and rounded once to the output dtype.
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/random.h"

namespace moex::cpu {
namespace {

// Byte address of row r of a 2-D view.
inline char* row_ptr(const Tensor& t, int64_t r) {
  return static_cast<char*>(t.data) + r * t.stride[0] * int64_t(dtype_size(t.dtype));
}

}  // namespace

Status embedding(const Ctx& ctx, const ops::EmbeddingParams& p) {
  constexpr const char* op = "embedding";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "ids", p.ids, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "ids", p.ids));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "table", p.table, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "table", p.table));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 2));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t n = p.ids.shape[0], vocab = p.table.shape[0], hidden = p.table.shape[1];
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 1, hidden));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = i32_at(p.ids, i);
    if (id < 0 || id >= vocab)
      return invalid_argument("embedding: ids[" + std::to_string(i) + "] = " + std::to_string(id) +
                              " is outside the table's vocab [0, " + std::to_string(vocab) + ")");
  }
  std::vector<float> buf(static_cast<size_t>(ctx.threads * hidden));  // [threads, hidden]
  parallel_for(ctx, n, hidden, [&](int64_t i, int th) {
    float* b = buf.data() + th * hidden;  // [hidden]
    load_row(row_ptr(p.table, i32_at(p.ids, i)), p.table.dtype, p.table.stride[1], hidden, b);
    store_row(row_ptr(p.out, i), p.out.dtype, p.out.stride[1], hidden, b);
  });
  return Status::ok();
}

Status copy(const Ctx& ctx, const ops::CopyParams& p) {
  constexpr const char* op = "copy";
  const int nd = p.src.ndim;
  if (nd < 1 || nd > Tensor::kMaxDims) return invalid_argument("copy: src must have 1 to 5 dims, got " + shape_of(p.src));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "src", p.src, nd));
  MOEX_RETURN_IF_ERROR(check_float(op, "src", p.src));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "dst", p.dst, nd));
  MOEX_RETURN_IF_ERROR(check_float(op, "dst", p.dst));
  for (int d = 0; d < nd; ++d) MOEX_RETURN_IF_ERROR(check_dim(op, "dst", p.dst, d, p.src.shape[d]));
  const int64_t cols = p.src.shape[nd - 1];
  const int64_t rows = cols == 0 ? 0 : p.src.numel() / cols;
  // Row r (outer indices flattened, row-major) -> element offsets in src and dst.
  auto offsets = [&](int64_t r, int64_t* so, int64_t* dof) {
    *so = 0;
    *dof = 0;
    for (int d = nd - 2; d >= 0; --d) {
      const int64_t idx = r % p.src.shape[d];
      r /= p.src.shape[d];
      *so += idx * p.src.stride[d];
      *dof += idx * p.dst.stride[d];
    }
  };
  std::vector<float> buf(static_cast<size_t>(ctx.threads * cols));  // [threads, cols]
  const size_t ss = dtype_size(p.src.dtype), ds = dtype_size(p.dst.dtype);
  parallel_for(ctx, rows, cols, [&](int64_t r, int th) {
    int64_t so, dof;
    offsets(r, &so, &dof);
    float* b = buf.data() + th * cols;  // [cols]
    load_row(static_cast<const char*>(p.src.data) + so * int64_t(ss), p.src.dtype, p.src.stride[nd - 1], cols, b);
    store_row(static_cast<char*>(p.dst.data) + dof * int64_t(ds), p.dst.dtype, p.dst.stride[nd - 1], cols, b);
  });
  return Status::ok();
}

Status add(const Ctx& ctx, const ops::AddParams& p) {
  constexpr const char* op = "add";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "a", p.a, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "a", p.a));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "b", p.b, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "b", p.b));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 2));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t rows = p.a.shape[0], dim = p.a.shape[1];
  for (const auto* t : {&p.b, &p.out}) {
    const char* name = t == &p.b ? "b" : "out";
    MOEX_RETURN_IF_ERROR(check_dim(op, name, *t, 0, rows));
    MOEX_RETURN_IF_ERROR(check_dim(op, name, *t, 1, dim));
  }
  // Both inputs are read into fp32 rows before the row is written, so out may alias a or b.
  std::vector<float> buf(static_cast<size_t>(ctx.threads * 2 * dim));  // [threads, 2, dim]
  const float bs = p.b_scale;
  parallel_for(ctx, rows, dim, [&](int64_t r, int th) {
    float* a = buf.data() + th * 2 * dim;  // [dim]
    float* b = a + dim;                    // [dim]
    load_row(row_ptr(p.a, r), p.a.dtype, p.a.stride[1], dim, a);
    load_row(row_ptr(p.b, r), p.b.dtype, p.b.stride[1], dim, b);
    for (int64_t i = 0; i < dim; ++i) a[i] = a[i] + bs * b[i];
    store_row(row_ptr(p.out, r), p.out.dtype, p.out.stride[1], dim, a);
  });
  return Status::ok();
}

Status silu_mul(const Ctx& ctx, const ops::SiluMulParams& p) {
  constexpr const char* op = "silu_mul";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "x", p.x, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "x", p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 2));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t rows = p.x.shape[0], inter = p.out.shape[1];
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, rows));
  MOEX_RETURN_IF_ERROR(check_dim(op, "x", p.x, 1, 2 * inter));
  std::vector<float> buf(static_cast<size_t>(ctx.threads * 2 * inter));  // [threads, 2 * inter]
  parallel_for(ctx, rows, inter, [&](int64_t r, int th) {
    float* x = buf.data() + th * 2 * inter;  // [2 * inter]: gate, up
    load_row(row_ptr(p.x, r), p.x.dtype, p.x.stride[1], 2 * inter, x);
    for (int64_t i = 0; i < inter; ++i) x[i] = silu(x[i]) * x[inter + i];
    store_row(row_ptr(p.out, r), p.out.dtype, p.out.stride[1], inter, x);
  });
  return Status::ok();
}

Status random_uniform(const Ctx& ctx, const ops::RandomUniformParams& p) {
  constexpr const char* op = "random_uniform";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 1));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  MOEX_RETURN_IF_ERROR(check_inner_contiguous(op, "out", p.out));
  const int64_t n = p.out.shape[0];
  constexpr int64_t kChunk = int64_t(1) << 16;
  // Each value depends on its index only, so any split over threads gives the same bits.
  parallel_for(ctx, (n + kChunk - 1) / kChunk, kChunk, [&](int64_t c, int) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) {
      store_from_f32(p.out.data, p.out.dtype, size_t(i), float(uniform_element(p.stream, uint64_t(i), p.half_width)));
    }
  });
  return Status::ok();
}

}  // namespace moex::cpu
