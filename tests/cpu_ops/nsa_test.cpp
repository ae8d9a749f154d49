// Native Sparse Attention on the CPU backend (contract: src/ops/nsa.h) against a naive double
// implementation written here from the contract's definitions: straight loops, no shared code
// with the backend.
#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "cpu_ops/ops_test_util.h"
#include "ops/nsa.h"

namespace moex::test {
namespace {

using ops::NsaConfig;

int64_t n_cmp(int64_t len, const NsaConfig& c) { return len >= c.block_len ? (len - c.block_len) / c.block_stride + 1 : 0; }

struct Case {
  int hq = 4, h = 1, dk = 16, dv = 16;
  NsaConfig cfg;
  std::vector<int> lens;
  DType in = DType::kF32, out = DType::kF32;
  bool given_cmp = false;
  std::string name() const {
    std::ostringstream s;
    s << "hq " << hq << " h " << h << " dk " << dk << " dv " << dv << " l/d/l' " << cfg.block_len << "/"
      << cfg.block_stride << "/" << cfg.select_len << " n " << cfg.select_n << " w " << cfg.window << " lens";
    for (int l : lens) s << " " << l;
    s << (given_cmp ? " given cmp" : " pooled") << " in " << dtype_name(in) << " out " << dtype_name(out);
    return s.str();
  }
};

// Inputs and outputs of one forward call, owned.
struct Fwd {
  Case c;
  int64_t T = 0, Tc = 0;
  HostTensor q, k, v, gates, cu, k_cmp, v_cmp, cu_cmp, out, out_cmp, out_sel, out_win, sel_idx;
  std::vector<int64_t> starts, cmp_starts;  // [B + 1]

