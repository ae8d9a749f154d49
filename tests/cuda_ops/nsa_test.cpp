// CUDA vs CPU Native Sparse Attention (contract: src/ops/nsa.h). Forward over ragged batches
// (lengths around the block sizes, long ones, group sizes 1/4/16, l != d, window 0 and 512, mean
// pooling and given compressed KV, head dims 64/128/192+128, f32 and bf16), outputs poisoned with
// NaN first. sel_idx must match the CPU exactly, except where the selections differ only by
// blocks whose importances (recomputed here in double) are a near tie (relative difference
// < 1e-5): those groups are then left out of the out / out_sel comparison. Decode (split-KV
// kernels, nsa_decode_split.h) must match the CPU decode and, with an f32 compressed cache, the
// forward op's last row (within tolerance, sel_idx except near ties), complete the compressed
// cache, and give the same bits run after run and alone as inside batches of 3 and 11; a forward
// sequence's rows have the same bits alone as inside a batch.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "cuda_ops/cuda_ops_util.h"
#include "ops/nsa.h"

namespace moex::test {
namespace {

using ops::NsaConfig;

int64_t n_cmp(int64_t len, const NsaConfig& c) { return len >= c.block_len ? (len - c.block_len) / c.block_stride + 1 : 0; }

NsaConfig cfg_of(int l, int d, int lp, int n, int w, int init = 1, int local = 2) {
  NsaConfig c;
  c.block_len = l; c.block_stride = d; c.select_len = lp; c.select_n = n; c.window = w;
  c.num_init = init; c.num_local = local;
  return c;
}

struct Case {
  const char* name;
  int hq, h, dk, dv;
  NsaConfig cfg;
  std::vector<int> lens;
  DType in = DType::kBF16, out = DType::kBF16;
  bool given_cmp = false;
};

// Host inputs of one forward call.
struct Inputs {
  int64_t T = 0, Tc = 0;
  std::vector<int64_t> starts{0}, cmp_starts{0};  // [B + 1]
  HostTensor q, k, v, gates, cu, k_cmp, v_cmp, cu_cmp;
};

Inputs make_inputs(const Case& c, Rng& rng) {
  Inputs in;
  for (int l : c.lens) {
    in.starts.push_back(in.starts.back() + l);
    in.cmp_starts.push_back(in.cmp_starts.back() + n_cmp(l, c.cfg));
  }
  in.T = in.starts.back();
  in.Tc = in.cmp_starts.back();
  in.q = host_random(c.in, {in.T, c.hq, c.dk}, rng, -2.f, 2.f);
  in.k = host_random(c.in, {in.T, c.h, c.dk}, rng, -2.f, 2.f);
  in.v = host_random(c.in, {in.T, c.h, c.dv}, rng);
  in.gates = host_random(c.in, {in.T, c.hq, 3}, rng, 0.f, 1.f);
  std::vector<int32_t> cu(in.starts.begin(), in.starts.end()), cc(in.cmp_starts.begin(), in.cmp_starts.end());
  in.cu = host_i32(cu);
  if (c.given_cmp) {
    in.k_cmp = host_random(c.in, {in.Tc, c.h, c.dk}, rng, -2.f, 2.f);
    in.v_cmp = host_random(c.in, {in.Tc, c.h, c.dv}, rng);
    in.cu_cmp = host_i32(cc);
  }
  return in;
}

// Outputs of one call (host copies).
struct Outputs {
  HostTensor out, out_cmp, out_sel, out_win, sel_idx;
};

ops::NsaForwardParams params_of(const Case& c, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& gates,
                                const Tensor& cu) {
  ops::NsaForwardParams p;
  p.q = q; p.k = k; p.v = v; p.gates = gates; p.cu_seqlens = cu;
  p.cfg = c.cfg;
  p.cfg.scale = 1.f / std::sqrt(float(c.dk));
  return p;
}

Outputs cpu_forward(Backend& cpu, const Case& c, const Inputs& in) {
  Outputs o;
  o.out = host_tensor(c.out, {in.T, c.hq, c.dv});
  o.out_cmp = host_tensor(DType::kF32, {in.T, c.hq, c.dv});
  o.out_sel = host_tensor(DType::kF32, {in.T, c.hq, c.dv});
  o.out_win = host_tensor(DType::kF32, {in.T, c.hq, c.dv});
  o.sel_idx = host_tensor(DType::kI32, {in.T, c.h, c.cfg.select_n});
  ops::NsaForwardParams p = params_of(c, in.q.t, in.k.t, in.v.t, in.gates.t, in.cu.t);
  if (c.given_cmp) { p.k_cmp = in.k_cmp.t; p.v_cmp = in.v_cmp.t; p.cu_cmp = in.cu_cmp.t; }
  p.out = o.out.t; p.out_cmp = o.out_cmp.t; p.out_sel = o.out_sel.t; p.out_win = o.out_win.t; p.sel_idx = o.sel_idx.t;
  const Status s = cpu.nsa_forward(p);
  EXPECT_TRUE(s.is_ok()) << s.message();
  return o;
}

// The device copies of a forward call's inputs.
struct DeviceInputs {
  DeviceTensor q, k, v, gates, cu, k_cmp, v_cmp, cu_cmp;
};
DeviceInputs upload(Backend& gpu, const Case& c, const Inputs& in) {
  DeviceInputs d;
  d.q = to_device(gpu, in.q); d.k = to_device(gpu, in.k); d.v = to_device(gpu, in.v);
  d.gates = to_device(gpu, in.gates); d.cu = to_device(gpu, in.cu);
  if (c.given_cmp) { d.k_cmp = to_device(gpu, in.k_cmp); d.v_cmp = to_device(gpu, in.v_cmp); d.cu_cmp = to_device(gpu, in.cu_cmp); }
  return d;
}

// GPU forward over rows [r0, r1) = sequences [s0, s1) of the inputs (the whole batch by default).
Outputs gpu_forward(Backend& gpu, const Case& c, const Inputs& in, const DeviceInputs& d, size_t s0, size_t s1) {
  const int64_t r0 = in.starts[s0], r1 = in.starts[s1], n = r1 - r0;
  std::vector<int32_t> cu, cc;
  for (size_t i = s0; i <= s1; ++i) {
    cu.push_back(int32_t(in.starts[i] - r0));
    cc.push_back(int32_t(in.cmp_starts[i] - in.cmp_starts[s0]));
  }
  DeviceTensor dcu = to_device(gpu, host_i32(cu)), dcc = to_device(gpu, host_i32(cc));
  DeviceTensor out = device_poisoned(gpu, c.out, {n, c.hq, c.dv});
  DeviceTensor ocmp = device_poisoned(gpu, DType::kF32, {n, c.hq, c.dv});
  DeviceTensor osel = device_poisoned(gpu, DType::kF32, {n, c.hq, c.dv});
  DeviceTensor owin = device_poisoned(gpu, DType::kF32, {n, c.hq, c.dv});
  DeviceTensor sel = device_poisoned(gpu, DType::kI32, {n, c.h, c.cfg.select_n});
  ops::NsaForwardParams p = params_of(c, d.q.t.slice(0, r0, r1), d.k.t.slice(0, r0, r1), d.v.t.slice(0, r0, r1),
                                      d.gates.t.slice(0, r0, r1), dcu.t);
  if (c.given_cmp) {
    p.k_cmp = d.k_cmp.t.slice(0, in.cmp_starts[s0], in.cmp_starts[s1]);
    p.v_cmp = d.v_cmp.t.slice(0, in.cmp_starts[s0], in.cmp_starts[s1]);
    p.cu_cmp = dcc.t;
  }
  p.out = out.t; p.out_cmp = ocmp.t; p.out_sel = osel.t; p.out_win = owin.t; p.sel_idx = sel.t;
  const Status s = gpu.nsa_forward(p);
  EXPECT_TRUE(s.is_ok()) << s.message();
  return {to_host(gpu, out), to_host(gpu, ocmp), to_host(gpu, osel), to_host(gpu, owin), to_host(gpu, sel)};
}

// Importance of every selection block for query row `row` (position t of sequence sq) and KV
// head kv, in double, straight from the contract.
std::vector<double> naive_importance(const Case& c, const Inputs& in, size_t sq, int64_t t, int64_t kv) {
  const NsaConfig& cfg = c.cfg;
  const int64_t base = in.starts[sq], g = c.hq / c.h, row = base + t;
  const int64_t nc = t >= cfg.block_len - 1 ? (t - cfg.block_len + 1) / cfg.block_stride + 1 : 0;
  std::vector<double> imp(size_t(t / cfg.select_len + 1), 0.0);
  std::vector<double> kc(size_t(nc * c.dk), 0.0);
  for (int64_t j = 0; j < nc; ++j)
    for (int64_t e = 0; e < c.dk; ++e) {
      double& x = kc[size_t(j * c.dk + e)];
      if (c.given_cmp) {
        x = in.k_cmp.get(((in.cmp_starts[sq] + j) * c.h + kv) * c.dk + e);
      } else {
        for (int64_t s = j * cfg.block_stride; s < j * cfg.block_stride + cfg.block_len; ++s)
          x += in.k.get(((base + s) * c.h + kv) * c.dk + e);
        x /= cfg.block_len;
      }
    }
  const double scale = 1.0 / std::sqrt(double(c.dk));
  for (int64_t hh = 0; hh < g && nc > 0; ++hh) {
    std::vector<double> sc(static_cast<size_t>(nc));
    for (int64_t j = 0; j < nc; ++j) {
      double dot = 0;
      for (int64_t e = 0; e < c.dk; ++e) dot += in.q.get((row * c.hq + kv * g + hh) * c.dk + e) * kc[size_t(j * c.dk + e)];
      sc[size_t(j)] = dot * scale;
    }
    const double mx = *std::max_element(sc.begin(), sc.end());
    double sum = 0;
    for (double& s : sc) sum += (s = std::exp(s - mx));
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t lo = j * cfg.block_stride, hi = lo + cfg.block_len;
      for (int64_t b = 0; b < int64_t(imp.size()); ++b)
        if (lo < (b + 1) * cfg.select_len && hi > b * cfg.select_len) imp[size_t(b)] += sc[size_t(j)] / sum;
    }
  }
  return imp;
}

// Compares the selections of two [rows, H, n] index tensors; `row_of(r)` maps a row of them to
// (sequence, position). Returns the groups (row * H + kv) accepted as near ties and counts real
// mismatches.
template <class RowOf>
std::vector<char> compare_selection(const Case& c, const Inputs& in, const HostTensor& got, const HostTensor& want,
                                    int64_t rows, RowOf row_of, int& mismatches, int& near_ties, std::string& first) {
  const int n = c.cfg.select_n;
  std::vector<char> skip(size_t(rows * c.h), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kv = 0; kv < c.h; ++kv) {
      const int32_t* a = got.t.ptr<const int32_t>() + (r * c.h + kv) * n;
      const int32_t* b = want.t.ptr<const int32_t>() + (r * c.h + kv) * n;
      if (std::equal(a, a + n, b)) continue;
      const auto [sq, t] = row_of(r);
      const std::vector<double> imp = naive_importance(c, in, sq, t, kv);
      std::vector<int> ga(a, a + n), wb(b, b + n), diff;
      std::set_symmetric_difference(ga.begin(), ga.end(), wb.begin(), wb.end(), std::back_inserter(diff));
      bool near = std::count(ga.begin(), ga.end(), -1) == std::count(wb.begin(), wb.end(), -1);
      double lo = 1e300, hi = -1e300;
      for (int x : diff) {
        if (x < 0 || x >= int(imp.size())) { near = false; break; }
        lo = std::min(lo, imp[size_t(x)]);
        hi = std::max(hi, imp[size_t(x)]);
      }
      if (near && hi - lo <= 1e-5 * std::max(std::abs(hi), 1e-30)) {
        ++near_ties;
        skip[size_t(r * c.h + kv)] = 1;
      } else if (mismatches++ == 0) {
        first = "row " + std::to_string(r) + " kv " + std::to_string(kv) + ": got";
        for (int x : ga) first += " " + std::to_string(x);
        first += ", want";
        for (int x : wb) first += " " + std::to_string(x);
      }
    }
  return skip;
}

// rel_l2 over [rows, HQ, Dv] leaving out the heads of skipped groups (row * H + kv).
double rel_l2_skip(const Case& c, const HostTensor& a, const HostTensor& b, const std::vector<char>& skip) {
  const int64_t g = c.hq / c.h, rows = b.t.shape[0];
  double num = 0, den = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < c.hq; ++h) {
      if (skip[size_t(r * c.h + h / g)]) continue;
      for (int64_t e = 0; e < c.dv; ++e) {
        const int64_t i = (r * c.hq + h) * c.dv + e;
        const double x = a.get(i), y = b.get(i);
        if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
        num += (x - y) * (x - y);
        den += y * y;
      }
    }
  return den == 0 ? (num == 0 ? 0 : INFINITY) : std::sqrt(num / den);
}

