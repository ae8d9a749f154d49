#include <cmath>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

TEST(RmsNorm, MatchesReferenceOnStridedRowsInPlace) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType t : {DType::kF32, DType::kBF16})
    for (int64_t dim : {1, 17, 128, 2048}) {
      // Qwen3's per-head q norm: a [tokens, heads, head_dim] slice seen as strided rows.
      const int64_t rows = 13;
      HostTensor buf = random_tensor(t, {rows, dim + 5}, -3, 3);
      Tensor x = buf.t.slice(1, 2, 2 + dim);
      HostTensor w = random_tensor(DType::kBF16, {dim}, 0.5, 1.5);
      std::vector<double> ref;
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += view_get(x, r * dim + i) * view_get(x, r * dim + i);
        const double inv = 1.0 / std::sqrt(ss / double(dim) + 1e-6);
        for (int64_t i = 0; i < dim; ++i) ref.push_back(view_get(x, r * dim + i) * inv * w.get(i));
      }
      const double untouched = buf.get(0);
      ASSERT_TRUE(be->rms_norm({x, w.t, x, 1e-6f}).is_ok());
      std::vector<double> got;
      for (int64_t i = 0; i < rows * dim; ++i) got.push_back(view_get(x, i));
      EXPECT_LT(rel_l2(got, ref), tol_for(t)) << "dim " << dim;
      EXPECT_EQ(buf.get(0), untouched);
    }
  HostTensor x(DType::kF32, {2, 8}), w(DType::kF32, {7});
  EXPECT_EQ(be->rms_norm({x.t, w.t, x.t, 1e-6f}).code(), StatusCode::kInvalidArgument);
}

// [tokens, heads, dim] views with token and head strides (q heads as columns of a fused q|k|v
// row): each (token, head) row equals the 2-D op on a contiguous copy, bit for bit.
TEST(RmsNorm, ThreeDimViewsEqualTwoDimRows) {
  MOEX_TRACE_SEED();
  const int64_t tokens = 5, heads = 3, dim = 16, row = heads * dim + 2 * dim;  // q | k | v columns
  HostTensor fused = random_tensor(DType::kBF16, {tokens, row}, -3, 3);
  HostTensor w = random_tensor(DType::kBF16, {dim}, 0.5, 1.5);
  HostTensor flat(DType::kBF16, {tokens * heads, dim});
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < heads * dim; ++i) flat.set(t * heads * dim + i, fused.get(t * row + i));
  ASSERT_TRUE(cpu(2)->rms_norm({flat.t, w.t, flat.t, 1e-6f}).is_ok());
  Tensor q = fused.t;  // [tokens, heads, dim] view of the first heads * dim columns
  q.ndim = 3;
  q.shape[0] = tokens; q.shape[1] = heads; q.shape[2] = dim;
  q.stride[0] = row; q.stride[1] = dim; q.stride[2] = 1;
  const double k0 = fused.get(heads * dim);
  ASSERT_TRUE(cpu(2)->rms_norm({q, w.t, q, 1e-6f}).is_ok());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < heads * dim; ++i)
      ASSERT_EQ(fused.get(t * row + i), flat.get(t * heads * dim + i)) << "token " << t << " column " << i;
  EXPECT_EQ(fused.get(heads * dim), k0);  // the k columns are untouched
  Tensor bad_out = flat.t;  // out shape must match x
  EXPECT_EQ(cpu(1)->rms_norm({q, w.t, bad_out, 1e-6f}).code(), StatusCode::kInvalidArgument);
}

TEST(RmsNorm, RowIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  HostTensor x = random_tensor(DType::kF32, {17, 1000});
  HostTensor w = random_tensor(DType::kF32, {1000});
  std::vector<float> first;
  for (int threads : {1, 2})
    for (int64_t rows : {1, 3, 17}) {
      HostTensor out(DType::kF32, {rows, 1000});
      ASSERT_TRUE(cpu(threads)->rms_norm({x.t.slice(0, 17 - rows, 17), w.t, out.t, 1e-5f}).is_ok());
      std::vector<float> row(out.t.ptr<float>() + (rows - 1) * 1000, out.t.ptr<float>() + rows * 1000);
      if (first.empty()) first = row;
      else EXPECT_TRUE(same_bytes(first.data(), row.data(), row.size() * 4));
    }
}

// Reference: rotate pairs by angle p * inv_freq[i], scaled by attn_scale.
std::vector<double> ref_rope(const HostTensor& x, const HostTensor& pos, const HostTensor& inv_freq, double scale,
                             bool interleaved) {
  const int64_t n = x.t.shape[0], heads = x.t.shape[1], hd = x.t.shape[2], half = inv_freq.t.shape[0];
  std::vector<double> v = x.values();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double ang = double(float(pos.t.ptr<const int32_t>()[t]) * float(inv_freq.get(i)));
        const double c = std::cos(ang) * scale, s = std::sin(ang) * scale;
        const int64_t base = (t * heads + h) * hd;
        const int64_t i0 = interleaved ? base + 2 * i : base + i, i1 = interleaved ? base + 2 * i + 1 : base + i + half;
        const double a = x.get(i0), b = x.get(i1);
        v[size_t(i0)] = a * c - b * s;
        v[size_t(i1)] = b * c + a * s;
      }
  return v;
}

TEST(Rope, BothStylesPartialRotaryAndScale) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  struct C { int64_t heads, hd, rot; bool inter; double scale; DType t; };
  const C cases[] = {{4, 64, 64, false, 1.0, DType::kF32},   // Qwen3 / Mixtral style
                     {3, 17 * 2, 16, false, 1.0, DType::kF32},
                     {16, 64, 64, true, 1.2, DType::kF32},  // DeepSeek rope part with YaRN mscale
                     {2, 192, 64, true, 1.0, DType::kF32},
                     {4, 128, 128, false, 1.0, DType::kBF16}};
  for (const C& c : cases) {
    const int64_t n = 17;
    HostTensor x = random_tensor(c.t, {n, c.heads, c.hd});
    HostTensor pos(DType::kI32, {n});
    for (int64_t t = 0; t < n; ++t) pos.i32()[t] = random_int(0, 40000);
    HostTensor inv(DType::kF32, {c.rot / 2});
    for (int64_t i = 0; i < c.rot / 2; ++i) inv.set(i, std::pow(10000.0, -2.0 * double(i) / double(c.rot)));
    const auto ref = ref_rope(x, pos, inv, c.scale, c.inter);
    ops::RopeParams p{x.t, pos.t, inv.t, float(c.scale), c.inter};
    ASSERT_TRUE(be->rope(p).is_ok());
    // Angles reach 4e4 rad, where fp32 cos/sin of the same fp32 angle agree closely with double.
    EXPECT_LT(rel_l2(x.values(), ref), c.t == DType::kBF16 ? 6e-3 : 1e-5) << c.heads << " " << c.hd << " " << c.rot;
  }
  HostTensor x(DType::kF32, {2, 1, 8}), pos(DType::kI32, {2}), inv(DType::kF32, {5});
  EXPECT_EQ(be->rope({x.t, pos.t, inv.t, 1.f, false}).code(), StatusCode::kInvalidArgument);  // rot 10 > 8
}

}  // namespace
}  // namespace moex::test
