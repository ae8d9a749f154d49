// Operator test sets: the case lists, the naive references, and the CPU subset.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>

#include "backend/backend.h"
#include "bench/host_tensor.h"
#include "bench/reference.h"
#include "bench/synthetic_routing.h"
#include "bench/test_sets.h"

namespace moex::bench {
namespace {

TEST(TestSets, ListsAreLargeFixedAndCoverTheCorners) {
  std::vector<MoeTestCase> moe = fused_moe_test_cases();
  std::vector<MlaTestCase> mla = mla_decode_test_cases();
  EXPECT_GE(moe.size(), 200u);
  EXPECT_GE(mla.size(), 200u);
  std::set<std::string> names;
  bool one = false, few = false, all = false, emap = false, shared = false, f32w = false;
  for (const MoeTestCase& c : moe) {
    EXPECT_TRUE(names.insert(c.name).second) << "duplicate " << c.name;
    one |= c.routing == RoutingMode::kOneExpert;
    few |= c.routing == RoutingMode::kFewExperts;
    all |= c.routing == RoutingMode::kAll && c.top_k == c.experts;
    emap |= c.partial_expert_map;
    shared |= c.shared > 0;
    f32w |= c.weight_dtype == DType::kF32;
  }
  EXPECT_TRUE(one && few && all && emap && shared && f32w);
  names.clear();
  bool len1 = false, p16 = false, p64 = false, q2 = false, edge = false, ragged = false;
  for (const MlaTestCase& c : mla) {
    EXPECT_TRUE(names.insert(c.name).second) << "duplicate " << c.name;
    for (int32_t l : c.kv_lens) {
      len1 |= l == 1;
      edge |= l % c.page_size == 0 || l % c.page_size == 1;
      EXPECT_GE(l, c.q_len);
    }
    p16 |= c.page_size == 16;
    p64 |= c.page_size == 64;
    q2 |= c.q_len == 2;
    ragged |= c.kv_lens.size() > 1 && c.kv_lens[0] != c.kv_lens[1];
  }
  EXPECT_TRUE(len1 && p16 && p64 && q2 && edge && ragged);
  // The same list every time.
  EXPECT_EQ(fused_moe_test_cases()[123].name, moe[123].name);
  EXPECT_EQ(mla_decode_test_cases()[77].kv_lens, mla[77].kv_lens);
}

TEST(TestSets, SubsetSpreadsOverTheList) {
  EXPECT_EQ(subset_indices(10, 0).size(), 10u);
  EXPECT_EQ(subset_indices(10, 50).size(), 10u);
  std::vector<size_t> s = subset_indices(240, 40);
  ASSERT_EQ(s.size(), 40u);
  EXPECT_EQ(s.front(), 0u);
  EXPECT_GE(s.back(), 230u);
  for (size_t i = 1; i < s.size(); ++i) EXPECT_GT(s[i], s[i - 1]);
}

TEST(Routing, ModesDoWhatTheySay) {
  std::mt19937_64 rng(std::random_device{}());
  for (int rep = 0; rep < 20; ++rep) {
    RoutingSpec spec{.tokens = int64_t(1 + rng() % 200), .experts = 64, .top_k = 6, .shared = int64_t(rng() % 3),
                     .mode = RoutingMode::kRandom, .skew = 0, .seed = rng()};
    for (RoutingMode m : {RoutingMode::kRandom, RoutingMode::kOneExpert, RoutingMode::kFewExperts}) {
      spec.mode = m;
      Routing r = make_routing(spec);
      ASSERT_EQ(r.slots, spec.top_k + spec.shared);
      for (int64_t t = 0; t < spec.tokens; ++t) {
        std::set<int32_t> ids;
        double sum = 0;
        for (int64_t j = 0; j < spec.top_k; ++j) {
          ids.insert(r.ids[size_t(t * r.slots + j)]);
          sum += r.weights[size_t(t * r.slots + j)];
          EXPECT_LT(r.ids[size_t(t * r.slots + j)], spec.experts);
        }
        EXPECT_EQ(int64_t(ids.size()), spec.top_k) << "distinct experts per token";
        EXPECT_NEAR(sum, 1.0, 1e-5);
        for (int64_t s = 0; s < spec.shared; ++s) {
          EXPECT_EQ(r.ids[size_t(t * r.slots + spec.top_k + s)], spec.experts + s);
          EXPECT_EQ(r.weights[size_t(t * r.slots + spec.top_k + s)], 1.f);
        }
      }
      if (m == RoutingMode::kOneExpert) {
        EXPECT_EQ(r.experts_hit, spec.top_k + spec.shared);
      }
      if (m == RoutingMode::kFewExperts) {
        EXPECT_LE(r.experts_hit, 2 * spec.top_k + spec.shared);
      }
    }
  }
  Routing all = make_routing({.tokens = 9, .experts = 5, .top_k = 5, .shared = 0, .mode = RoutingMode::kAll, .skew = 0, .seed = rng()});
  EXPECT_EQ(all.experts_hit, 5);
  // Skew concentrates tokens on low expert ids.
  Routing flat = make_routing({.tokens = 2000, .experts = 128, .top_k = 8, .shared = 0, .mode = RoutingMode::kRandom, .skew = 0, .seed = rng()});
  Routing skewed = make_routing({.tokens = 2000, .experts = 128, .top_k = 8, .shared = 0, .mode = RoutingMode::kRandom, .skew = 3, .seed = rng()});
  auto low_share = [](const Routing& r) {
    double low = 0;
    for (int32_t id : r.ids) low += id < 16;
    return low / double(r.ids.size());
  };
  EXPECT_LT(low_share(flat), 0.2);
  EXPECT_GT(low_share(skewed), 0.6);
}

// The naive MLA reference on cases with a known answer: a single key gives back its own latent
// and lse = its score; equal keys give their common value and lse = score + log(count).
TEST(Reference, MlaKnownAnswers) {
  std::mt19937_64 rng(std::random_device{}());
  const int64_t rank = 8, dim = 12, page = 4, heads = 3, len = 7;
  HostTensor q(DType::kF32, {1, heads, dim}), cache(DType::kF32, {3, page, dim});
  fill_uniform(&q, rng(), -1, 1);
  fill_uniform(&cache, rng(), -1, 1);
  // Every slot of the sequence holds the same row.
  for (int64_t s = 1; s < 3 * page; ++s)
    for (int64_t c = 0; c < dim; ++c) cache.ptr<float>()[s * dim + c] = cache.ptr<float>()[c];
  HostTensor bt(DType::kI32, {1, 2}), lens(DType::kI32, {1}), qs(DType::kI32, {2});
  bt.ptr<int32_t>()[0] = 2;
  bt.ptr<int32_t>()[1] = 0;
  lens.ptr<int32_t>()[0] = int32_t(len);
  qs.ptr<int32_t>()[1] = 1;
  ops::MlaAttentionParams p;
  p.q = q.t;
  p.cache = cache.t;
  p.seqs.block_table = bt.t;
  p.seqs.seq_lens = lens.t;
  p.seqs.query_start = qs.t;
  p.seqs.page_size = int(page);
  p.kv_lora_rank = int(rank);
  p.scale = 0.3f;
  std::vector<double> out, lse;
  ASSERT_TRUE(ref::mla_attention(p, &out, &lse).is_ok());
  for (int64_t h = 0; h < heads; ++h) {
    double score = 0;
    for (int64_t c = 0; c < dim; ++c) score += double(q.ptr<float>()[h * dim + c]) * cache.ptr<float>()[c];
    EXPECT_NEAR(lse[size_t(h)], double(p.scale) * score + std::log(double(len)), 1e-9);
    for (int64_t c = 0; c < rank; ++c) EXPECT_NEAR(out[size_t(h * rank + c)], cache.ptr<float>()[c], 1e-9);
  }
}

// The naive fused-MoE reference against a hand-written single-expert SwiGLU.
TEST(Reference, FusedMoeSingleExpert) {
  std::mt19937_64 rng(std::random_device{}());
  const int64_t h = 5, inter = 3, experts = 4;
  HostTensor x(DType::kF32, {1, h}), w13(DType::kF32, {experts, 2 * inter, h}), w2(DType::kF32, {experts, h, inter});
  HostTensor ids(DType::kI32, {1, 1}), wt(DType::kF32, {1, 1}), out(DType::kF32, {1, h});
  fill_uniform(&x, rng(), -1, 1);
  fill_uniform(&w13, rng(), -1, 1);
  fill_uniform(&w2, rng(), -1, 1);
  const int32_t e = int32_t(rng() % experts);
  ids.ptr<int32_t>()[0] = e;
  wt.ptr<float>()[0] = 0.7f;
  std::vector<double> got;
  ASSERT_TRUE(ref::fused_moe({.x = x.t, .topk_ids = ids.t, .topk_weights = wt.t, .w13 = w13.t, .w2 = w2.t,
                              .expert_map = Tensor{}, .out = out.t},
                             &got)
                  .is_ok());
  const float* W13 = w13.ptr<float>() + e * 2 * inter * h;
  const float* W2 = w2.ptr<float>() + e * h * inter;
  for (int64_t c = 0; c < h; ++c) {
    double y = 0;
    for (int64_t i = 0; i < inter; ++i) {
      double g = 0, u = 0;
      for (int64_t k = 0; k < h; ++k) {
        g += double(W13[i * h + k]) * x.ptr<float>()[k];
        u += double(W13[(inter + i) * h + k]) * x.ptr<float>()[k];
      }
      y += double(W2[c * inter + i]) * (g / (1 + std::exp(-g))) * u;
    }
    EXPECT_NEAR(got[size_t(c)], double(0.7f) * y, 1e-9);
  }
}

// The CI subset: the CPU backend against the naive double-precision references.
TEST(TestSets, CpuBackendPassesFusedMoeSubset) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::vector<MoeTestCase> all = fused_moe_test_cases(), cases;
  for (size_t i : subset_indices(all.size(), 40)) cases.push_back(all[i]);
  Expected<std::vector<CaseResult>> r = run_moe_test_set(*cpu, nullptr, cases, nullptr);
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->size(), 40u);
  for (const CaseResult& c : *r) EXPECT_TRUE(c.passed) << c.name << " rel_err " << c.rel_err << " " << c.error;
}

