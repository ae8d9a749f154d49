// rms_norm and rope: per-row fp32 math, one rounding to the output dtype.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {

Status rms_norm(const Ctx& ctx, const ops::RmsNormParams& p) {
  constexpr const char* op = "rms_norm";
  const int nd = p.x.ndim == 3 ? 3 : 2;  // [rows, dim] or [tokens, heads, dim]
  MOEX_RETURN_IF_ERROR(check_tensor(op, "x", p.x, nd));
  MOEX_RETURN_IF_ERROR(check_float(op, "x", p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "weight", p.weight, 1));
  MOEX_RETURN_IF_ERROR(check_float(op, "weight", p.weight));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, nd));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  for (int d = 0; d < nd; ++d) MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, d, p.x.shape[d]));
  const int64_t heads = nd == 3 ? p.x.shape[1] : 1;
  const int64_t rows = p.x.shape[0] * heads, dim = p.x.shape[nd - 1];
  MOEX_RETURN_IF_ERROR(check_dim(op, "weight", p.weight, 0, dim));
  // Byte offset of row r ((token, head) for 3-D views) in a tensor of element size `es`.
  auto row_offset = [&](const Tensor& t, int64_t r, size_t es) {
    const int64_t off = nd == 3 ? (r / heads) * t.stride[0] + (r % heads) * t.stride[1] : r * t.stride[0];
    return off * int64_t(es);
  };
  if (dim == 0) return invalid_argument("rms_norm: x has an empty last dim " + shape_of(p.x));
  std::vector<float> w(static_cast<size_t>(dim));  // [dim]
  load_row(p.weight.data, p.weight.dtype, p.weight.stride[0], dim, w.data());
  std::vector<float> buf(static_cast<size_t>(ctx.threads * dim));  // [threads, dim]
  const size_t xs = dtype_size(p.x.dtype), os = dtype_size(p.out.dtype);
  parallel_for(ctx, rows, dim, [&](int64_t r, int th) {
    float* x = buf.data() + th * dim;  // [dim]
    load_row(static_cast<const char*>(p.x.data) + row_offset(p.x, r, xs), p.x.dtype, p.x.stride[nd - 1], dim, x);
    // Sum of squares in the 16-lane order (cpu_common.h), then the mean.
    const float mean = sum_squares_f32(x, dim) / float(dim);
    const float inv = 1.f / std::sqrt(mean + p.eps);
    for (int64_t i = 0; i < dim; ++i) x[i] = (x[i] * inv) * w[i];
    store_row(static_cast<char*>(p.out.data) + row_offset(p.out, r, os), p.out.dtype, p.out.stride[nd - 1], dim, x);
  });
  return Status::ok();
}

Status rope(const Ctx& ctx, const ops::RopeParams& p) {
  constexpr const char* op = "rope";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "x", p.x, 3));
  MOEX_RETURN_IF_ERROR(check_output(op, "x", p.x));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "positions", p.positions, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "positions", p.positions));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "inv_freq", p.inv_freq, 1));
  if (p.inv_freq.dtype != DType::kF32) return invalid_argument("rope: inv_freq must be f32, got " + shape_of(p.inv_freq));
  const int64_t n = p.x.shape[0], heads = p.x.shape[1], head_dim = p.x.shape[2];
  const int64_t half = p.inv_freq.shape[0], rot = 2 * half;
  MOEX_RETURN_IF_ERROR(check_dim(op, "positions", p.positions, 0, n));
  if (rot > head_dim)
    return invalid_argument("rope: rot_dim " + std::to_string(rot) + " (2 * inv_freq size) exceeds head_dim of x " +
                            shape_of(p.x));
  std::vector<float> inv_freq(static_cast<size_t>(half));  // [half]
  load_row(p.inv_freq.data, DType::kF32, p.inv_freq.stride[0], half, inv_freq.data());
  // Per thread: cos [half], sin [half], one head's rotated features [rot].
  std::vector<float> buf(static_cast<size_t>(ctx.threads * (2 * half + rot)));
  const size_t es = dtype_size(p.x.dtype);
  parallel_for(ctx, n, heads * rot, [&](int64_t t, int th) {
    float* cs = buf.data() + th * (2 * half + rot);  // [half]
    float* sn = cs + half;                           // [half]
    float* v = sn + half;                            // [rot]
    const float pos = float(i32_at(p.positions, t));
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cs[i] = std::cos(angle) * p.attn_scale;
      sn[i] = std::sin(angle) * p.attn_scale;
    }
    for (int64_t h = 0; h < heads; ++h) {
      char* row = static_cast<char*>(p.x.data)  // [head_dim]
                   + (t * p.x.stride[0] + h * p.x.stride[1]) * int64_t(es);
      load_row(row, p.x.dtype, p.x.stride[2], rot, v);
      if (p.interleaved) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * cs[i] - b * sn[i];
          v[2 * i + 1] = b * cs[i] + a * sn[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = b * cs[i] + a * sn[i];
        }
      }
      store_row(row, p.x.dtype, p.x.stride[2], rot, v);
    }
  });
  return Status::ok();
}

}  // namespace moex::cpu
