// Native Sparse Attention benchmark cases (op "nsa"): "mode": "forward" runs nsa_forward over
// `batch` sequences of `seq_len` tokens (mean-pooled compression); "mode": "decode" runs
// nsa_decode for `batch` sequences of `kv_len` cached tokens over a paged cache whose pages are
// scattered in a random order, the compressed caches full, update_cmp on. Fields (defaults):
// q_heads, kv_heads, dk, dv (128), block_len, block_stride, select_len (64), select_n (16),
// num_init (1), num_local (2), window (512), page (64). Floors: docs/kernels/nsa.md.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "bench/reference.h"
#include "bench/workloads.h"

namespace moex::bench {
namespace {

int64_t complete_blocks(int64_t len, const ops::NsaConfig& c) {
  return len >= c.block_len ? (len - c.block_len) / c.block_stride + 1 : 0;
}

// Keys one query at position t attends in each branch (per head), by the contract: the visible
// compressed blocks, the tokens of min(n, t / l' + 1) selection blocks (all full but the one
// holding t), and the window.
struct Attended {
  int64_t cmp = 0, sel = 0, win = 0;
};
Attended attended_at(int64_t t, const ops::NsaConfig& c) {
  Attended a;
  a.cmp = complete_blocks(t + 1, c);
  const int64_t nb = t / c.select_len + 1;
  a.sel = nb <= c.select_n ? t + 1 : int64_t(c.select_n - 1) * c.select_len + t % c.select_len + 1;
  a.win = c.window > 0 ? std::min<int64_t>(c.window, t + 1) : 0;
  return a;
}

struct NsaShape {
  bool decode = false;
  int64_t batch = 1, len = 0, hq = 0, h = 0, dk = 128, dv = 128, page = 64;
  ops::NsaConfig cfg;
};

Expected<NsaShape> nsa_shape(const BenchCase& c) {
  NsaShape s;
  const std::string mode = case_string_or(c, "mode", "forward");
  if (mode != "forward" && mode != "decode") return invalid_argument("case " + c.name + ": mode must be forward or decode");
  s.decode = mode == "decode";
  s.batch = case_int_or(c, "batch", 1);
  MOEX_ASSIGN_OR_RETURN(s.len, case_int(c, s.decode ? "kv_len" : "seq_len"));
  MOEX_ASSIGN_OR_RETURN(s.hq, case_int(c, "q_heads"));
  MOEX_ASSIGN_OR_RETURN(s.h, case_int(c, "kv_heads"));
  s.dk = case_int_or(c, "dk", 128);
  s.dv = case_int_or(c, "dv", 128);
  s.page = case_int_or(c, "page", 64);
  s.cfg.block_len = int(case_int_or(c, "block_len", 64));
  s.cfg.block_stride = int(case_int_or(c, "block_stride", 64));
  s.cfg.select_len = int(case_int_or(c, "select_len", 64));
  s.cfg.select_n = int(case_int_or(c, "select_n", 16));
  s.cfg.num_init = int(case_int_or(c, "num_init", 1));
  s.cfg.num_local = int(case_int_or(c, "num_local", 2));
  s.cfg.window = int(case_int_or(c, "window", 512));
  s.cfg.scale = float(1.0 / std::sqrt(double(s.dk)));
  if (s.batch < 1 || s.len < 1 || s.hq < 1 || s.h < 1 || s.hq % s.h != 0 || s.dk < 1 || s.dv < 1 || s.page < 1)
    return invalid_argument("case " + c.name + ": need batch, len, dims, page > 0 and q_heads a multiple of kv_heads");
  return s;
}

void fill_shape(const NsaShape& s, const BenchCase& c, Workload* w) {
  w->shape = c.shape;
  w->shape["mode"] = s.decode ? "decode" : "forward";
  w->shape["batch"] = s.batch;
  w->shape["dk"] = s.dk;
  w->shape["dv"] = s.dv;
  w->shape["block_len"] = s.cfg.block_len;
  w->shape["block_stride"] = s.cfg.block_stride;
  w->shape["select_len"] = s.cfg.select_len;
  w->shape["select_n"] = s.cfg.select_n;
  w->shape["num_init"] = s.cfg.num_init;
  w->shape["num_local"] = s.cfg.num_local;
  w->shape["window"] = s.cfg.window;
}

Expected<std::unique_ptr<Workload>> forward_workload(Backend& be, const BenchCase& c, const NsaShape& s, uint64_t seed) {
  const DType act = be.activation_dtype();
  const int64_t T = s.batch * s.len;
  auto w = std::make_unique<Workload>();
  ops::NsaForwardParams p;
  p.cfg = s.cfg;
  MOEX_ASSIGN_OR_RETURN(p.q, random_tensor(be, w.get(), act, {T, s.hq, s.dk}, seed + 1, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.k, random_tensor(be, w.get(), act, {T, s.h, s.dk}, seed + 2, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.v, random_tensor(be, w.get(), act, {T, s.h, s.dv}, seed + 3, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.gates, random_tensor(be, w.get(), act, {T, s.hq, 3}, seed + 4, 0.f, 1.f));
  HostTensor cu(DType::kI32, {s.batch + 1});
  for (int64_t i = 0; i <= s.batch; ++i) cu.ptr<int32_t>()[i] = int32_t(i * s.len);
  MOEX_ASSIGN_OR_RETURN(p.cu_seqlens, host_to_device(be, w.get(), cu));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {T, s.hq, s.dv}));
  p.out = out.t;
  w->held.push_back(std::move(out));

  const double asize = double(dtype_size(act));
  double keys = 0;  // sum over queries of the keys attended, all branches
  for (int64_t t = 0; t < s.len; ++t) {
    const Attended a = attended_at(t, s.cfg);
    keys += double(a.cmp + a.sel + a.win);
  }
  w->flops = 2.0 * double(s.batch * s.hq) * keys * double(s.dk + s.dv);
  w->bytes = double(T) * (double(s.hq * (s.dk + 3 + s.dv)) + double(s.h * (s.dk + s.dv))) * asize +
             double(s.batch + 1) * 4.0;
  fill_shape(s, c, w.get());
  w->shape["seq_len"] = s.len;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->nsa_forward(p); };
  // Checked on a prefix of sequence 0: its rows depend only on its earlier tokens. Long enough
  // for the selection to choose (more than select_n blocks), short enough for the CPU.
  w->check = [bp, p, s]() -> Expected<double> {
    const int64_t rows = std::min<int64_t>(s.len, int64_t(s.cfg.select_n + 4) * s.cfg.select_len);
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));
    MOEX_RETURN_IF_ERROR(bp->nsa_forward(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor q, download_rows(*bp, p.q, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor k, download_rows(*bp, p.k, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor v, download_rows(*bp, p.v, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor gates, download_rows(*bp, p.gates, rows));
    HostTensor cu(DType::kI32, {2}), ref_out(DType::kF32, {rows, s.hq, s.dv});
    cu.ptr<int32_t>()[0] = 0;
    cu.ptr<int32_t>()[1] = int32_t(rows);
    ops::NsaForwardParams r;
    r.q = q.t;
    r.k = k.t;
    r.v = v.t;
    r.gates = gates.t;
    r.cu_seqlens = cu.t;
    r.cfg = p.cfg;
    r.out = ref_out.t;
    std::vector<double> want;
    if (bp->device() == DeviceType::kCpu) {
      ref::NsaResult res;
      MOEX_RETURN_IF_ERROR(ref::nsa_forward(r, &res));
      want = std::move(res.out);
    } else {
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->nsa_forward(r));
      want = to_doubles(ref_out);
    }
    return rel_l2_error(got, want);
  };
  return w;
}

Expected<std::unique_ptr<Workload>> decode_workload(Backend& be, const BenchCase& c, const NsaShape& s, uint64_t seed,
                                                    WorkloadCache* cache) {
  const DType act = be.activation_dtype();
  const int64_t B = s.batch, max_pages = (s.len + s.page - 1) / s.page, pages = B * max_pages;
  const int64_t max_blocks = complete_blocks(s.len, s.cfg);
  auto w = std::make_unique<Workload>();
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(seed);
  for (int64_t i = pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(i + 1))]);
  HostTensor bt(DType::kI32, {B, max_pages}), lens(DType::kI32, {B}), qs(DType::kI32, {B + 1}), rows(DType::kI32, {B});
  std::copy(perm.begin(), perm.end(), bt.ptr<int32_t>());
  for (int64_t b = 0; b < B; ++b) {
    lens.ptr<int32_t>()[b] = int32_t(s.len);
    qs.ptr<int32_t>()[b] = int32_t(b);
    rows.ptr<int32_t>()[b] = int32_t(b);
  }
  qs.ptr<int32_t>()[B] = int32_t(B);
  ops::NsaDecodeParams p;
  p.cfg = s.cfg;
  p.update_cmp = true;
  p.seqs.page_size = int(s.page);
  MOEX_ASSIGN_OR_RETURN(p.seqs.block_table, host_to_device(be, w.get(), bt));
  MOEX_ASSIGN_OR_RETURN(p.seqs.seq_lens, host_to_device(be, w.get(), lens));
  MOEX_ASSIGN_OR_RETURN(p.seqs.query_start, host_to_device(be, w.get(), qs));
  MOEX_ASSIGN_OR_RETURN(p.cmp_rows, host_to_device(be, w.get(), rows));
  MOEX_ASSIGN_OR_RETURN(p.q, random_tensor(be, w.get(), act, {B, s.hq, s.dk}, seed + 1, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.gates, random_tensor(be, w.get(), act, {B, s.hq, 3}, seed + 2, 0.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.k_cache, cached_random_tensor(be, w.get(), cache, "nsa.k", act, {pages, s.page, s.h, s.dk}, seed + 3, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.v_cache, cached_random_tensor(be, w.get(), cache, "nsa.v", act, {pages, s.page, s.h, s.dv}, seed + 4, -1.f, 1.f));
  // Random compressed rows stand for earlier blocks' means (the op only reads them); the block
  // the new token closes, if any, the op writes itself.
  MOEX_ASSIGN_OR_RETURN(p.k_cmp_cache, random_tensor(be, w.get(), act, {B, std::max<int64_t>(max_blocks, 1), s.h, s.dk}, seed + 5, -0.2f, 0.2f));
  MOEX_ASSIGN_OR_RETURN(p.v_cmp_cache, random_tensor(be, w.get(), act, {B, std::max<int64_t>(max_blocks, 1), s.h, s.dv}, seed + 6, -0.2f, 0.2f));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {B, s.hq, s.dv}));
  p.out = out.t;
  w->held.push_back(std::move(out));

  const double asize = double(dtype_size(act));
  const int64_t t = s.len - 1;
  const Attended a = attended_at(t, s.cfg);
  // Raw rows read once: every visible token while the selection takes all blocks; else the
  // window plus the selected blocks, less the forced local blocks' tokens inside the window
  // (counted once). The free picks are assumed to lie outside the window.
  const int64_t nb = t / s.cfg.select_len + 1, local = std::min<int64_t>(s.cfg.num_local, nb);
  const int64_t local_tokens = local == 0 ? 0 : (local - 1) * s.cfg.select_len + t % s.cfg.select_len + 1;
  const int64_t raw_rows = nb <= s.cfg.select_n ? t + 1 : a.win + a.sel - std::min(local_tokens, a.win);
  const bool closes = s.len >= s.cfg.block_len && (s.len - s.cfg.block_len) % s.cfg.block_stride == 0;
  w->bytes = double(B * s.h) * double(raw_rows + a.cmp) * double(s.dk + s.dv) * asize +
             double(B * s.hq) * double(s.dk + 3 + s.dv) * asize + double(B * max_pages) * 4.0 +
             (closes ? double(B * s.h) * double(s.dk + s.dv) * asize : 0.0);
  w->flops = 2.0 * double(B * s.hq) * double(a.cmp + a.sel + a.win) * double(s.dk + s.dv);
  fill_shape(s, c, w.get());
  w->shape["kv_len"] = s.len;
  w->shape["page"] = s.page;
  w->shape["raw_rows_read"] = raw_rows;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->nsa_decode(p); };
  // Checked on the first sequence (two when short): its pages and compressed row copied out.
  w->check = [bp, p, s, perm, max_pages, max_blocks]() -> Expected<double> {
    const int64_t seqs = std::min<int64_t>(s.batch, s.len > 8192 ? 1 : 2);
    MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));
    MOEX_RETURN_IF_ERROR(bp->nsa_decode(p));
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, seqs));
    MOEX_ASSIGN_OR_RETURN(HostTensor q, download_rows(*bp, p.q, seqs));
    MOEX_ASSIGN_OR_RETURN(HostTensor gates, download_rows(*bp, p.gates, seqs));
    MOEX_ASSIGN_OR_RETURN(HostTensor kc, download_rows(*bp, p.k_cmp_cache, seqs));
    MOEX_ASSIGN_OR_RETURN(HostTensor vc, download_rows(*bp, p.v_cmp_cache, seqs));
    std::vector<int32_t> used(perm.begin(), perm.begin() + seqs * max_pages);
    MOEX_ASSIGN_OR_RETURN(HostTensor kp, download_pages(*bp, p.k_cache, used));
    MOEX_ASSIGN_OR_RETURN(HostTensor vp, download_pages(*bp, p.v_cache, used));
    std::vector<double> want;
    if (bp->device() != DeviceType::kCpu) {
      HostTensor bt(DType::kI32, {seqs, max_pages}), lens(DType::kI32, {seqs}), qs(DType::kI32, {seqs + 1}),
          rows(DType::kI32, {seqs}), ref_out(DType::kF32, {seqs, s.hq, s.dv});
      std::iota(bt.ptr<int32_t>(), bt.ptr<int32_t>() + seqs * max_pages, 0);
      for (int64_t b = 0; b <= seqs; ++b) qs.ptr<int32_t>()[b] = int32_t(b);
      for (int64_t b = 0; b < seqs; ++b) {
        lens.ptr<int32_t>()[b] = int32_t(s.len);
        rows.ptr<int32_t>()[b] = int32_t(b);
      }
      ops::NsaDecodeParams r = p;
      r.q = q.t;
      r.gates = gates.t;
      r.k_cache = kp.t;
      r.v_cache = vp.t;
      r.seqs.block_table = bt.t;
      r.seqs.seq_lens = lens.t;
      r.seqs.query_start = qs.t;
      r.k_cmp_cache = kc.t;
      r.v_cmp_cache = vc.t;
      r.cmp_rows = rows.t;
      r.out = ref_out.t;
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->nsa_decode(r));
      want = to_doubles(ref_out);
    } else {
      // Naive: the sequence in forward form, last row only; its compressed rows (the block this
      // step closed included, as the target wrote it) become given ones.
      const int64_t T = seqs * s.len, nc = max_blocks;
      HostTensor fq(q.t.dtype, {T, s.hq, s.dk}), fg(gates.t.dtype, {T, s.hq, 3});
      HostTensor fk(kp.t.dtype, {T, s.h, s.dk}), fv(vp.t.dtype, {T, s.h, s.dv});
      HostTensor fkc(kc.t.dtype, {seqs * nc, s.h, s.dk}), fvc(vc.t.dtype, {seqs * nc, s.h, s.dv});
      HostTensor cu(DType::kI32, {seqs + 1}), cuc(DType::kI32, {seqs + 1});
      const size_t as = dtype_size(q.t.dtype);
      auto copy = [&](HostTensor& dst, int64_t dst_row, const HostTensor& src, int64_t src_row, int64_t width) {
        std::copy_n(src.bytes.data() + size_t(src_row * width) * as, size_t(width) * as,
                    dst.bytes.data() + size_t(dst_row * width) * as);
      };
      std::vector<char> wanted(static_cast<size_t>(T), 0);
      for (int64_t b = 0; b < seqs; ++b) {
        cu.ptr<int32_t>()[b] = int32_t(b * s.len);
        cuc.ptr<int32_t>()[b] = int32_t(b * nc);
        const int64_t last = (b + 1) * s.len - 1;
        wanted[size_t(last)] = 1;
        copy(fq, last, q, b, s.hq * s.dk);
        copy(fg, last, gates, b, s.hq * 3);
        for (int64_t tok = 0; tok < s.len; ++tok) {
          const int64_t slot = (b * max_pages + tok / s.page) * s.page + tok % s.page;
          copy(fk, b * s.len + tok, kp, slot, s.h * s.dk);
          copy(fv, b * s.len + tok, vp, slot, s.h * s.dv);
        }
        for (int64_t j = 0; j < nc; ++j) {
          copy(fkc, b * nc + j, kc, b * max_blocks + j, s.h * s.dk);
          copy(fvc, b * nc + j, vc, b * max_blocks + j, s.h * s.dv);
        }
      }
      cu.ptr<int32_t>()[seqs] = int32_t(T);
      cuc.ptr<int32_t>()[seqs] = int32_t(seqs * nc);
      ops::NsaForwardParams r;
      r.q = fq.t;
      r.k = fk.t;
      r.v = fv.t;
      r.gates = fg.t;
      r.cu_seqlens = cu.t;
      r.k_cmp = fkc.t;
      r.v_cmp = fvc.t;
      r.cu_cmp = cuc.t;
      r.cfg = p.cfg;
      ref::NsaResult res;
      MOEX_RETURN_IF_ERROR(ref::nsa_forward(r, &res, wanted));
      const int64_t width = s.hq * s.dv;
      for (int64_t b = 0; b < seqs; ++b) {
        const int64_t last = (b + 1) * s.len - 1;
        want.insert(want.end(), res.out.begin() + last * width, res.out.begin() + (last + 1) * width);
      }
    }
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace

Expected<std::unique_ptr<Workload>> make_nsa_workload(Backend& be, const BenchCase& c, uint64_t seed, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(NsaShape s, nsa_shape(c));
  if (s.decode) return decode_workload(be, c, s, seed, cache);
  return forward_workload(be, c, s, seed);
}

}  // namespace moex::bench