TEST(TestSets, CpuBackendPassesMlaSubset) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::vector<MlaTestCase> all = mla_decode_test_cases(), cases;
  for (size_t i : subset_indices(all.size(), 40)) cases.push_back(all[i]);
  Expected<std::vector<CaseResult>> r = run_mla_test_set(*cpu, nullptr, cases, nullptr);
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->size(), 40u);
  for (const CaseResult& c : *r) EXPECT_TRUE(c.passed) << c.name << " rel_err " << c.rel_err << " " << c.error;
}

TEST(TestSets, NsaListCoversTheCorners) {
  std::vector<NsaTestCase> all = nsa_test_cases();
  EXPECT_GE(all.size(), 200u);
  std::set<std::string> names;
  std::set<int64_t> groups;
  bool len1 = false, edge = false, ragged = false, given = false, pooled = false, l_ne_d = false, tiny_window = false,
       no_window = false, wide_window = false, ties = false, dec16 = false, dec64 = false, dec_given = false,
       n_above_blocks = false, zero_len = false;
  for (const NsaTestCase& c : all) {
    EXPECT_TRUE(names.insert(c.name).second) << "duplicate " << c.name;
    EXPECT_EQ(c.q_heads % c.kv_heads, 0) << c.name;
    groups.insert(c.q_heads / c.kv_heads);
    int32_t max_len = 0;
    for (int32_t l : c.lens) {
      len1 |= l == 1;
      zero_len |= l == 0;
      edge |= l >= c.cfg.block_len && (l - c.cfg.block_len) % c.cfg.block_stride == 0;
      max_len = std::max(max_len, l);
      if (c.decode) {
        EXPECT_GE(l, 1) << c.name;
      }
    }
    ragged |= c.lens.size() > 2;
    (c.given_cmp ? given : pooled) = true;
    l_ne_d |= c.cfg.block_len != c.cfg.block_stride;
    tiny_window |= c.cfg.window > 0 && c.cfg.window < c.cfg.block_len;
    no_window |= c.cfg.window == 0;
    wide_window |= c.cfg.window > max_len;
    ties |= c.ties;
    n_above_blocks |= c.cfg.select_n * c.cfg.select_len > max_len;
    dec16 |= c.decode && c.page_size == 16;
    dec64 |= c.decode && c.page_size == 64;
    dec_given |= c.decode && c.given_cmp;
  }
  EXPECT_TRUE(len1 && edge && ragged && given && pooled && l_ne_d && tiny_window && no_window && wide_window && ties &&
              n_above_blocks && dec16 && dec64 && dec_given && zero_len);
  EXPECT_TRUE(groups.count(1) && groups.count(4) && groups.count(16));
  EXPECT_EQ(nsa_test_cases()[150].name, all[150].name);
}

