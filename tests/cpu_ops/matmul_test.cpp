#include <chrono>
#include <cmath>
#include <cstdio>
#include <tuple>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

// out[b, r, c] = alpha * sum_i x[b, r, i] * w[b, c, i] (+ old), in double.
std::vector<double> ref_matmul(const Tensor& x, const Tensor& w, int64_t batch, int64_t m, int64_t n, int64_t k,
                               double alpha, const std::vector<double>* old) {
  std::vector<double> out(size_t(batch * m * n));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < n; ++c) {
        double s = 0;
        for (int64_t i = 0; i < k; ++i) s += view_get(x, (b * m + r) * k + i) * view_get(w, (b * n + c) * k + i);
        const size_t o = size_t((b * m + r) * n + c);
        out[o] = alpha * s + (old ? (*old)[o] : 0.0);
      }
  return out;
}

struct Case {
  int64_t m, n, k;
  DType x, w, out;
};

class MatmulGrid : public ::testing::TestWithParam<Case> {};

TEST_P(MatmulGrid, MatchesDoubleReference) {
  MOEX_TRACE_SEED();
  const Case c = GetParam();
  auto be = cpu(2);
  HostTensor x = random_tensor(c.x, {c.m, c.k});
  HostTensor w = random_tensor(c.w, {c.n, c.k});
  HostTensor out(c.out, {c.m, c.n});
  out.fill_nan();
  ops::MatmulParams p{x.t, w.t, out.t, 0.75f, false};
  ASSERT_TRUE(be->matmul(p).is_ok());
  const auto ref = ref_matmul(x.t, w.t, 1, c.m, c.n, c.k, 0.75, nullptr);
  EXPECT_LT(rel_l2(out.values(), ref), tol_for(c.out)) << c.m << "x" << c.n << "x" << c.k;
}

std::vector<Case> grid() {
  std::vector<Case> cases;
  for (int64_t m : {1, 3, 17, 97})
    for (int64_t n : {1, 17, 97})
      for (int64_t k : {1, 3, 17, 97, 1000}) cases.push_back({m, n, k, DType::kF32, DType::kF32, DType::kF32});
  for (DType wt : {DType::kBF16, DType::kF16, DType::kF8E4M3})
    for (int64_t m : {1, 5, 33}) cases.push_back({m, 97, 1000, DType::kF32, wt, DType::kF32});
  cases.push_back({3, 64, 517, DType::kBF16, DType::kBF16, DType::kBF16});
  cases.push_back({1, 33, 4100, DType::kF32, DType::kF8E4M3, DType::kF32});  // > one conversion piece
  // Real model shapes (trimmed in n): Qwen3-30B-A3B hidden 2048 -> router 128 / attention;
  // DeepSeek-V2-Lite hidden 2048 -> kv_a 576; Mixtral hidden 4096.
  cases.push_back({1, 128, 2048, DType::kF32, DType::kBF16, DType::kF32});
  cases.push_back({16, 96, 2048, DType::kF32, DType::kBF16, DType::kF32});
  cases.push_back({7, 64, 4096, DType::kBF16, DType::kBF16, DType::kF32});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cpu, MatmulGrid, ::testing::ValuesIn(grid()));

TEST(Matmul, StridedViewsAccumulateAndBatched) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  // x is a column slice of a wider buffer, out a column slice of another: both strided rows.
  const int64_t b = 3, m = 5, n = 19, k = 37;
  HostTensor xbig = random_tensor(DType::kF32, {b, m, k + 6});
  Tensor x = xbig.t.slice(2, 3, 3 + k);
  HostTensor w = random_tensor(DType::kBF16, {b, n, k});
  HostTensor obig = random_tensor(DType::kF32, {b, m, n + 4});
  Tensor out = obig.t.slice(2, 1, 1 + n);
  std::vector<double> old(size_t(b * m * n));
  for (int64_t i = 0; i < b * m * n; ++i) old[size_t(i)] = view_get(out, i);
  const std::vector<double> before = obig.values();
  ops::MatmulParams p{x, w.t, out, -1.5f, true};
  ASSERT_TRUE(be->matmul(p).is_ok());
  std::vector<double> got(old.size());
  for (int64_t i = 0; i < b * m * n; ++i) got[size_t(i)] = view_get(out, i);
  EXPECT_LT(rel_l2(got, ref_matmul(x, w.t, b, m, n, k, -1.5, &old)), 2e-5);
  // Columns outside the view are untouched.
  const std::vector<double> after = obig.values();
  for (int64_t r = 0; r < b * m; ++r)
    for (int64_t c : {0, 20, 21, 22}) EXPECT_EQ(after[size_t(r * (n + 4) + c)], before[size_t(r * (n + 4) + c)]);
}

