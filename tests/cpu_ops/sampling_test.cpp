// The CPU sample op against an independent reference of the rule (full stable sort, fp64
// softmax, top-k, top-p, inverse CDF), plus ties, frequencies and rejected parameters.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/sampling.h"
#include "core/random.h"
#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

struct RowParams {
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  double uniform = 0.0;
};

// Written from the contract without the op's code: every candidate sorted, probabilities
// normalized first. Returns the id and how close the draw came to a boundary.
int32_t reference(const std::vector<float>& logits, const RowParams& p, double* margin) {
  const int64_t vocab = int64_t(logits.size());
  *margin = 1.0;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  if (p.temperature <= 0.f) return order[0];
  size_t keep = p.top_k > 0 ? std::min<size_t>(size_t(p.top_k), order.size()) : order.size();
  std::vector<double> prob(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    prob[i] = std::exp((double(logits[size_t(order[i])]) - double(logits[size_t(order[0])])) / double(p.temperature));
    total += prob[i];
  }
  for (double& q : prob) q /= total;
  if (p.top_p < 1.f) {
    double c = 0;
    for (size_t i = 0; i < keep; ++i) {
      c += prob[i];
      if (c >= double(p.top_p)) {
        *margin = std::min({*margin, c - double(p.top_p), double(p.top_p) - (c - prob[i])});
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += prob[i];
  double c = 0;
  for (size_t i = 0; i < keep; ++i) {
    const double next = c + prob[i] / kept;
    if (p.uniform < next) {
      *margin = std::min({*margin, next - p.uniform, p.uniform - c});
      return order[i];
    }
    c = next;
  }
  return order[keep - 1];
}

struct Batch {
  HostTensor logits, temperature, top_k, top_p, uniform, out;
  ops::SampleParams params() const {
    return {logits.t, temperature.t, top_k.t, top_p.t, uniform.t, out.t};
  }
};

Batch make_batch(DType dtype, int64_t rows, int64_t vocab, DType uniform_dtype = DType::kF32) {
  Batch b;
  b.logits = HostTensor(dtype, {rows, vocab});
  b.temperature = HostTensor(DType::kF32, {rows});
  b.top_k = HostTensor(DType::kI32, {rows});
  b.top_p = HostTensor(DType::kF32, {rows});
  b.uniform = HostTensor(uniform_dtype, {rows});
  b.out = HostTensor(DType::kI32, {rows});
  return b;
}

RowParams random_params(int64_t vocab) {
  RowParams p;
  const int mode = random_int(0, 5);  // greedy, temperature, top-k, top-p, both, both tight
  p.temperature = mode == 0 ? 0.f : float(std::uniform_real_distribution<double>(0.2, 2.0)(rng()));
  if (mode == 2 || mode >= 4) p.top_k = random_int(1, int(std::min<int64_t>(vocab, 60)));
  if (mode == 3 || mode >= 4) p.top_p = mode == 5 ? 0.3f : float(std::uniform_real_distribution<double>(0.5, 0.99)(rng()));
  p.uniform = float(std::uniform_real_distribution<double>(0.0, 1.0)(rng()));
  return p;
}

TEST(CpuSample, MatchesTheReferenceOnRandomRows) {
  MOEX_TRACE_SEED();
  auto backend = cpu(2);
  int compared = 0, near_boundary = 0;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t vocab : {1, 2, 7, 100, 1000}) {
      const int64_t rows = random_int(1, 24);
      Batch b = make_batch(dtype, rows, vocab);
      std::vector<RowParams> ps;
      const double scale = std::uniform_real_distribution<double>(0.5, 6.0)(rng());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t v = 0; v < vocab; ++v) b.logits.set(r * vocab + v, std::normal_distribution<double>(0, scale)(rng()));
        ps.push_back(random_params(vocab));
        b.temperature.set(r, ps.back().temperature);
        b.top_k.i32()[r] = ps.back().top_k;
        b.top_p.set(r, ps.back().top_p);
        b.uniform.set(r, ps.back().uniform);
      }
      b.out.fill_nan();
      const Status st = backend->sample(b.params());
      ASSERT_TRUE(st.is_ok()) << st.message();
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> row(static_cast<size_t>(vocab));
        for (int64_t v = 0; v < vocab; ++v) row[size_t(v)] = float(b.logits.get(r * vocab + v));
        RowParams p = ps[size_t(r)];
        p.uniform = b.uniform.get(r);  // as stored (f32)
        double margin = 1.0;
        const int32_t want = reference(row, p, &margin);
        if (margin < 1e-9) {
          ++near_boundary;
          continue;
        }
        ++compared;
        EXPECT_EQ(b.out.i32()[r], want) << "row " << r << " vocab " << vocab << " T " << p.temperature << " k "
                                        << p.top_k << " p " << p.top_p << " u " << p.uniform;
      }
    }
  }
  EXPECT_GT(compared, 20);
  EXPECT_LE(near_boundary, 2);
}