// Identical keys make every softmax uniform: each branch is then a plain mean of its values.
TEST(Reference, NsaUniformScoresGiveMeans) {
  const int64_t len = 40, hq = 2, h = 1, dk = 4, dv = 3;
  ops::NsaConfig cfg;
  cfg.block_len = 8;
  cfg.block_stride = 8;
  cfg.select_len = 8;
  cfg.select_n = 3;
  cfg.num_init = 1;
  cfg.num_local = 1;
  cfg.window = 5;
  cfg.scale = 0.5f;
  HostTensor q(DType::kF32, {len, hq, dk}), k(DType::kF32, {len, h, dk}), v(DType::kF32, {len, h, dv}),
      gates(DType::kF32, {len, hq, 3}), cu(DType::kI32, {2});
  fill_uniform(&q, 3, -1.f, 1.f);
  fill_uniform(&v, 4, -1.f, 1.f);
  fill_uniform(&gates, 5, 0.f, 1.f);
  std::fill_n(k.ptr<float>(), k.numel(), 0.25f);
  cu.ptr<int32_t>()[0] = 0;
  cu.ptr<int32_t>()[1] = int32_t(len);
  ops::NsaForwardParams p;
  p.q = q.t;
  p.k = k.t;
  p.v = v.t;
  p.gates = gates.t;
  p.cu_seqlens = cu.t;
  p.cfg = cfg;
  ref::NsaResult r;
  ASSERT_TRUE(ref::nsa_forward(p, &r).is_ok());
  auto vv = [&](int64_t s, int64_t e) { return double(v.ptr<float>()[s * dv + e]); };
  for (int64_t t = 0; t < len; ++t) {
    // l = d = l': every complete block has importance 1 / nc, so all unforced blocks tie and
    // the free place goes to the lowest of them, block 1.
    const int64_t nb = t / 8 + 1;
    std::vector<int32_t> want_sel;
    for (int64_t b = 0; b < nb && int64_t(want_sel.size()) < 3; ++b)
      if (b == 0 || b == nb - 1 || b == 1) want_sel.push_back(int32_t(b));
    std::sort(want_sel.begin(), want_sel.end());
    want_sel.resize(3, -1);
    EXPECT_EQ(std::vector<int32_t>(r.sel_idx.begin() + t * 3, r.sel_idx.begin() + t * 3 + 3), want_sel) << "t " << t;
    const int64_t nc = t >= 7 ? (t - 7) / 8 + 1 : 0;
    for (int64_t e = 0; e < dv; ++e) {
      double win = 0, sel = 0, cmp = 0;
      int64_t sel_n = 0;
      for (int64_t s = std::max<int64_t>(0, t - 4); s <= t; ++s) win += vv(s, e) / double(std::min<int64_t>(5, t + 1));
      for (int32_t b : want_sel)
        for (int64_t s = b * 8; b >= 0 && s < b * 8 + 8 && s <= t; ++s, ++sel_n) sel += vv(s, e);
      for (int64_t j = 0; j < nc; ++j)
        for (int64_t s = j * 8; s < j * 8 + 8; ++s) cmp += vv(s, e) / 8.0 / double(nc);
      for (int64_t hh = 0; hh < hq; ++hh) {
        const size_t o = size_t((t * hq + hh) * dv + e);
        EXPECT_NEAR(r.out_win[o], win, 1e-12);
        EXPECT_NEAR(r.out_sel[o], sel / double(sel_n), 1e-12);
        EXPECT_NEAR(r.out_cmp[o], cmp, 1e-12);
      }
    }
  }
}