double tol_of(const Case& c) { return c.in == DType::kF32 && c.out == DType::kF32 ? 2e-5 : 5e-3; }

class NsaTest : public CudaOpsTest {
 protected:
  void check_forward(const Case& c) {
    SCOPED_TRACE(std::string(c.name) + " seed " + std::to_string(seed_));
    const Inputs in = make_inputs(c, rng_);
    const Outputs ref = cpu_forward(*cpu_, c, in);
    const DeviceInputs d = upload(*gpu_, c, in);
    const Outputs got = gpu_forward(*gpu_, c, in, d, 0, c.lens.size());
    std::vector<size_t> seq_of_row;
    for (size_t i = 0; i < c.lens.size(); ++i) seq_of_row.insert(seq_of_row.end(), size_t(c.lens[i]), i);
    int mismatches = 0, near_ties = 0;
    std::string first;
    const std::vector<char> skip = compare_selection(
        c, in, got.sel_idx, ref.sel_idx, in.T,
        [&](int64_t r) { return std::pair<size_t, int64_t>(seq_of_row[size_t(r)], r - in.starts[seq_of_row[size_t(r)]]); },
        mismatches, near_ties, first);
    EXPECT_EQ(mismatches, 0) << "sel_idx differs first at " << first;
    const std::vector<char> none(skip.size(), 0);
    const double tol = tol_of(c);
    EXPECT_LT(rel_l2_skip(c, got.out, ref.out, skip), tol) << "out";
    EXPECT_LT(rel_l2_skip(c, got.out_cmp, ref.out_cmp, none), tol) << "out_cmp";
    EXPECT_LT(rel_l2_skip(c, got.out_sel, ref.out_sel, skip), tol) << "out_sel";
    EXPECT_LT(rel_l2_skip(c, got.out_win, ref.out_win, none), tol) << "out_win";
    if (near_ties > 0) std::printf("  [%s] near ties accepted: %d\n", c.name, near_ties);

    // Each sequence alone: the same bits as inside the batch.
    if (c.lens.size() < 2) return;
    for (size_t i = 0; i < c.lens.size(); ++i) {
      const Outputs one = gpu_forward(*gpu_, c, in, d, i, i + 1);
      for (int64_t r = 0; r < c.lens[i]; ++r) {
        const int64_t br = in.starts[i] + r;
        ASSERT_TRUE(rows_bit_equal(one.out, r, got.out, br)) << "sequence " << i << " row " << r << " out alone vs batch";
        ASSERT_TRUE(rows_bit_equal(one.sel_idx, r, got.sel_idx, br)) << "sequence " << i << " row " << r << " sel_idx";
      }
    }
  }

