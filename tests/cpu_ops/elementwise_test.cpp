#include <cmath>
#include <limits>

#include "core/random.h"
#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

TEST(Embedding, GathersRowsAndCasts) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType table_t : {DType::kF32, DType::kBF16, DType::kF16})
    for (DType out_t : {DType::kF32, DType::kBF16}) {
      const int64_t vocab = 97, hidden = 33, n = 17;
      HostTensor table = random_tensor(table_t, {vocab, hidden});
      HostTensor ids(DType::kI32, {n});
      for (int64_t i = 0; i < n; ++i) ids.i32()[i] = random_int(0, int(vocab - 1));
      ids.i32()[0] = 0;
      ids.i32()[n - 1] = int32_t(vocab - 1);
      HostTensor out(out_t, {n, hidden});
      out.fill_nan();
      ASSERT_TRUE(be->embedding({ids.t, table.t, out.t}).is_ok());
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < hidden; ++c) {
          const double want = table.get(ids.i32()[i] * hidden + c);
          const double got = out.get(i * hidden + c);
          if (out_t == DType::kF32 || table_t == DType::kBF16) ASSERT_EQ(got, want);  // exact
          else ASSERT_EQ(got, double(round_to_bf16(float(want))));
        }
    }
}

TEST(Embedding, RejectsOutOfRangeIds) {
  auto be = cpu(1);
  HostTensor table = random_tensor(DType::kF32, {10, 4});
  HostTensor ids(DType::kI32, {3}), out(DType::kF32, {3, 4});
  ids.i32()[0] = 1;
  ids.i32()[1] = 10;
  ids.i32()[2] = 2;
  Status s = be->embedding({ids.t, table.t, out.t});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("ids[1] = 10"), std::string::npos) << s.message();
  ids.i32()[1] = -1;
  EXPECT_EQ(be->embedding({ids.t, table.t, out.t}).code(), StatusCode::kInvalidArgument);
  ids.i32()[1] = 0;
  HostTensor out_bad(DType::kF32, {3, 5});
  EXPECT_EQ(be->embedding({ids.t, table.t, out_bad.t}).code(), StatusCode::kInvalidArgument);
}

TEST(Copy, StridedTransposedViewsAndCasts) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3};
  for (DType st : types)
    for (DType dt : types) {
      // src: a permuted view [3, 17, 5] of a [5, 3, 17] buffer; dst: a slice of a wider buffer.
      HostTensor src = random_tensor(st, {5, 3, 17}, -4, 4);
      Tensor sv = src.t;
      sv.shape[0] = 3; sv.shape[1] = 17; sv.shape[2] = 5;
      sv.stride[0] = 17; sv.stride[1] = 1; sv.stride[2] = 3 * 17;
      HostTensor dst(dt, {3, 17, 9});
      dst.fill_nan();
      Tensor dv = dst.t.slice(2, 2, 7);
      ASSERT_TRUE(be->copy({sv, dv}).is_ok());
      for (int64_t i = 0; i < 3 * 17 * 5; ++i) {
        const float want = float(view_get(sv, i));
        HostTensor one(dt, {1});
        one.set(0, want);  // the dtype's own rounding
        ASSERT_EQ(view_get(dv, i), one.get(0)) << dtype_name(st) << "->" << dtype_name(dt) << " at " << i;
      }
      // Outside the slice stays NaN.
      EXPECT_TRUE(std::isnan(dst.get(0)));
      EXPECT_TRUE(std::isnan(dst.get(8)));
    }
  HostTensor a(DType::kF32, {2, 3}), b(DType::kF32, {3, 2});
  EXPECT_EQ(be->copy({a.t, b.t}).code(), StatusCode::kInvalidArgument);
}

TEST(Add, ScaledSumWithAliasing) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType t : {DType::kF32, DType::kBF16})
    for (int64_t rows : {1, 3, 97}) {
      const int64_t dim = 129;
      HostTensor a = random_tensor(t, {rows, dim}), b = random_tensor(DType::kF32, {rows, dim});
      const auto av = a.values(), bv = b.values();
      ASSERT_TRUE(be->add({a.t, b.t, a.t, -0.5f}).is_ok());  // out aliases a
      std::vector<double> ref(av.size());
      for (size_t i = 0; i < av.size(); ++i) ref[i] = av[i] - 0.5 * bv[i];
      EXPECT_LT(rel_l2(a.values(), ref), tol_for(t));
    }
  HostTensor a(DType::kF32, {2, 3}), b(DType::kF32, {2, 4});
  EXPECT_EQ(be->add({a.t, b.t, a.t, 1.f}).code(), StatusCode::kInvalidArgument);
}

TEST(SiluMul, GateTimesUp) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType t : {DType::kF32, DType::kBF16})
    for (int64_t rows : {1, 17}) {
      const int64_t inter = 97;
      HostTensor x = random_tensor(t, {rows, 2 * inter}, -6, 6);
      HostTensor out(t, {rows, inter});
      out.fill_nan();
      ASSERT_TRUE(be->silu_mul({x.t, out.t}).is_ok());
      std::vector<double> ref;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < inter; ++i) {
          const double g = x.get(r * 2 * inter + i), u = x.get(r * 2 * inter + inter + i);
          ref.push_back(g / (1 + std::exp(-g)) * u);
        }
      EXPECT_LT(rel_l2(out.values(), ref), tol_for(t));
    }
  HostTensor x(DType::kF32, {2, 7}), out(DType::kF32, {2, 3});
  EXPECT_EQ(be->silu_mul({x.t, out.t}).code(), StatusCode::kInvalidArgument);
}

// The seeded random-weight generator: value i is (2 u - 1) * half_width with u the top 53 bits
// of splitmix64(stream + i), rounded once to the output dtype; the same bits with 1 or 3 threads.
TEST(RandomUniform, CounterBasedValuesAnyThreadCount) {
  const uint64_t stream = splitmix64(7 ^ fnv1a("model.layers.0.mlp.gate_proj.weight"));
  for (DType t : {DType::kF32, DType::kBF16}) {
    HostTensor one(t, {70001}), three(t, {70001});
    one.fill_nan();
    three.fill_nan();
    ASSERT_TRUE(cpu(1)->random_uniform({one.t, stream, 0.5f}).is_ok());
    ASSERT_TRUE(cpu(3)->random_uniform({three.t, stream, 0.5f}).is_ok());
    for (int64_t i : {int64_t(0), int64_t(1), int64_t(65536), int64_t(70000)}) {
      const double u = unit_double(splitmix64(stream + uint64_t(i)));
      HostTensor want(t, {1});
      store_from_f32(want.t.data, t, 0, float((2.0 * u - 1.0) * 0.5));
      EXPECT_EQ(one.get(i), want.get(0)) << "index " << i;
    }
    EXPECT_EQ(one.values(), three.values());
  }
  HostTensor bad(DType::kF32, {2, 3});
  EXPECT_EQ(cpu(1)->random_uniform({bad.t, stream, 0.5f}).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moex::test
