// Causal prefill attention on the CPU backend (contract: src/ops/prefill_attention.h) against a
// naive double-precision loop written here from the contract.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cpu_ops/ops_test_util.h"
#include "ops/prefill_attention.h"

namespace moex::test {
namespace {

struct Case {
  int hq = 4, h = 2, dk = 32, dv = 16;
  std::vector<int> lens;
  bool causal = true;
  int window = 0;
  DType in = DType::kF32, out = DType::kF32;
  std::string name() const {
    std::ostringstream s;
    s << "hq " << hq << " h " << h << " dk " << dk << " dv " << dv << (causal ? " causal" : " full") << " w " << window
      << " in " << dtype_name(in) << " out " << dtype_name(out) << " lens";
    for (int l : lens) s << " " << l;
    return s.str();
  }
};

struct PaRun {
  Case c;
  int64_t T = 0;
  std::vector<int64_t> starts;  // [B + 1]
  HostTensor q, k, v, cu, out, lse;
  float scale = 0.f;
  explicit PaRun(const Case& cs) : c(cs) {
    starts.push_back(0);
    for (int l : c.lens) starts.push_back(starts.back() + l);
    T = starts.back();
    q = random_tensor(c.in, {T, c.hq, c.dk}, -2.0, 2.0);
    k = random_tensor(c.in, {T, c.h, c.dk}, -2.0, 2.0);
    v = random_tensor(c.in, {T, c.h, c.dv});
    cu = HostTensor(DType::kI32, {int64_t(c.lens.size()) + 1});
    for (size_t i = 0; i < starts.size(); ++i) cu.i32()[i] = int32_t(starts[i]);
    out = HostTensor(c.out, {T, c.hq, c.dv});
    lse = HostTensor(DType::kF32, {T, c.hq});
    out.fill_nan();
    lse.fill_nan();
    scale = float(1.0 / std::sqrt(double(c.dk)));
  }
  ops::PrefillAttentionParams params() const {
    ops::PrefillAttentionParams p;
    p.q = q.t; p.k = k.t; p.v = v.t; p.cu_seqlens = cu.t;
    p.causal = c.causal; p.window = c.window; p.scale = scale;
    p.out = out.t; p.lse = lse.t;
    return p;
  }
  // Naive reference: out [T, HQ, Dv] and lse [T, HQ] in double.
  void reference(std::vector<double>* ro, std::vector<double>* rl) const {
    ro->assign(size_t(T * c.hq * c.dv), 0.0);
    rl->assign(size_t(T * c.hq), -std::numeric_limits<double>::infinity());
    const int grp = c.hq / c.h;
    for (size_t i = 0; i + 1 < starts.size(); ++i) {
      const int64_t b = starts[i], len = starts[i + 1] - b;
      for (int64_t t = 0; t < len; ++t)
        for (int hh = 0; hh < c.hq; ++hh) {
          const int g = hh / grp;
          std::vector<double> sc;
          std::vector<int64_t> keys;
          for (int64_t s = 0; s < len; ++s) {
            if (c.causal && s > t) continue;
            if (c.window > 0 && t - s >= c.window) continue;
            double d = 0;
            for (int e = 0; e < c.dk; ++e)
              d += q.get(((b + t) * c.hq + hh) * c.dk + e) * k.get(((b + s) * c.h + g) * c.dk + e);
            sc.push_back(d * double(scale));
            keys.push_back(s);
          }
          if (sc.empty()) continue;
          const double mx = *std::max_element(sc.begin(), sc.end());
          double sum = 0;
          for (double& x : sc) { x = std::exp(x - mx); sum += x; }
          for (size_t j = 0; j < sc.size(); ++j)
            for (int e = 0; e < c.dv; ++e)
              (*ro)[size_t(((b + t) * c.hq + hh) * c.dv + e)] += sc[j] / sum * v.get(((b + keys[j]) * c.h + g) * c.dv + e);
          (*rl)[size_t((b + t) * c.hq + hh)] = mx + std::log(sum);
        }
    }
  }
};

void check_case(const Case& c) {
  SCOPED_TRACE(c.name());
  MOEX_TRACE_SEED();
  PaRun r(c);
  auto be = cpu(3);
  ASSERT_TRUE(be->prefill_attention(r.params()).is_ok());
  std::vector<double> ro, rl;
  r.reference(&ro, &rl);
  const std::vector<double> got = r.out.values();
  for (double x : got) ASSERT_TRUE(std::isfinite(x)) << "an output was left unwritten (NaN poison)";
  EXPECT_LT(rel_l2(got, ro), tol_for(c.out, c.in));
  const std::vector<double> gl = r.lse.values();
  double worst = 0;
  // Every row sees at least its own key (window > 0 keeps s = t), so every lse is finite.
  for (size_t i = 0; i < gl.size(); ++i) worst = std::max(worst, std::fabs(gl[i] - rl[i]));
  EXPECT_LT(worst, 2e-4) << "lse";
}

TEST(PrefillAttention, LengthsAroundTheTileSizes) {
  for (int len : {1, 2, 63, 64, 65, 130}) check_case(Case{4, 2, 32, 16, {len}});
}

TEST(PrefillAttention, RaggedBatchWithEmptySequences) { check_case(Case{4, 1, 32, 16, {5, 0, 70, 1, 33}}); }

TEST(PrefillAttention, GqaGroupsAndMlaHeadDims) {
  check_case(Case{8, 1, 48, 32, {37, 20}});   // one KV head for 8 query heads
  check_case(Case{3, 3, 24, 40, {29}});       // group 1
  check_case(Case{2, 1, 192, 128, {40, 9}});  // the MLA prefill shape
}

TEST(PrefillAttention, NonCausalAndWindow) {
  check_case(Case{4, 2, 32, 16, {50, 17}, false, 0});
  check_case(Case{4, 2, 32, 16, {50, 17}, true, 7});
  check_case(Case{4, 2, 32, 16, {50, 17}, false, 5});
}

TEST(PrefillAttention, Bf16InputsAndOutputs) {
  check_case(Case{4, 2, 64, 32, {45, 12}, true, 0, DType::kBF16, DType::kBF16});
  check_case(Case{4, 2, 64, 32, {45}, true, 0, DType::kBF16, DType::kF32});
}

// A sequence's rows do not depend on its neighbours in the batch nor on the thread count.
TEST(PrefillAttention, SequenceAloneMatchesItsRowsInABatchBitForBit) {
  MOEX_TRACE_SEED();
  Case c{4, 2, 32, 16, {19, 77, 3}};
  PaRun batch(c);
  ASSERT_TRUE(cpu(3)->prefill_attention(batch.params()).is_ok());
  PaRun alone(Case{4, 2, 32, 16, {77}});
  // Copy the middle sequence's inputs.
  const int64_t b = batch.starts[1];
  for (int64_t i = 0; i < alone.q.numel(); ++i) alone.q.set(i, batch.q.get(b * c.hq * c.dk + i));
  for (int64_t i = 0; i < alone.k.numel(); ++i) alone.k.set(i, batch.k.get(b * c.h * c.dk + i));
  for (int64_t i = 0; i < alone.v.numel(); ++i) alone.v.set(i, batch.v.get(b * c.h * c.dv + i));
  ASSERT_TRUE(cpu(1)->prefill_attention(alone.params()).is_ok());
  EXPECT_TRUE(same_bytes(alone.out.t.data, batch.out.t.at({b, 0, 0}), size_t(alone.out.t.nbytes())));
  EXPECT_TRUE(same_bytes(alone.lse.t.data, batch.lse.t.at({b, 0}), size_t(alone.lse.t.nbytes())));
}

TEST(PrefillAttention, RejectsBadArguments) {
  PaRun r(Case{4, 2, 32, 16, {10, 6}});
  auto be = cpu(1);
  auto p = r.params();
  p.cu_seqlens.shape[0] = 2;  // cu[B] = 10 != T
  EXPECT_FALSE(be->prefill_attention(p).is_ok());
  p = r.params();
  r.cu.i32()[1] = 20;  // past T and above cu[2]
  EXPECT_FALSE(be->prefill_attention(p).is_ok());
  r.cu.i32()[1] = 10;
  HostTensor k3(DType::kF32, {16, 3, 32});
  p = r.params();
  p.k = k3.t;  // 4 query heads over 3 KV heads
  EXPECT_FALSE(be->prefill_attention(p).is_ok());
  HostTensor lse16(DType::kBF16, {16, 4});
  p = r.params();
  p.lse = lse16.t;
  EXPECT_FALSE(be->prefill_attention(p).is_ok());
  p = r.params();
  p.window = -1;
  EXPECT_FALSE(be->prefill_attention(p).is_ok());
  EXPECT_TRUE(be->prefill_attention(r.params()).is_ok());
}

}  // namespace
}  // namespace moex::test