  // Decode of the last token of each sequence over a paged cache holding the forward's k / v,
  // vs the CPU decode and vs the GPU forward's last rows.
  void check_decode(const Case& c, int page_size, DType cmp_dtype) {
    SCOPED_TRACE(std::string(c.name) + " decode seed " + std::to_string(seed_));
    const NsaConfig& cfg = c.cfg;
    const Inputs in = make_inputs(c, rng_);
    const int64_t B = int64_t(c.lens.size());
    // Paged raw cache: pages in random order, NaN wherever no token lives.
    int64_t max_pages = 1, pages = 2;
    for (int l : c.lens) { max_pages = std::max<int64_t>(max_pages, (l + page_size - 1) / page_size); pages += (l + page_size - 1) / page_size; }
    std::vector<int32_t> perm(static_cast<size_t>(pages));
    for (int64_t i = 0; i < pages; ++i) perm[size_t(i)] = int32_t(i);
    for (int64_t i = pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng_.uniform_int(0, int(i)))]);
    HostTensor bt = host_tensor(DType::kI32, {B, max_pages});
    HostTensor kc = host_tensor(c.in, {pages, page_size, c.h, c.dk}), vc = host_tensor(c.in, {pages, page_size, c.h, c.dv});
    for (int64_t i = 0; i < kc.t.numel(); ++i) kc.set(i, NAN);
    for (int64_t i = 0; i < vc.t.numel(); ++i) vc.set(i, NAN);
    size_t next = 0;
    for (int64_t s = 0; s < B; ++s)
      for (int64_t pg = 0; pg < max_pages; ++pg) bt.i32(s * max_pages + pg) = pg * page_size < c.lens[size_t(s)] ? perm[next++] : perm[size_t(pages - 1)];
    for (int64_t s = 0; s < B; ++s)
      for (int64_t t = 0; t < c.lens[size_t(s)]; ++t) {
        const int64_t slot = int64_t(bt.i32(s * max_pages + t / page_size)) * page_size + t % page_size;
        for (int64_t x = 0; x < c.h * c.dk; ++x) kc.set(slot * c.h * c.dk + x, in.k.get((in.starts[size_t(s)] + t) * c.h * c.dk + x));
        for (int64_t x = 0; x < c.h * c.dv; ++x) vc.set(slot * c.h * c.dv + x, in.v.get((in.starts[size_t(s)] + t) * c.h * c.dv + x));
      }
    // Compressed caches: rows in reverse order plus a spare; every complete block holds its f32
    // means except the one the new token closes (NaN: decode must write it).
    int64_t max_blocks = 1;
    for (int l : c.lens) max_blocks = std::max(max_blocks, n_cmp(l, cfg) + 1);
    HostTensor kcc = host_tensor(cmp_dtype, {B + 1, max_blocks, c.h, c.dk}), vcc = host_tensor(cmp_dtype, {B + 1, max_blocks, c.h, c.dv});
    for (int64_t i = 0; i < kcc.t.numel(); ++i) kcc.set(i, NAN);
    for (int64_t i = 0; i < vcc.t.numel(); ++i) vcc.set(i, NAN);
    std::vector<int32_t> rows, lens, starts{0};
    HostTensor want_k = host_tensor(DType::kF32, {B, c.h, c.dk}), want_v = host_tensor(DType::kF32, {B, c.h, c.dv});
    std::vector<int64_t> closing(size_t(B), -1);
    for (int64_t s = 0; s < B; ++s) {
      const int64_t len = c.lens[size_t(s)], row = B - 1 - s;
      rows.push_back(int32_t(row)); lens.push_back(int32_t(len)); starts.push_back(int32_t(s + 1));
      if (len >= cfg.block_len && (len - cfg.block_len) % cfg.block_stride == 0) closing[size_t(s)] = (len - cfg.block_len) / cfg.block_stride;
      for (int64_t j = 0; j < n_cmp(len, cfg); ++j)
        for (int64_t kv = 0; kv < c.h; ++kv)
          for (int which = 0; which < 2; ++which) {
            const int64_t dim = which == 0 ? c.dk : c.dv;
            const HostTensor& src = which == 0 ? in.k : in.v;
            for (int64_t e = 0; e < dim; ++e) {
              float sum = 0.f;  // f32 in token order, then / l: the contract's pooling
              for (int64_t t = j * cfg.block_stride; t < j * cfg.block_stride + cfg.block_len; ++t)
                sum += src.get(((in.starts[size_t(s)] + t) * c.h + kv) * dim + e);
              const float mean = sum / float(cfg.block_len);
              if (j == closing[size_t(s)]) {
                (which == 0 ? want_k : want_v).set((s * c.h + kv) * dim + e, mean);
              } else {
                (which == 0 ? kcc : vcc).set(((row * max_blocks + j) * c.h + kv) * dim + e, mean);
              }
            }
          }
    }
    // Decode queries and gates: the last row of each sequence.
    HostTensor q = host_tensor(c.in, {B, c.hq, c.dk}), gates = host_tensor(c.in, {B, c.hq, 3});
    for (int64_t s = 0; s < B; ++s) {
      const int64_t last = in.starts[size_t(s) + 1] - 1;
      for (int64_t x = 0; x < c.hq * c.dk; ++x) q.set(s * c.hq * c.dk + x, in.q.get(last * c.hq * c.dk + x));
      for (int64_t x = 0; x < c.hq * 3; ++x) gates.set(s * c.hq * 3 + x, in.gates.get(last * c.hq * 3 + x));
    }
    HostTensor hrows = host_i32(rows), hlens = host_i32(lens), hstarts = host_i32(starts);
    auto make = [&](const Tensor& tq, const Tensor& tg, const Tensor& tk, const Tensor& tv, const Tensor& tbt,
                    const Tensor& tl, const Tensor& ts, const Tensor& tkc, const Tensor& tvc, const Tensor& tr) {
      ops::NsaDecodeParams p;
      p.q = tq; p.gates = tg; p.k_cache = tk; p.v_cache = tv;
      p.seqs = seqs_of(tbt, tl, ts, page_size);
      p.k_cmp_cache = tkc; p.v_cmp_cache = tvc; p.cmp_rows = tr;
      p.cfg = cfg;
      p.cfg.scale = 1.f / std::sqrt(float(c.dk));
      return p;
    };
    // CPU decode on host copies.
    HostTensor ckcc = kcc, cvcc = vcc;
    ckcc.t.data = ckcc.bytes.data(); cvcc.t.data = cvcc.bytes.data();
    HostTensor ref = host_tensor(c.out, {B, c.hq, c.dv}), ref_sel = host_tensor(DType::kI32, {B, c.h, cfg.select_n});
    HostTensor ref_cmp = host_tensor(DType::kF32, {B, c.hq, c.dv}), ref_osel = host_tensor(DType::kF32, {B, c.hq, c.dv});
    HostTensor ref_win = host_tensor(DType::kF32, {B, c.hq, c.dv});
    ops::NsaDecodeParams pc = make(q.t, gates.t, kc.t, vc.t, bt.t, hlens.t, hstarts.t, ckcc.t, cvcc.t, hrows.t);
    pc.out = ref.t; pc.sel_idx = ref_sel.t; pc.out_cmp = ref_cmp.t; pc.out_sel = ref_osel.t; pc.out_win = ref_win.t;
    MOEX_ASSERT_OK(cpu_->nsa_decode(pc));
    // GPU decode of the sequences `ids` (in that order) as one batch; the block table is only as
    // wide as they need, so the kernels' bound on the length changes with the batch too. The
    // compressed caches are shared: a rerun writes the closed blocks again with the same values.
    DeviceTensor dk = to_device(*gpu_, kc), dv = to_device(*gpu_, vc);
    DeviceTensor dkcc = to_device(*gpu_, kcc), dvcc = to_device(*gpu_, vcc);
    // Branch outputs (f32) are asked for on the whole-batch run only.
    HostTensor got_cmp, got_osel, got_win;
    auto run_gpu = [&](const std::vector<int>& ids, bool branches = false) {
      const int64_t n = int64_t(ids.size());
      int64_t width = 1;
      for (int s : ids) width = std::max<int64_t>(width, (c.lens[size_t(s)] + page_size - 1) / page_size);
      HostTensor sq = host_tensor(c.in, {n, c.hq, c.dk}), sg = host_tensor(c.in, {n, c.hq, 3});
      HostTensor sbt = host_tensor(DType::kI32, {n, width});
      std::vector<int32_t> srows, slens, sstarts{0};
      for (int64_t r = 0; r < n; ++r) {
        const int64_t s = ids[size_t(r)];
        for (int64_t x = 0; x < c.hq * c.dk; ++x) sq.set(r * c.hq * c.dk + x, q.get(s * c.hq * c.dk + x));
        for (int64_t x = 0; x < c.hq * 3; ++x) sg.set(r * c.hq * 3 + x, gates.get(s * c.hq * 3 + x));
        for (int64_t pg = 0; pg < width; ++pg) sbt.i32(r * width + pg) = bt.i32(s * max_pages + pg);
        srows.push_back(rows[size_t(s)]); slens.push_back(lens[size_t(s)]); sstarts.push_back(int32_t(r + 1));
      }
      DeviceTensor dq = to_device(*gpu_, sq), dg = to_device(*gpu_, sg), dbt = to_device(*gpu_, sbt);
      DeviceTensor dl = to_device(*gpu_, host_i32(slens)), ds = to_device(*gpu_, host_i32(sstarts));
      DeviceTensor dr = to_device(*gpu_, host_i32(srows));
      DeviceTensor out = device_poisoned(*gpu_, c.out, {n, c.hq, c.dv});
      DeviceTensor sel = device_poisoned(*gpu_, DType::kI32, {n, c.h, cfg.select_n});
      ops::NsaDecodeParams pg = make(dq.t, dg.t, dk.t, dv.t, dbt.t, dl.t, ds.t, dkcc.t, dvcc.t, dr.t);
      pg.out = out.t; pg.sel_idx = sel.t;
      DeviceTensor ocmp, osel, owin;
      if (branches) {
        ocmp = device_poisoned(*gpu_, DType::kF32, {n, c.hq, c.dv});
        osel = device_poisoned(*gpu_, DType::kF32, {n, c.hq, c.dv});
        owin = device_poisoned(*gpu_, DType::kF32, {n, c.hq, c.dv});
        pg.out_cmp = ocmp.t; pg.out_sel = osel.t; pg.out_win = owin.t;
      }
      const Status st = gpu_->nsa_decode(pg);
      EXPECT_TRUE(st.is_ok()) << st.message();
      if (branches) { got_cmp = to_host(*gpu_, ocmp); got_osel = to_host(*gpu_, osel); got_win = to_host(*gpu_, owin); }
      return std::pair<HostTensor, HostTensor>(to_host(*gpu_, out), to_host(*gpu_, sel));
    };
    std::vector<int> all(static_cast<size_t>(B));
    for (int64_t s = 0; s < B; ++s) all[size_t(s)] = int(s);
    const auto [got, got_sel] = run_gpu(all, true);
    const HostTensor got_kcc = to_host(*gpu_, dkcc), got_vcc = to_host(*gpu_, dvcc);

    // The closed blocks were written with the f32 means (rounded once to the cache dtype).
    for (int64_t s = 0; s < B; ++s) {
      if (closing[size_t(s)] < 0) continue;
      const int64_t row = B - 1 - s, j = closing[size_t(s)];
      for (int64_t kv = 0; kv < c.h; ++kv) {
        for (int64_t e = 0; e < c.dk; ++e) {
          HostTensor one = host_tensor(cmp_dtype, {1});
          one.set(0, want_k.get((s * c.h + kv) * c.dk + e));
          ASSERT_EQ(got_kcc.get(((row * max_blocks + j) * c.h + kv) * c.dk + e), one.get(0)) << "k_cmp_cache seq " << s;
        }
        for (int64_t e = 0; e < c.dv; ++e) {
          HostTensor one = host_tensor(cmp_dtype, {1});
          one.set(0, want_v.get((s * c.h + kv) * c.dv + e));
          ASSERT_EQ(got_vcc.get(((row * max_blocks + j) * c.h + kv) * c.dv + e), one.get(0)) << "v_cmp_cache seq " << s;
        }
      }
    }
    int mismatches = 0, near_ties = 0;
    std::string first;
    const std::vector<char> skip = compare_selection(
        c, in, got_sel, ref_sel, B, [&](int64_t r) { return std::pair<size_t, int64_t>(size_t(r), c.lens[size_t(r)] - 1); },
        mismatches, near_ties, first);
    EXPECT_EQ(mismatches, 0) << "decode sel_idx differs first at " << first;
    EXPECT_LT(rel_l2_skip(c, got, ref, skip), tol_of(c)) << "decode out vs cpu";
    {
      const std::vector<char> none(skip.size(), 0);
      const double tol_f32 = c.in == DType::kF32 ? 2e-5 : 5e-3;  // f32 branch outputs: input rounding only
      EXPECT_LT(rel_l2_skip(c, got_cmp, ref_cmp, none), tol_f32) << "decode out_cmp vs cpu";
      EXPECT_LT(rel_l2_skip(c, got_osel, ref_osel, skip), tol_f32) << "decode out_sel vs cpu";
      EXPECT_LT(rel_l2_skip(c, got_win, ref_win, none), tol_f32) << "decode out_win vs cpu";
    }
    if (near_ties > 0) std::printf("  [%s] decode near ties accepted: %d\n", c.name, near_ties);

    // Bits: the same on a rerun, and for each sequence alone and inside a batch of 3 (in the
    // middle, with the next sequences in reverse order) as inside the whole batch.
    {
      const auto [again, again_sel] = run_gpu(all);
      for (int64_t s = 0; s < B; ++s) {
        ASSERT_TRUE(rows_bit_equal(again, s, got, s)) << "decode rerun out, sequence " << s;
        ASSERT_TRUE(rows_bit_equal(again_sel, s, got_sel, s)) << "decode rerun sel_idx, sequence " << s;
      }
    }
    for (int s = 0; s < int(B); ++s) {
      const auto [one, one_sel] = run_gpu({s});
      ASSERT_TRUE(rows_bit_equal(one, 0, got, s)) << "decode alone vs batch out, sequence " << s;
      ASSERT_TRUE(rows_bit_equal(one_sel, 0, got_sel, s)) << "decode alone vs batch sel_idx, sequence " << s;
      if (B < 3) continue;
      const auto [three, three_sel] = run_gpu({int((s + 2) % B), s, int((s + 1) % B)});
      ASSERT_TRUE(rows_bit_equal(three, 1, got, s)) << "decode in 3 vs batch out, sequence " << s;
      ASSERT_TRUE(rows_bit_equal(three_sel, 1, got_sel, s)) << "decode in 3 vs batch sel_idx, sequence " << s;
    }

    if (cmp_dtype != DType::kF32 || c.given_cmp) return;
    // With an f32 compressed cache decode sees the forward's values: its last rows within the
    // tolerance (the split merges sum in another order), the same blocks except near ties.
    const DeviceInputs d = upload(*gpu_, c, in);
    const Outputs fwd = gpu_forward(*gpu_, c, in, d, 0, c.lens.size());
    HostTensor fwd_last = host_tensor(c.out, {B, c.hq, c.dv}), fwd_sel = host_tensor(DType::kI32, {B, c.h, cfg.select_n});
    for (int64_t s = 0; s < B; ++s) {
      const int64_t last = in.starts[size_t(s) + 1] - 1;
      for (int64_t x = 0; x < c.hq * c.dv; ++x) fwd_last.set(s * c.hq * c.dv + x, fwd.out.get(last * c.hq * c.dv + x));
      for (int64_t x = 0; x < c.h * cfg.select_n; ++x)
        fwd_sel.i32(s * c.h * cfg.select_n + x) = fwd.sel_idx.i32(last * c.h * cfg.select_n + x);
    }
    int fwd_mismatches = 0, fwd_ties = 0;
    std::string fwd_first;
    const std::vector<char> fwd_skip = compare_selection(
        c, in, got_sel, fwd_sel, B, [&](int64_t r) { return std::pair<size_t, int64_t>(size_t(r), c.lens[size_t(r)] - 1); },
        fwd_mismatches, fwd_ties, fwd_first);
    EXPECT_EQ(fwd_mismatches, 0) << "decode vs forward sel_idx differs first at " << fwd_first;
    EXPECT_LT(rel_l2_skip(c, got, fwd_last, fwd_skip), tol_of(c)) << "decode out vs forward last rows";
  }
};