TEST(Matmul, RowResultIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  const int64_t n = 77, k = 1031;
  for (DType wt : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    HostTensor w = random_tensor(wt, {n, k});
    HostTensor x17 = random_tensor(DType::kF32, {17, k});
    std::vector<float> first;
    for (int threads : {1, 2})
      for (int64_t m : {1, 3, 17}) {
        auto be = cpu(threads);
        // Put the probe row (row 0 of x17) at the end of an m-row batch.
        HostTensor x(DType::kF32, {m, k});
        for (int64_t r = 0; r < m; ++r)
          for (int64_t i = 0; i < k; ++i) x.set(r * k + i, x17.get(((r + 1) % m == 0 ? 0 : r + 1) * k + i));
        HostTensor out(DType::kF32, {m, n});
        out.fill_nan();
        ASSERT_TRUE(be->matmul({x.t, w.t, out.t, 1.f, false}).is_ok());
        std::vector<float> row(out.t.ptr<float>() + (m - 1) * n, out.t.ptr<float>() + m * n);
        if (first.empty()) first = row;
        else EXPECT_TRUE(same_bytes(first.data(), row.data(), size_t(n) * 4)) << "m=" << m << " threads=" << threads;
      }
  }
}

TEST(Matmul, RejectsMismatchedShapesAndDtypes) {
  auto be = cpu(1);
  HostTensor x(DType::kF32, {2, 8}), w(DType::kF32, {4, 9}), out(DType::kF32, {2, 4});
  Status s = be->matmul({x.t, w.t, out.t, 1.f, false});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("matmul"), std::string::npos);
  EXPECT_NE(s.message().find("w"), std::string::npos);
  HostTensor w2(DType::kF32, {4, 8}), out_bad(DType::kF32, {2, 5});
  EXPECT_EQ(be->matmul({x.t, w2.t, out_bad.t, 1.f, false}).code(), StatusCode::kInvalidArgument);
  HostTensor out_i(DType::kI32, {2, 4});
  EXPECT_EQ(be->matmul({x.t, w2.t, out_i.t, 1.f, false}).code(), StatusCode::kInvalidArgument);
  Tensor gpu_w = w2.t;
  gpu_w.device = DeviceType::kCuda;
  EXPECT_EQ(be->matmul({x.t, gpu_w, out.t, 1.f, false}).code(), StatusCode::kInvalidArgument);
}

// Not a pass/fail criterion: prints the weight streaming rate of the batch-1 path.
TEST(Matmul, Batch1Bf16Throughput) {
  const int64_t n = 4096, k = 2048;
  HostTensor w = random_tensor(DType::kBF16, {n, k});
  for (int threads : {1, 2})
  for (int64_t m : {1, 16}) {
    auto be = cpu(threads);
    HostTensor x = random_tensor(DType::kF32, {m, k});
    HostTensor out(DType::kF32, {m, n});
    ASSERT_TRUE(be->matmul({x.t, w.t, out.t, 1.f, false}).is_ok());
    const int reps = 10;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) ASSERT_TRUE(be->matmul({x.t, w.t, out.t, 1.f, false}).is_ok());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    std::printf("[ perf ] matmul m=%lld bf16 [%lld x %lld], %d threads: %.3f ms, %.2f GB/s of weights\n",
                (long long)m, (long long)n, (long long)k, threads, s * 1e3, double(n * k * 2) / s / 1e9);
  }
}

}  // namespace
}  // namespace moex::test
