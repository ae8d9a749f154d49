#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <numeric>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

struct MoeCase {
  int64_t experts, k, hidden, inter, n;
  DType x, w, out;
  int64_t local = 0;  // > 0: only this many experts are local (random expert_map)
};

struct MoeData {
  HostTensor x, ids, weights, w13, w2, map, out;
};

MoeData make_moe(const MoeCase& c) {
  const int64_t local = c.local > 0 ? c.local : c.experts;
  MoeData d;
  d.x = random_tensor(c.x, {c.n, c.hidden});
  d.ids = HostTensor(DType::kI32, {c.n, c.k});
  std::vector<int32_t> perm(static_cast<size_t>(c.experts));
  for (int64_t t = 0; t < c.n; ++t) {  // distinct experts per token, as route produces
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng());
    for (int64_t j = 0; j < c.k; ++j) d.ids.i32()[t * c.k + j] = perm[size_t(j)];
  }
  d.weights = random_tensor(DType::kF32, {c.n, c.k}, 0.0, 1.0);
  // Scale weights like a trained layer (std ~ 1/sqrt(fan_in)) so values stay O(1).
  d.w13 = random_tensor(c.w, {local, 2 * c.inter, c.hidden}, -2.0 / std::sqrt(double(c.hidden)),
                        2.0 / std::sqrt(double(c.hidden)));
  d.w2 = random_tensor(c.w, {local, c.hidden, c.inter}, -2.0 / std::sqrt(double(c.inter)),
                       2.0 / std::sqrt(double(c.inter)));
  if (c.local > 0) {
    d.map = HostTensor(DType::kI32, {c.experts});
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng());
    for (int64_t e = 0; e < c.experts; ++e) d.map.i32()[e] = -1;
    for (int64_t l = 0; l < local; ++l) d.map.i32()[perm[size_t(l)]] = int32_t(l);
  }
  d.out = HostTensor(c.out, {c.n, c.hidden});
  d.out.fill_nan();
  return d;
}

ops::FusedMoeParams params(MoeData& d) {
  ops::FusedMoeParams p;
  p.x = d.x.t;
  p.topk_ids = d.ids.t;
  p.topk_weights = d.weights.t;
  p.w13 = d.w13.t;
  p.w2 = d.w2.t;
  if (d.map.numel() > 0 && d.map.t.data) p.expert_map = d.map.t;
  p.out = d.out.t;
  return p;
}

std::vector<double> ref_moe(const MoeCase& c, const MoeData& d) {
  std::vector<double> out(static_cast<size_t>(c.n * c.hidden), 0.0), h(static_cast<size_t>(c.inter));
  const auto x = d.x.values(), w13 = d.w13.values(), w2 = d.w2.values();
  for (int64_t t = 0; t < c.n; ++t)
    for (int64_t j = 0; j < c.k; ++j) {
      const int32_t e = d.ids.t.ptr<const int32_t>()[t * c.k + j];
      const int32_t l = c.local > 0 ? d.map.t.ptr<const int32_t>()[e] : e;
      if (l < 0) continue;
      const double wt = d.weights.get(t * c.k + j);
      for (int64_t i = 0; i < c.inter; ++i) {
        double g = 0, u = 0;
        for (int64_t q = 0; q < c.hidden; ++q) {
          g += x[size_t(t * c.hidden + q)] * w13[size_t((l * 2 * c.inter + i) * c.hidden + q)];
          u += x[size_t(t * c.hidden + q)] * w13[size_t((l * 2 * c.inter + c.inter + i) * c.hidden + q)];
        }
        double hv = g / (1.0 + std::exp(-g)) * u;
        if (c.x == DType::kBF16) hv = round_to_bf16(float(hv));  // the GPU stores h in bf16
        h[size_t(i)] = hv;
      }
      for (int64_t q = 0; q < c.hidden; ++q) {
        double y = 0;
        for (int64_t i = 0; i < c.inter; ++i) y += h[size_t(i)] * w2[size_t((l * c.hidden + q) * c.inter + i)];
        out[size_t(t * c.hidden + q)] += wt * y;
      }
    }
  return out;
}

class MoeGrid : public ::testing::TestWithParam<MoeCase> {};

TEST_P(MoeGrid, MatchesDoubleReference) {
  MOEX_TRACE_SEED();
  const MoeCase c = GetParam();
  MoeData d = make_moe(c);
  auto be = cpu(2);
  const Status s = be->fused_moe(params(d));
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_LT(rel_l2(d.out.values(), ref_moe(c, d)), tol_for(c.out, c.x == DType::kBF16 ? c.x : c.w));
}

std::vector<MoeCase> moe_grid() {
  const DType f32 = DType::kF32, bf16 = DType::kBF16, fp8 = DType::kF8E4M3;
  std::vector<MoeCase> v;
  for (int64_t n : {1, 3, 17, 97}) v.push_back({8, 2, 64, 48, n, f32, f32, f32});
  v.push_back({16, 4, 97, 17, 17, f32, bf16, f32});
  v.push_back({16, 4, 96, 40, 17, bf16, bf16, bf16});
  v.push_back({8, 2, 64, 32, 5, f32, fp8, f32});
  v.push_back({1, 1, 3, 1, 3, f32, f32, f32});
  v.push_back({32, 8, 64, 24, 70, f32, f32, f32, 7});  // expert_map with -1 entries, 2 chunks
  // Real expert shapes with a few local experts: Qwen3-30B-A3B (128 experts, top-8, 2048, 768)
  // and DeepSeek-V2-Lite (64, top-6, 2048, 1408).
  v.push_back({128, 8, 2048, 768, 3, f32, bf16, f32, 24});
  v.push_back({64, 6, 2048, 1408, 2, bf16, bf16, bf16, 6});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cpu, MoeGrid, ::testing::ValuesIn(moe_grid()));