TEST_F(NsaTest, ForwardShortRaggedStrideBelowLength) {
  check_forward({"short ragged l32 d16", 8, 2, 64, 64, cfg_of(32, 16, 64, 4, 0), {1, 63, 64, 65, 200}});
}
TEST_F(NsaTest, ForwardGroup16Window512) {
  check_forward({"g16 d128 w512", 16, 1, 128, 128, cfg_of(64, 64, 64, 16, 512), {1000}, DType::kBF16, DType::kF32});
}
TEST_F(NsaTest, ForwardLongGroup4) {
  check_forward({"g4 4100 l32 d16", 16, 4, 64, 64, cfg_of(32, 16, 64, 16, 512), {4100}});
}
TEST_F(NsaTest, ForwardGivenCompressedGroup1Dims192x128) {
  check_forward({"g1 192/128 given", 4, 4, 192, 128, cfg_of(64, 64, 64, 8, 512, 1, 2), {300, 1000, 17}, DType::kBF16,
                 DType::kBF16, true});
}
TEST_F(NsaTest, ForwardGroup16Dims192x128) {
  check_forward({"g16 192/128", 32, 2, 192, 128, cfg_of(64, 64, 64, 16, 512), {700, 65}});
}
TEST_F(NsaTest, ForwardF32SelectLenAboveBlock) {
  check_forward({"f32 l16 d16 l'32", 8, 2, 32, 48, cfg_of(16, 16, 32, 6, 40, 2, 1), {130, 257, 64}, DType::kF32,
                 DType::kF32});
}
TEST_F(NsaTest, ForwardNoForcedBlocksSmallSelection) {
  check_forward({"no forced n3", 4, 2, 64, 32, cfg_of(32, 32, 32, 3, 64, 0, 0), {500, 31, 33}});
}