TEST(CpuSample, TiesGoToTheLowerIdInGreedyAndTopK) {
  auto backend = cpu(1);
  const int64_t vocab = 9;
  Batch b = make_batch(DType::kF32, 4, vocab);
  for (int64_t r = 0; r < 4; ++r) {
    for (int64_t v = 0; v < vocab; ++v) b.logits.set(r * vocab + v, v % 3 == 2 ? 1.0 : 0.0);  // 2, 5, 8 tie at the top
    b.temperature.set(r, r == 0 ? 0.0 : 1.0);
    b.top_k.i32()[r] = 2;  // keeps 2 and 5, never 8
    b.top_p.set(r, 1.0);
  }
  b.uniform.set(0, 0.9);
  b.uniform.set(1, 0.0);
  b.uniform.set(2, 0.49);
  b.uniform.set(3, 0.51);
  ASSERT_TRUE(backend->sample(b.params()).is_ok());
  EXPECT_EQ(b.out.i32()[0], 2);
  EXPECT_EQ(b.out.i32()[1], 2);
  EXPECT_EQ(b.out.i32()[2], 2);
  EXPECT_EQ(b.out.i32()[3], 5);
}

TEST(CpuSample, InverseCdfFollowsTheTruncatedSoftmax) {
  // Weights 4:3:2:1 at T = 1; top_k 3 keeps 4:3:2; top_p 0.5 then keeps the smallest prefix
  // reaching half of that mass: 4:3 (4/9 < 0.5 <= 7/9).
  auto backend = cpu(1);
  const int n = 900;
  for (float top_p : {1.f, 0.5f}) {
    Batch b = make_batch(DType::kF32, n, 4);
    for (int r = 0; r < n; ++r) {
      for (int v = 0; v < 4; ++v) b.logits.set(int64_t(r) * 4 + v, std::log(double(4 - v)));
      b.temperature.set(r, 1.0);
      b.top_k.i32()[r] = 3;
      b.top_p.set(r, top_p);
      b.uniform.set(r, (r + 0.5) / n);  // an even grid over [0, 1)
    }
    ASSERT_TRUE(backend->sample(b.params()).is_ok());
    std::vector<int> counts(4, 0);
    for (int r = 0; r < n; ++r) ++counts[size_t(b.out.i32()[r])];
    if (top_p == 1.f) {
      EXPECT_NEAR(counts[0], 400, 1);
      EXPECT_NEAR(counts[1], 300, 1);
      EXPECT_NEAR(counts[2], 200, 1);
    } else {
      EXPECT_NEAR(counts[0], 514, 1);  // 900 * 4/7
      EXPECT_NEAR(counts[1], 386, 1);
      EXPECT_EQ(counts[2], 0);
    }
    EXPECT_EQ(counts[3], 0);
  }
}

TEST(CpuSample, RawDrawsMapLikeTheHostStream) {
  // i64 uniforms are SplitMix64 outputs: the op must use unit_double(bits), not the bits' value.
  auto backend = cpu(1);
  MOEX_TRACE_SEED();
  const int64_t rows = 64, vocab = 50;
  Batch f = make_batch(DType::kF32, rows, vocab, DType::kI64);
  SplitMix64 stream(seed());
  std::vector<double> u(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < vocab; ++v) f.logits.set(r * vocab + v, std::normal_distribution<double>(0, 2)(rng()));
    f.temperature.set(r, 1.0);
    f.top_k.i32()[r] = 0;
    f.top_p.set(r, 1.0);
    const uint64_t bits = stream.next();
    reinterpret_cast<int64_t*>(f.uniform.t.data)[r] = int64_t(bits);
    u[size_t(r)] = unit_double(bits);
  }
  ASSERT_TRUE(backend->sample(f.params()).is_ok());
  cpu::SampleRowScratch scratch;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row(static_cast<size_t>(vocab));
    for (int64_t v = 0; v < vocab; ++v) row[size_t(v)] = float(f.logits.get(r * vocab + v));
    EXPECT_EQ(f.out.i32()[r], cpu::sample_row(row.data(), vocab, 1.f, 0, 1.f, u[size_t(r)], &scratch));
  }
}

TEST(CpuSample, RejectsBadParameters) {
  auto backend = cpu(1);
  auto fresh = [] {
    Batch b = make_batch(DType::kF32, 2, 5);
    for (int64_t i = 0; i < 10; ++i) b.logits.set(i, double(i % 5));
    for (int64_t r = 0; r < 2; ++r) {
      b.temperature.set(r, 1.0);
      b.top_k.i32()[r] = 0;
      b.top_p.set(r, 1.0);
      b.uniform.set(r, 0.5);
    }
    return b;
  };
  auto expect_rejected = [&](Batch& b, const std::string& needle) {
    const Status st = backend->sample(b.params());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
  };
  {
    Batch b = fresh();
    ASSERT_TRUE(backend->sample(b.params()).is_ok());
  }
  {
    Batch b = fresh();
    b.top_k.i32()[1] = -1;
    expect_rejected(b, "top_k[1]");
  }
  {
    Batch b = fresh();
    b.top_p.set(0, 0.0);
    expect_rejected(b, "top_p[0]");
  }
  {
    Batch b = fresh();
    b.temperature.set(1, std::nan(""));
    expect_rejected(b, "temperature[1]");
  }
  {
    Batch b = fresh();
    b.uniform.set(0, 1.0);
    expect_rejected(b, "uniform[0]");
  }
  {
    Batch b = fresh();
    HostTensor short_out(DType::kI32, {1});
    ops::SampleParams p = b.params();
    p.out_ids = short_out.t;
    const Status st = backend->sample(p);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("out_ids"), std::string::npos) << st.message();
  }
  {
    Batch b = fresh();
    HostTensor f16(DType::kF16, {2, 5});
    ops::SampleParams p = b.params();
    p.logits = f16.t;
    EXPECT_EQ(backend->sample(p).code(), StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace moex::test