TEST(FusedMoe, TokenResultIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  const MoeCase c{16, 4, 80, 36, 97, DType::kF32, DType::kBF16, DType::kF32};
  MoeData d = make_moe(c);
  std::vector<float> first;
  for (int threads : {1, 2})
    for (int64_t n : {1, 3, 17, 97}) {
      // A batch of n rows whose last row is token 0 of d (the others: later tokens).
      MoeData b;
      b.x = HostTensor(c.x, {n, c.hidden});
      b.ids = HostTensor(DType::kI32, {n, c.k});
      b.weights = HostTensor(DType::kF32, {n, c.k});
      for (int64_t r = 0; r < n; ++r) {
        const int64_t src = r == n - 1 ? 0 : r + 1;
        for (int64_t q = 0; q < c.hidden; ++q) b.x.set(r * c.hidden + q, d.x.get(src * c.hidden + q));
        for (int64_t j = 0; j < c.k; ++j) {
          b.ids.i32()[r * c.k + j] = d.ids.i32()[src * c.k + j];
          b.weights.set(r * c.k + j, d.weights.get(src * c.k + j));
        }
      }
      b.w13 = HostTensor(c.w, {c.experts, 2 * c.inter, c.hidden});
      b.w13.bytes = d.w13.bytes;
      b.w13.t.data = b.w13.bytes.data();
      b.w2 = HostTensor(c.w, {c.experts, c.hidden, c.inter});
      b.w2.bytes = d.w2.bytes;
      b.w2.t.data = b.w2.bytes.data();
      b.out = HostTensor(c.out, {n, c.hidden});
      b.out.fill_nan();
      ASSERT_TRUE(cpu(threads)->fused_moe(params(b)).is_ok());
      std::vector<float> row(b.out.t.ptr<float>() + (n - 1) * c.hidden, b.out.t.ptr<float>() + n * c.hidden);
      if (first.empty()) first = row;
      else EXPECT_TRUE(same_bytes(first.data(), row.data(), row.size() * 4)) << "n=" << n << " threads=" << threads;
    }
}

TEST(FusedMoe, RejectsBadIdsMapsAndShapes) {
  const MoeCase c{8, 2, 16, 8, 3, DType::kF32, DType::kF32, DType::kF32, 4};
  MoeData d = make_moe(c);
  auto be = cpu(1);
  d.ids.i32()[3] = 8;  // experts are 0..7
  Status s = be->fused_moe(params(d));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("topk_ids"), std::string::npos);
  d.ids.i32()[3] = 1;
  d.map.i32()[5] = 4;  // only 4 local experts
  s = be->fused_moe(params(d));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expert_map"), std::string::npos);
  d.map.i32()[5] = -1;
  ops::FusedMoeParams p = params(d);
  p.w2 = p.w2.slice(2, 0, 7);  // inter mismatch with w13
  EXPECT_EQ(be->fused_moe(p).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moex::test

namespace moex::test {
namespace {

// Not a pass/fail criterion: prints how fast one token streams its experts' bf16 weights
// (Qwen3-30B-A3B expert shape, 16 local experts of which the token uses 8).
TEST(FusedMoe, Batch1Bf16Throughput) {
  const int64_t experts = 128, local = 16, k = 8, hidden = 2048, inter = 768;
  HostTensor w13 = random_tensor(DType::kBF16, {local, 2 * inter, hidden}, -0.05, 0.05);
  HostTensor w2 = random_tensor(DType::kBF16, {local, hidden, inter}, -0.05, 0.05);
  HostTensor map(DType::kI32, {experts});
  for (int64_t e = 0; e < experts; ++e) map.i32()[e] = e < local ? int32_t(e) : -1;
  HostTensor x = random_tensor(DType::kF32, {1, hidden});
  HostTensor ids(DType::kI32, {1, k}), wts = random_tensor(DType::kF32, {1, k}, 0, 1), out(DType::kF32, {1, hidden});
  for (int64_t j = 0; j < k; ++j) ids.i32()[j] = int32_t(2 * j);
  ops::FusedMoeParams p{x.t, ids.t, wts.t, w13.t, w2.t, map.t, out.t};
  for (int threads : {1, 2}) {
    auto be = cpu(threads);
    ASSERT_TRUE(be->fused_moe(p).is_ok());
    const int reps = 5;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) ASSERT_TRUE(be->fused_moe(p).is_ok());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    const double bytes = double(k * 3 * inter * hidden * 2);
    std::printf("[ perf ] fused_moe n=1 top-8 of [2048 x 768] bf16 experts, %d threads: %.3f ms, %.2f GB/s\n", threads,
                s * 1e3, bytes / s / 1e9);
  }
}

}  // namespace
}  // namespace moex::test