TEST_F(NsaTest, DecodeF32CacheMatchesForward) {  // several compressed and key splits
  check_decode({"decode f32 cache", 16, 4, 64, 64, cfg_of(32, 16, 64, 8, 100), {1, 31, 32, 48, 64, 200, 1000}}, 16,
               DType::kF32);
}
TEST_F(NsaTest, DecodeBf16CacheGroup16) {
  check_decode({"decode bf16 cache", 16, 1, 128, 128, cfg_of(64, 64, 64, 16, 512), {64, 128, 1500, 3000}}, 64,
               DType::kBF16);
}

// The tensor-core decode path (nsa_decode_fast.cu: bf16 q and caches, G 16 or 32): lengths on
// both sides of the block, chunk and page boundaries, 0 to 312 compressed blocks (1 or 2
// compressed chunks), selected and window keys over several chunks, no forced blocks, window 0.
TEST_F(NsaTest, DecodeTensorCoreGroup16) {
  check_decode({"decode tc g16", 32, 2, 128, 128, cfg_of(64, 64, 64, 16, 512), {1, 63, 64, 65, 200, 1000, 4097, 8256, 9000}},
               64, DType::kBF16);
}
TEST_F(NsaTest, DecodeTensorCoreGroup32Dims192x128) {
  check_decode({"decode tc g32 192/128", 32, 1, 192, 128, cfg_of(32, 16, 64, 16, 512), {31, 32, 48, 700, 3000, 5000}},
               16, DType::kBF16);
}
TEST_F(NsaTest, DecodeTensorCoreNoForcedWindow0) {
  check_decode({"decode tc no forced w0", 16, 1, 64, 64, cfg_of(32, 32, 32, 3, 0, 0, 0), {1, 31, 32, 33, 500, 2000}}, 16,
               DType::kBF16);
}