TEST(TestSets, CpuBackendPassesNsaSubset) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::vector<NsaTestCase> all = nsa_test_cases(), cases;
  for (size_t i : subset_indices(all.size(), 30)) cases.push_back(all[i]);
  Expected<std::vector<CaseResult>> r = run_nsa_test_set(*cpu, nullptr, cases, nullptr);
  ASSERT_TRUE(r) << r.status().message();
  ASSERT_EQ(r->size(), 30u);
  int near_ties = 0;
  for (const CaseResult& c : *r) {
    EXPECT_TRUE(c.passed) << c.name << " rel_err " << c.rel_err << " " << c.error;
    near_ties += c.near_ties;
  }
  std::printf("NSA subset: %d sel_idx near ties accepted\n", near_ties);
}

// The path `--device cuda` takes (reference = the CPU backend, inputs converted to its
// activation dtype), exercised with a second CPU backend as the target.
TEST(TestSets, BackendAsReferencePath) {
  std::unique_ptr<Backend> target = make_cpu_backend(), reference = make_cpu_backend();
  std::vector<MoeTestCase> moe = fused_moe_test_cases(), moe_cases;
  for (size_t i : subset_indices(moe.size(), 8)) moe_cases.push_back(moe[i]);
  Expected<std::vector<CaseResult>> r = run_moe_test_set(*target, reference.get(), moe_cases, nullptr);
  ASSERT_TRUE(r) << r.status().message();
  for (const CaseResult& c : *r) EXPECT_TRUE(c.passed && c.rel_err < 1e-6) << c.name << " " << c.rel_err << " " << c.error;
  std::vector<MlaTestCase> mla = mla_decode_test_cases(), mla_cases;
  for (size_t i : subset_indices(mla.size(), 8)) mla_cases.push_back(mla[i]);
  Expected<std::vector<CaseResult>> m = run_mla_test_set(*target, reference.get(), mla_cases, nullptr);
  ASSERT_TRUE(m) << m.status().message();
  for (const CaseResult& c : *m) EXPECT_TRUE(c.passed && c.rel_err < 1e-6) << c.name << " " << c.rel_err << " " << c.error;
  std::vector<NsaTestCase> nsa = nsa_test_cases(), nsa_cases;
  for (size_t i : subset_indices(nsa.size(), 8)) nsa_cases.push_back(nsa[i]);
  Expected<std::vector<CaseResult>> s = run_nsa_test_set(*target, reference.get(), nsa_cases, nullptr);
  ASSERT_TRUE(s) << s.status().message();
  for (const CaseResult& c : *s)
    EXPECT_TRUE(c.passed && c.rel_err == 0 && c.near_ties == 0) << c.name << " " << c.rel_err << " " << c.error;
}

// A case passes on the CPU, and the error metric flags NaN (untouched poisoned output) and
// a single wrong element.
TEST(TestSets, ErrorMetricCatchesWrongValues) {
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  MoeTestCase c = fused_moe_test_cases()[5];
  CaseResult ok = run_moe_case(*cpu, nullptr, c);
  EXPECT_TRUE(ok.passed) << ok.rel_err;
  // Poisoned output: a backend that leaves out untouched is reported with an infinite error.
  HostTensor nan(DType::kF32, {2, 3});
  fill_nan(&nan);
  EXPECT_TRUE(std::isinf(rel_l2_error(nan, std::vector<double>(6, 1.0))));
  std::vector<double> a(100), b(100);
  std::mt19937_64 rng(std::random_device{}());
  for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] = double(rng() % 1000) / 1000.0 + 0.5;
  EXPECT_EQ(rel_l2_error(a, b), 0.0);
  a[17] += 1.0;
  EXPECT_GT(rel_l2_error(a, b), 1e-3);
}

}  // namespace
}  // namespace moex::bench