  explicit Fwd(const Case& cs) : c(cs) {
    starts.push_back(0);
    cmp_starts.push_back(0);
    for (int l : c.lens) {
      starts.push_back(starts.back() + l);
      cmp_starts.push_back(cmp_starts.back() + n_cmp(l, c.cfg));
    }
    T = starts.back();
    Tc = cmp_starts.back();
    q = random_tensor(c.in, {T, c.hq, c.dk});
    k = random_tensor(c.in, {T, c.h, c.dk});
    v = random_tensor(c.in, {T, c.h, c.dv});
    gates = random_tensor(c.in, {T, c.hq, 3}, 0.0, 1.0);
    cu = HostTensor(DType::kI32, {int64_t(c.lens.size()) + 1});
    for (size_t i = 0; i < starts.size(); ++i) cu.i32()[i] = int32_t(starts[i]);
    if (c.given_cmp) {
      k_cmp = random_tensor(c.in, {Tc, c.h, c.dk});
      v_cmp = random_tensor(c.in, {Tc, c.h, c.dv});
      cu_cmp = HostTensor(DType::kI32, {int64_t(c.lens.size()) + 1});
      for (size_t i = 0; i < cmp_starts.size(); ++i) cu_cmp.i32()[i] = int32_t(cmp_starts[i]);
    }
    for (HostTensor* o : {&out, &out_cmp, &out_sel, &out_win}) {
      *o = HostTensor(c.out, {T, c.hq, c.dv});
      o->fill_nan();
    }
    sel_idx = HostTensor(DType::kI32, {T, c.h, c.cfg.select_n});
    std::fill(sel_idx.i32(), sel_idx.i32() + sel_idx.numel(), INT_MIN);
  }
  ops::NsaForwardParams params() const {
    ops::NsaForwardParams p;
    p.q = q.t;
    p.k = k.t;
    p.v = v.t;
    p.gates = gates.t;
    p.cu_seqlens = cu.t;
    if (c.given_cmp) {
      p.k_cmp = k_cmp.t;
      p.v_cmp = v_cmp.t;
      p.cu_cmp = cu_cmp.t;
    }
    p.cfg = c.cfg;
    p.out = out.t;
    p.out_cmp = out_cmp.t;
    p.out_sel = out_sel.t;
    p.out_win = out_win.t;
    p.sel_idx = sel_idx.t;
    return p;
  }
};

// The naive result: branch outputs [T, HQ, Dv] and the selection compared on the way.
struct Naive {
  std::vector<double> out, ocmp, osel, owin;
  int mismatches = 0, near_ties = 0;
  std::string first_mismatch;
};

// Softmax attention of one query over rows (key(i), val(i)), double.
template <class K, class V>
void naive_attend(const std::vector<double>& qv, int64_t rows, double scale, K&& key, V&& val, int64_t dv,
                  double* out, std::vector<double>* probs = nullptr) {
  std::fill(out, out + dv, 0.0);
  if (probs) probs->assign(size_t(rows), 0.0);
  if (rows == 0) return;
  std::vector<double> sc(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    double dot = 0;
    for (size_t e = 0; e < qv.size(); ++e) dot += qv[e] * key(i, int64_t(e));
    sc[size_t(i)] = dot * scale;
  }
  const double mx = *std::max_element(sc.begin(), sc.end());
  double sum = 0;
  for (double& s : sc) sum += (s = std::exp(s - mx));
  for (int64_t i = 0; i < rows; ++i) {
    const double pi = sc[size_t(i)] / sum;
    if (probs) (*probs)[size_t(i)] = pi;
    for (int64_t e = 0; e < dv; ++e) out[e] += pi * val(i, e);
  }
}

// The contract, literally. Where the op's selection differs from the naive one only by blocks
// whose naive importances agree within 1e-5 relative (a near tie f32 rounding may flip), the
// op's selection is used for o_sel and counted as a near tie.
Naive naive_forward(const Fwd& f) {
  const Case& c = f.c;
  const NsaConfig& cfg = c.cfg;
  const int64_t g = c.hq / c.h, dk = c.dk, dv = c.dv;
  Naive r;
  for (auto* v : {&r.out, &r.ocmp, &r.osel, &r.owin}) v->assign(size_t(f.T * c.hq * dv), 0.0);
  for (size_t sq = 0; sq + 1 < f.starts.size(); ++sq) {
    const int64_t base = f.starts[sq], len = f.starts[sq + 1] - base, nc_all = n_cmp(len, cfg);
    for (int64_t kv = 0; kv < c.h; ++kv) {
      // Compressed keys / values of this sequence and head: [nc_all][dk], [nc_all][dv].
      std::vector<std::vector<double>> kc(size_t(nc_all), std::vector<double>(size_t(dk), 0.0));
      std::vector<std::vector<double>> vc(size_t(nc_all), std::vector<double>(size_t(dv), 0.0));
      for (int64_t j = 0; j < nc_all; ++j) {
        for (int64_t e = 0; e < dk; ++e) {
          if (c.given_cmp) {
            kc[size_t(j)][size_t(e)] = f.k_cmp.get(((f.cmp_starts[sq] + j) * c.h + kv) * dk + e);
          } else {
            for (int64_t s = j * cfg.block_stride; s < j * cfg.block_stride + cfg.block_len; ++s)
              kc[size_t(j)][size_t(e)] += f.k.get(((base + s) * c.h + kv) * dk + e) / cfg.block_len;
          }
        }
        for (int64_t e = 0; e < dv; ++e) {
          if (c.given_cmp) {
            vc[size_t(j)][size_t(e)] = f.v_cmp.get(((f.cmp_starts[sq] + j) * c.h + kv) * dv + e);
          } else {
            for (int64_t s = j * cfg.block_stride; s < j * cfg.block_stride + cfg.block_len; ++s)
              vc[size_t(j)][size_t(e)] += f.v.get(((base + s) * c.h + kv) * dv + e) / cfg.block_len;
          }
        }
      }
      auto raw_k = [&](int64_t s, int64_t e) { return f.k.get(((base + s) * c.h + kv) * dk + e); };
      auto raw_v = [&](int64_t s, int64_t e) { return f.v.get(((base + s) * c.h + kv) * dv + e); };
      for (int64_t t = 0; t < len; ++t) {
        const int64_t row = base + t, nc = (t >= cfg.block_len - 1) ? (t - cfg.block_len + 1) / cfg.block_stride + 1 : 0;
        const int64_t nb = t / cfg.select_len + 1;
        std::vector<double> imp(static_cast<size_t>(nb), 0.0);
        std::vector<std::vector<double>> qs;
        for (int64_t hh = 0; hh < g; ++hh) {
          const int64_t head = kv * g + hh;
          std::vector<double> qv(static_cast<size_t>(dk));
          for (int64_t e = 0; e < dk; ++e) qv[size_t(e)] = f.q.get((row * c.hq + head) * dk + e);
          qs.push_back(qv);
          std::vector<double> probs;
          naive_attend(
              qv, nc, cfg.scale, [&](int64_t j, int64_t e) { return kc[size_t(j)][size_t(e)]; },
              [&](int64_t j, int64_t e) { return vc[size_t(j)][size_t(e)]; }, dv,
              &r.ocmp[size_t((row * c.hq + head) * dv)], &probs);
          for (int64_t b = 0; b < nb; ++b)
            for (int64_t j = 0; j < nc; ++j) {
              const int64_t lo = j * cfg.block_stride, hi = lo + cfg.block_len;  // [lo, hi)
              if (lo < (b + 1) * cfg.select_len && hi > b * cfg.select_len) imp[size_t(b)] += probs[size_t(j)];
            }
        }
        // Selection: forced blocks, then (importance desc, index asc).
        std::vector<int> chosen;
        std::vector<int> rest;
        for (int64_t b = 0; b < nb; ++b) {
          if (b < cfg.num_init || b > t / cfg.select_len - cfg.num_local) chosen.push_back(int(b));
          else rest.push_back(int(b));
        }
        std::stable_sort(rest.begin(), rest.end(), [&](int a, int b) { return imp[size_t(a)] > imp[size_t(b)]; });
        for (int b : rest)
          if (int(chosen.size()) < cfg.select_n) chosen.push_back(b);
        std::sort(chosen.begin(), chosen.end());
        // Compare with the op.
        std::vector<int> got;
        for (int i = 0; i < cfg.select_n; ++i) {
          const int32_t s = f.sel_idx.t.ptr<const int32_t>()[(row * c.h + kv) * cfg.select_n + i];
          if (i < int(chosen.size())) got.push_back(s);
          else if (s != -1) got.push_back(s);  // padding must be -1
        }
        if (got != chosen) {
          std::vector<int> diff;
          std::set_symmetric_difference(chosen.begin(), chosen.end(), got.begin(), got.end(), std::back_inserter(diff));
          bool near = got.size() == chosen.size();
          double lo = 1e300, hi = -1e300;
          for (int b : diff) {
            if (b < 0 || b >= nb) { near = false; break; }
            lo = std::min(lo, imp[size_t(b)]);
            hi = std::max(hi, imp[size_t(b)]);
          }
          if (near && hi - lo <= 1e-5 * std::max(std::abs(hi), 1e-30)) {
            ++r.near_ties;
            chosen = got;
          } else if (r.mismatches++ == 0) {
            r.first_mismatch = "row " + std::to_string(row) + " kv " + std::to_string(kv);
          }
        }
        std::vector<int64_t> sel_pos;
        for (int b : chosen)
          for (int64_t s = int64_t(b) * cfg.select_len; s < (b + 1) * int64_t(cfg.select_len) && s <= t; ++s)
            sel_pos.push_back(s);
        const int64_t wlo = cfg.window > 0 ? std::max<int64_t>(0, t - cfg.window + 1) : t + 1;
        for (int64_t hh = 0; hh < g; ++hh) {
          const int64_t head = kv * g + hh, o = (row * c.hq + head) * dv;
          naive_attend(
              qs[size_t(hh)], int64_t(sel_pos.size()), cfg.scale,
              [&](int64_t i, int64_t e) { return raw_k(sel_pos[size_t(i)], e); },
              [&](int64_t i, int64_t e) { return raw_v(sel_pos[size_t(i)], e); }, dv, &r.osel[size_t(o)]);
          naive_attend(
              qs[size_t(hh)], t + 1 - wlo, cfg.scale, [&](int64_t i, int64_t e) { return raw_k(wlo + i, e); },
              [&](int64_t i, int64_t e) { return raw_v(wlo + i, e); }, dv, &r.owin[size_t(o)]);
          for (int64_t e = 0; e < dv; ++e) {
            const int64_t gi = (row * c.hq + head) * 3;
            r.out[size_t(o + e)] = f.gates.get(gi) * r.ocmp[size_t(o + e)] + f.gates.get(gi + 1) * r.osel[size_t(o + e)] +
                                   f.gates.get(gi + 2) * r.owin[size_t(o + e)];
          }
        }
      }
    }
  }
  return r;
}

double tol(const Case& c) { return (c.in == DType::kBF16 || c.out == DType::kBF16) ? 8e-3 : 5e-5; }

void check_forward(const Case& c, int threads = 2) {
  SCOPED_TRACE(c.name());
  Fwd f(c);
  auto be = cpu(threads);
  const Status s = be->nsa_forward(f.params());
  ASSERT_TRUE(s.is_ok()) << s.message();
  const Naive r = naive_forward(f);
  EXPECT_EQ(r.mismatches, 0) << "sel_idx differs first at " << r.first_mismatch;
  const double t = tol(c);
  EXPECT_LT(rel_l2(f.out.values(), r.out), t) << "out";
  EXPECT_LT(rel_l2(f.out_cmp.values(), r.ocmp), t) << "out_cmp";
  EXPECT_LT(rel_l2(f.out_sel.values(), r.osel), t) << "out_sel";
  EXPECT_LT(rel_l2(f.out_win.values(), r.owin), t) << "out_win";
  if (r.near_ties > 0) std::printf("  [%s] near ties accepted: %d\n", c.name().c_str(), r.near_ties);
}

NsaConfig cfg_of(int l, int d, int lp, int n, int w, int init = 1, int local = 2) {
  NsaConfig c;
  c.block_len = l;
  c.block_stride = d;
  c.select_len = lp;
  c.select_n = n;
  c.window = w;
  c.num_init = init;
  c.num_local = local;
  c.scale = 0.7f;
  return c;
}

}  // namespace

TEST(NsaForward, LengthsAndGroupsGrid) {
  MOEX_TRACE_SEED();
  const int l = 8;
  for (auto [hq, h] : {std::pair{1, 1}, std::pair{8, 2}, std::pair{16, 1}})
    for (int len : {1, l - 1, l, l + 1, 3 * l + 5, 6 * l + 3}) {
      Case c;
      c.hq = hq;
      c.h = h;
      c.cfg = cfg_of(l, l, l, 3, 5, 1, 1);
      c.lens = {len};
      check_forward(c);
    }
}

TEST(NsaForward, RaggedBatches) {
  MOEX_TRACE_SEED();
  for (bool given : {false, true}) {
    Case c;
    c.hq = 8;
    c.h = 2;
    c.dk = 24;
    c.dv = 16;
    c.cfg = cfg_of(8, 8, 8, 4, 6);
    c.lens = {1, 37, 0, 8, 17, 64};
    c.given_cmp = given;
    check_forward(c);
  }
}

TEST(NsaForward, CompressionStrideBelowBlockLength) {
  MOEX_TRACE_SEED();
  // The paper's ratios (l = 2d, l' = 4d) scaled down, and l' < l (a compressed block overlaps
  // three selection blocks).
  for (auto [l, d, lp] : {std::tuple{8, 4, 16}, std::tuple{16, 8, 8}, std::tuple{12, 4, 8}})
    for (bool given : {false, true}) {
      Case c;
      c.hq = 4;
      c.h = 1;
      c.cfg = cfg_of(l, d, lp, 5, 7);
      c.lens = {3, 2 * lp - 1, 5 * lp + 3};
      c.given_cmp = given;
      check_forward(c);
    }
}

TEST(NsaForward, WindowsAndSelectCounts) {
  MOEX_TRACE_SEED();
  for (int w : {0, 3, 1000})
    for (int n : {3, 4, 16}) {
      Case c;
      c.hq = 4;
      c.h = 2;
      c.dk = 8;
      c.dv = 12;
      c.cfg = cfg_of(4, 4, 8, n, w);
      c.lens = {2, 41};
      check_forward(c);
    }
  // No forced blocks at all, and only leading forced blocks.
  for (auto [init, local] : {std::pair{0, 0}, std::pair{2, 0}, std::pair{0, 1}}) {
    Case c;
    c.cfg = cfg_of(4, 4, 4, 3, 2, init, local);
    c.lens = {33};
    check_forward(c);
  }
}

TEST(NsaForward, Bf16InputsAndOutputs) {
  MOEX_TRACE_SEED();
  for (auto [in, out] : {std::pair{DType::kBF16, DType::kBF16}, std::pair{DType::kBF16, DType::kF32},
                         std::pair{DType::kF32, DType::kBF16}}) {
    Case c;
    c.hq = 8;
    c.h = 2;
    c.dk = 32;
    c.dv = 16;
    c.cfg = cfg_of(8, 4, 8, 4, 9);
    c.lens = {50, 13};
    c.in = in;
    c.out = out;
    check_forward(c);
  }
}

TEST(NsaForward, ThreadCountChangesNoBit) {
  MOEX_TRACE_SEED();
  Case c;
  c.hq = 8;
  c.h = 2;
  c.cfg = cfg_of(8, 4, 8, 4, 9);
  c.lens = {70, 33};
  Fwd a(c);
  Fwd b(c);
  b.q.bytes = a.q.bytes;
  b.k.bytes = a.k.bytes;
  b.v.bytes = a.v.bytes;
  b.gates.bytes = a.gates.bytes;
  ASSERT_TRUE(cpu(1)->nsa_forward(a.params()).is_ok());
  ASSERT_TRUE(cpu(2)->nsa_forward(b.params()).is_ok());
  EXPECT_TRUE(same_bytes(a.out.t.data, b.out.t.data, a.out.t.nbytes()));
  EXPECT_TRUE(same_bytes(a.sel_idx.t.data, b.sel_idx.t.data, a.sel_idx.t.nbytes()));
}

// Hand-built selection: Dk = 1, q = 1, every token of block b has key kb, so a compressed block
// (l = d = l' = 4) has key kb and p_cmp(b) = exp(s kb) / sum; importance = p_cmp.
TEST(NsaForward, ForcedBlocksAndTieRule) {
  struct Hand {
    std::vector<float> keys;  // per block
    int select_n, num_init, num_local;
    std::vector<int32_t> want;  // of the last token, -1 padded
  };
  const std::vector<Hand> cases = {
      // blocks 1 and 3 tie exactly (same keys): the lower index wins the one free place.
      {{-5, 2, 1, 2, 0}, 3, 1, 1, {0, 1, 4}},
      // block 3 strictly best now.
      {{-5, 2, 1, 2.5f, 0}, 3, 1, 1, {0, 3, 4}},
      // forced blocks fill every place: block 0 despite the lowest importance, and 3, 4 local.
      {{-5, 2, 1, 2.5f, 0}, 3, 1, 2, {0, 3, 4}},
      // more places than blocks: all five, padded.
      {{-5, 2, 1, 2.5f, 0}, 7, 1, 2, {0, 1, 2, 3, 4, -1, -1}},
      // no forced blocks: the three best, ties (1 and 3 at 2) by index, then 4 (0.5) over 2 (0).
      {{-5, 2, 0, 2, 0.5f}, 3, 0, 0, {1, 3, 4}},
      {{-5, 2, 2, 2, 0.5f}, 2, 0, 0, {1, 2}},
  };
  for (const Hand& hc : cases) {
    Case c;
    c.hq = 2;
    c.h = 1;
    c.dk = 1;
    c.dv = 2;
    c.cfg = cfg_of(4, 4, 4, hc.select_n, 0, hc.num_init, hc.num_local);
    c.cfg.scale = 1.f;
    c.lens = {20};
    Fwd f(c);
    for (int64_t t = 0; t < 20; ++t) {
      f.k.set(t, hc.keys[size_t(t / 4)]);
      for (int h = 0; h < 2; ++h) f.q.set(t * 2 + h, 1.0);
    }
    ASSERT_TRUE(cpu()->nsa_forward(f.params()).is_ok());
    std::vector<int32_t> got(f.sel_idx.i32() + 19 * hc.select_n, f.sel_idx.i32() + 20 * hc.select_n);
    EXPECT_EQ(got, hc.want);
    // The naive implementation agrees on every row (no near-tie excuse needed here).
    const Naive r = naive_forward(f);
    EXPECT_EQ(r.mismatches + r.near_ties, 0) << r.first_mismatch;
    EXPECT_LT(rel_l2(f.out.values(), r.out), 5e-5);
  }
}

TEST(NsaForward, RejectsBadInputs) {
  Case c;
  c.hq = 4;
  c.h = 2;
  c.cfg = cfg_of(8, 4, 8, 4, 4);
  c.lens = {10, 6};
  Fwd f(c);
  auto be = cpu();
  auto expect_bad = [&](ops::NsaForwardParams p, const std::string& needle) {
    const Status s = be->nsa_forward(p);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
  };
  ASSERT_TRUE(be->nsa_forward(f.params()).is_ok());
  auto p = f.params();
  p.cfg.block_len = 6;  // not a multiple of d = 4
  expect_bad(p, "cfg.block_len");
  p = f.params();
  p.cfg.select_len = 6;
  expect_bad(p, "cfg.select_len");
  p = f.params();
  p.cfg.select_n = 2;  // < num_init + num_local
  expect_bad(p, "cfg.select_n");
  p = f.params();
  p.cfg.block_stride = 0;
  expect_bad(p, "cfg.block_stride");
  p = f.params();
  p.cfg.window = -1;
  expect_bad(p, "cfg.window");
  HostTensor q3(DType::kF32, {f.T, 3, c.dk});  // 3 heads over 2 kv heads
  p = f.params();
  p.q = q3.t;
  expect_bad(p, "multiple of kv heads");
  p = f.params();
  p.k = p.k.slice(2, 0, c.dk - 1);
  expect_bad(p, "k dim 2");
  p = f.params();
  p.gates = p.gates.slice(2, 0, 2);
  expect_bad(p, "gates dim 2");
  p = f.params();
  p.out = p.out.slice(0, 0, f.T - 1);
  expect_bad(p, "out dim 0");
  HostTensor sel_bad(DType::kI32, {f.T, c.h, 5});
  p = f.params();
  p.sel_idx = sel_bad.t;
  expect_bad(p, "sel_idx dim 2");
  HostTensor sel_f(DType::kF32, {f.T, c.h, 4});
  p = f.params();
  p.sel_idx = sel_f.t;
  expect_bad(p, "sel_idx must be i32");
  p = f.params();
  p.out = {};
  expect_bad(p, "out is required");
  HostTensor cu(DType::kI32, {3});
  cu.i32()[0] = 0;
  cu.i32()[1] = 12;
  cu.i32()[2] = 11;  // decreasing, and not ending at T = 16
  p = f.params();
  p.cu_seqlens = cu.t;
  expect_bad(p, "cu_seqlens");
  cu.i32()[2] = 16;
  cu.i32()[1] = 17;
  expect_bad(p, "cu_seqlens decreases");
  HostTensor cuf(DType::kF32, {3});
  p = f.params();
  p.cu_seqlens = cuf.t;
  expect_bad(p, "cu_seqlens must be i32");
  // Caller-provided compressed rows: all three or none, and the right count per sequence.
  HostTensor kc(DType::kF32, {2, c.h, c.dk}), vc(DType::kF32, {2, c.h, c.dv}), cuc(DType::kI32, {3});
  cuc.i32()[0] = 0;
  cuc.i32()[1] = 2;  // len 10: (10 - 8) / 4 + 1 = 1 block
  cuc.i32()[2] = 2;
  p = f.params();
  p.k_cmp = kc.t;
  expect_bad(p, "given together");
  p.v_cmp = vc.t;
  p.cu_cmp = cuc.t;
  expect_bad(p, "cu_cmp gives sequence 0");
}

// Decode step by step from position 0 agrees with the forward op's rows: the compressed cache
// is built by the op itself (update_cmp) one closed block at a time. Pages are shuffled, unused
// pages, slots and compressed rows are NaN.
void check_decode_vs_forward(const Case& c, int page_size, bool update_cmp) {
  SCOPED_TRACE(c.name() + " page " + std::to_string(page_size) + (update_cmp ? " update" : " given"));
  Fwd f(c);
  auto be = cpu();
  ASSERT_TRUE(be->nsa_forward(f.params()).is_ok());
  const int64_t B = int64_t(c.lens.size());
  int max_len = 1;
  for (int l : c.lens) max_len = std::max(max_len, l);
  const int64_t max_pages = (max_len + page_size - 1) / page_size, pages = B * max_pages + 2;
  std::vector<int32_t> pool(static_cast<size_t>(pages));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng());
  HostTensor kcache(c.in, {pages, page_size, c.h, c.dk}), vcache(c.in, {pages, page_size, c.h, c.dv});
  kcache.fill_nan();
  vcache.fill_nan();
  HostTensor bt(DType::kI32, {B, max_pages}), lens(DType::kI32, {B}), qs(DType::kI32, {B + 1});
  for (int64_t i = 0; i < B; ++i) {
    for (int64_t pg = 0; pg < max_pages; ++pg) bt.i32()[i * max_pages + pg] = pool[size_t(i * max_pages + pg)];
    for (int64_t s = 0; s < c.lens[size_t(i)]; ++s) {
      const int64_t slot = int64_t(bt.i32()[i * max_pages + s / page_size]) * page_size + s % page_size;
      for (int64_t e = 0; e < c.h * c.dk; ++e) kcache.set(slot * c.h * c.dk + e, f.k.get((f.starts[size_t(i)] + s) * c.h * c.dk + e));
      for (int64_t e = 0; e < c.h * c.dv; ++e) vcache.set(slot * c.h * c.dv + e, f.v.get((f.starts[size_t(i)] + s) * c.h * c.dv + e));
    }
  }
  for (int64_t i = 0; i <= B; ++i) qs.i32()[i] = int32_t(i);
  // Compressed caches: one spare row; sequence i at row B - i (reversed).
  const int64_t max_blocks = n_cmp(max_len, c.cfg) + 1;
  HostTensor kcc(DType::kF32, {B + 1, max_blocks, c.h, c.dk}), vcc(DType::kF32, {B + 1, max_blocks, c.h, c.dv});
  kcc.fill_nan();
  vcc.fill_nan();
  HostTensor rows(DType::kI32, {B});
  for (int64_t i = 0; i < B; ++i) rows.i32()[i] = int32_t(B - i);
  if (!update_cmp)  // the caller's compressed rows are the forward op's given ones
    for (int64_t i = 0; i < B; ++i)
      for (int64_t j = 0; j < n_cmp(c.lens[size_t(i)], c.cfg); ++j) {
        for (int64_t e = 0; e < c.h * c.dk; ++e)
          kcc.set(((B - i) * max_blocks + j) * c.h * c.dk + e, f.k_cmp.get((f.cmp_starts[size_t(i)] + j) * c.h * c.dk + e));
        for (int64_t e = 0; e < c.h * c.dv; ++e)
          vcc.set(((B - i) * max_blocks + j) * c.h * c.dv + e, f.v_cmp.get((f.cmp_starts[size_t(i)] + j) * c.h * c.dv + e));
      }
  HostTensor q(c.in, {B, c.hq, c.dk}), gates(c.in, {B, c.hq, 3}), out(c.out, {B, c.hq, c.dv}),
      osel(c.out, {B, c.hq, c.dv}), sel(DType::kI32, {B, c.h, c.cfg.select_n});
  int checked = 0;
  for (int step = 0; step < max_len; ++step) {
    // A finished sequence repeats its last token: rewriting its last closed block is idempotent.
    for (int64_t i = 0; i < B; ++i) {
      const int64_t t = std::min(step, c.lens[size_t(i)] - 1), row = f.starts[size_t(i)] + t;
      lens.i32()[i] = int32_t(t + 1);
      for (int64_t e = 0; e < c.hq * c.dk; ++e) q.set(i * c.hq * c.dk + e, f.q.get(row * c.hq * c.dk + e));
      for (int64_t e = 0; e < c.hq * 3; ++e) gates.set(i * c.hq * 3 + e, f.gates.get(row * c.hq * 3 + e));
    }
    out.fill_nan();
    osel.fill_nan();
    std::fill(sel.i32(), sel.i32() + sel.numel(), INT_MIN);
    ops::NsaDecodeParams p;
    p.q = q.t;
    p.gates = gates.t;
    p.k_cache = kcache.t;
    p.v_cache = vcache.t;
    p.seqs = {bt.t, lens.t, qs.t, page_size};
    p.k_cmp_cache = kcc.t;
    p.v_cmp_cache = vcc.t;
    p.cmp_rows = rows.t;
    p.update_cmp = update_cmp;
    p.cfg = c.cfg;
    p.out = out.t;
    p.out_sel = osel.t;
    p.sel_idx = sel.t;
    const Status s = be->nsa_decode(p);
    ASSERT_TRUE(s.is_ok()) << s.message();
    for (int64_t i = 0; i < B; ++i) {
      const int64_t t = std::min(step, c.lens[size_t(i)] - 1), row = f.starts[size_t(i)] + t;
      const size_t ob = dtype_size(c.out);
      // Same f32 values in, same code: bit-identical rows.
      ASSERT_TRUE(same_bytes(out.t.at({i}), f.out.t.at({row}), size_t(c.hq * c.dv) * ob)) << "out, seq " << i << " t " << t;
      ASSERT_TRUE(same_bytes(osel.t.at({i}), f.out_sel.t.at({row}), size_t(c.hq * c.dv) * ob)) << "out_sel " << i;
      ASSERT_TRUE(same_bytes(sel.t.at({i}), f.sel_idx.t.at({row}), size_t(c.h * c.cfg.select_n) * 4))
          << "sel_idx, seq " << i << " t " << t;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(NsaDecode, MatchesForwardRowByRow) {
  MOEX_TRACE_SEED();
  for (int page : {16, 64})
    for (bool update : {true, false}) {
      Case c;
      c.hq = 8;
      c.h = 2;
      c.dk = 16;
      c.dv = 8;
      c.cfg = cfg_of(8, 4, 16, 4, 11);
      c.lens = {1, 70, 23};
      c.given_cmp = !update;
      check_decode_vs_forward(c, page, update);
    }
  Case c;
  c.hq = 4;
  c.h = 1;
  c.cfg = cfg_of(8, 8, 8, 16, 0);
  c.lens = {45, 9};
  c.in = DType::kBF16;
  c.out = DType::kBF16;
  check_decode_vs_forward(c, 16, true);
}

TEST(NsaDecode, RejectsBadInputs) {
  const int64_t B = 2, hq = 4, h = 2, dk = 8, dv = 8, ps = 16, pages = 4, rows = 3, blocks = 4;
  NsaConfig cfg = cfg_of(16, 8, 16, 4, 8);
  HostTensor q = random_tensor(DType::kF32, {B, hq, dk}), gates = random_tensor(DType::kF32, {B, hq, 3}, 0.0, 1.0);
  HostTensor kc = random_tensor(DType::kF32, {pages, ps, h, dk}), vc = random_tensor(DType::kF32, {pages, ps, h, dv});
  HostTensor kcc = random_tensor(DType::kF32, {rows, blocks, h, dk}), vcc = random_tensor(DType::kF32, {rows, blocks, h, dv});
  HostTensor bt(DType::kI32, {B, 2}), lens(DType::kI32, {B}), qs(DType::kI32, {B + 1}), crow(DType::kI32, {B});
  HostTensor out(DType::kF32, {B, hq, dv});
  for (int i = 0; i < 4; ++i) bt.i32()[i] = i;
  lens.i32()[0] = 20;  // (20 - 16) / 8 + 1 = 1 block
  lens.i32()[1] = 32;  // 3 blocks
  for (int i = 0; i <= B; ++i) qs.i32()[i] = i;
  crow.i32()[0] = 2;
  crow.i32()[1] = 0;
  auto params = [&] {
    ops::NsaDecodeParams p;
    p.q = q.t;
    p.gates = gates.t;
    p.k_cache = kc.t;
    p.v_cache = vc.t;
    p.seqs = {bt.t, lens.t, qs.t, int(ps)};
    p.k_cmp_cache = kcc.t;
    p.v_cmp_cache = vcc.t;
    p.cmp_rows = crow.t;
    p.cfg = cfg;
    p.out = out.t;
    return p;
  };
  auto be = cpu();
  auto expect_bad = [&](const ops::NsaDecodeParams& p, const std::string& needle) {
    const Status st = be->nsa_decode(p);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
  };
  ASSERT_TRUE(be->nsa_decode(params()).is_ok());
  auto p = params();
  p.seqs.page_size = 8;
  expect_bad(p, "page_size");
  qs.i32()[1] = 2;  // two queries for sequence 0
  expect_bad(params(), "query_start");
  qs.i32()[1] = 1;
  crow.i32()[1] = 3;
  expect_bad(params(), "cmp_rows[1] = 3");
  crow.i32()[1] = 2;  // shared with sequence 0 while update_cmp writes
  expect_bad(params(), "shared");
  p = params();
  p.update_cmp = false;
  EXPECT_TRUE(be->nsa_decode(p).is_ok());
  crow.i32()[1] = 0;
  bt.i32()[3] = 9;
  expect_bad(params(), "block_table[1, 1]");
  bt.i32()[3] = 3;
  lens.i32()[1] = 33;  // beyond 2 pages of 16
  expect_bad(params(), "exceeds block_table");
  lens.i32()[1] = 0;
  expect_bad(params(), ">= 1");
  lens.i32()[1] = 32;
  p = params();
  p.k_cmp_cache = p.k_cmp_cache.slice(1, 0, 2);
  p.v_cmp_cache = p.v_cmp_cache.slice(1, 0, 2);
  expect_bad(p, "needs 3 compressed blocks");
  p = params();
  p.v_cmp_cache = p.v_cmp_cache.slice(3, 0, 4);
  expect_bad(p, "v_cmp_cache dim 3");
  p = params();
  p.v_cache = p.v_cache.slice(2, 0, 1);
  expect_bad(p, "v_cache dim 2");
  HostTensor sel(DType::kI32, {B, h, 3});
  p = params();
  p.sel_idx = sel.t;
  expect_bad(p, "sel_idx dim 2");
  p = params();
  p.cfg.num_local = 5;
  expect_bad(p, "cfg.select_n");
}

}  // namespace moex::test