// The choice's importance loop in more than one group of 8 x 128 blocks (up to 1250 selection
// blocks: 10 keys per thread), with two compressed blocks per selection block (l' < l).
TEST_F(NsaTest, DecodeTensorCoreOver1024SelectionBlocks) {
  check_decode({"decode tc 1250 sel blocks", 16, 1, 64, 64, cfg_of(32, 16, 16, 16, 512), {17, 40, 16400, 20000}}, 64,
               DType::kBF16);
}

// 11 sequences: every compressed split count from 0 to 6, key splits of both branches, window 0
// (no window splits) beside window 300, group 8; alone, in 3 and in 11 the same bits.
TEST_F(NsaTest, DecodeBatchOf11SameBits) {
  check_decode({"decode 11 seqs", 16, 2, 64, 64, cfg_of(32, 16, 32, 12, 300), {5, 33, 47, 64, 100, 1030, 1055, 2100, 3200, 4200, 5200}},
               32, DType::kF32);
  check_decode({"decode 11 seqs w0 bf16", 8, 1, 128, 128, cfg_of(64, 32, 64, 6, 0, 1, 1), {1, 64, 65, 96, 127, 128, 2047, 2049, 2080, 2500, 4096}},
               64, DType::kBF16);
}

// Not a test: a tiny timing loop of the forward at the shape (run with
// --gtest_also_run_disabled_tests; benchmarks proper go through `moex bench ops`).
TEST_F(NsaTest, DISABLED_TimingForward) {
  for (int T : {8192, 16384, 32768, 65536}) {
    Case c{"timing", 64, 4, 128, 128, cfg_of(64, 64, 64, 16, 512), {T}};
    const Inputs in = make_inputs(c, rng_);
    const DeviceInputs d = upload(*gpu_, c, in);
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {in.T, c.hq, c.dv});
    ops::NsaForwardParams p = params_of(c, d.q.t, d.k.t, d.v.t, d.gates.t, d.cu.t);
    p.out = out.t;
    std::vector<double> ms;
    for (int it = 0; it < 6; ++it) {
      MOEX_ASSERT_OK(gpu_->synchronize());
      const auto t0 = std::chrono::steady_clock::now();
      MOEX_ASSERT_OK(gpu_->nsa_forward(p));
      MOEX_ASSERT_OK(gpu_->synchronize());
      if (it > 0) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::printf("nsa_forward T %d HQ 64 H 4 D 128 l=d=l'=64 n 16 w 512: median %.3f ms min %.3f ms\n", T, ms[ms.size() / 2], ms[0]);
  }
}


// Not a test: decode timing at 64K, batch 1 and 4 (issue shape, page 64, bf16 compressed cache),
// against the floor of the bytes it must read at 3.02 TB/s.
TEST_F(NsaTest, DISABLED_TimingDecode) {
  constexpr int kHq = 64, kH = 4, kD = 128, kPage = 64, kLen = 65536;
  const NsaConfig cfg = cfg_of(64, 64, 64, 16, 512);
  for (int B : {1, 4}) {
    const int64_t pages_per = kLen / kPage, pages = pages_per * B, blocks = n_cmp(kLen, cfg);
    HostTensor kc = host_random(DType::kBF16, {pages, kPage, kH, kD}, rng_);
    HostTensor vc = host_random(DType::kBF16, {pages, kPage, kH, kD}, rng_);
    HostTensor kcc = host_random(DType::kBF16, {B, blocks, kH, kD}, rng_);
    HostTensor vcc = host_random(DType::kBF16, {B, blocks, kH, kD}, rng_);
    HostTensor q = host_random(DType::kBF16, {B, kHq, kD}, rng_), gates = host_random(DType::kBF16, {B, kHq, 3}, rng_, 0.f, 1.f);
    std::vector<int32_t> bt, lens, starts{0}, rows;
    for (int s = 0; s < B; ++s) {
      for (int64_t i = 0; i < pages_per; ++i) bt.push_back(int32_t(s * pages_per + i));
      lens.push_back(kLen); starts.push_back(s + 1); rows.push_back(s);
    }
    HostTensor hbt = host_i32(bt);
    hbt.t = Tensor::make(hbt.t.data, DType::kI32, {int64_t(B), pages_per});
    DeviceTensor dk = to_device(*gpu_, kc), dv = to_device(*gpu_, vc), dkcc = to_device(*gpu_, kcc), dvcc = to_device(*gpu_, vcc);
    DeviceTensor dq = to_device(*gpu_, q), dg = to_device(*gpu_, gates), dbt = to_device(*gpu_, hbt);
    DeviceTensor dl = to_device(*gpu_, host_i32(lens)), ds = to_device(*gpu_, host_i32(starts)), dr = to_device(*gpu_, host_i32(rows));
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {B, kHq, kD});
    ops::NsaDecodeParams p;
    p.q = dq.t; p.gates = dg.t; p.k_cache = dk.t; p.v_cache = dv.t;
    p.seqs = seqs_of(dbt.t, dl.t, ds.t, kPage);
    p.k_cmp_cache = dkcc.t; p.v_cmp_cache = dvcc.t; p.cmp_rows = dr.t;
    p.cfg = cfg; p.cfg.scale = 1.f / std::sqrt(float(kD));
    p.out = out.t;
    constexpr int kIters = 200;
    for (int it = 0; it < 20; ++it) MOEX_ASSERT_OK(gpu_->nsa_decode(p));
    MOEX_ASSERT_OK(gpu_->synchronize());
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < kIters; ++it) MOEX_ASSERT_OK(gpu_->nsa_decode(p));
    MOEX_ASSERT_OK(gpu_->synchronize());
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kIters;
    const double bytes = double(B) * kH * ((cfg.select_n * cfg.select_len + cfg.window + blocks) * 2.0 * kD * 2);
    std::printf("nsa_decode 64K B %d HQ 64 H 4 D 128: %.1f us per call; floor %.1f us (%.1f MB at 3.02 TB/s)\n", B, us,
                bytes / 3.02e12 * 1e6, bytes / 1e6);
  }
}

}  // namespace
}  // namespace moex::test
