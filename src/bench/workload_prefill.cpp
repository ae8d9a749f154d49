// Prefill attention benchmark cases (op "prefill_attention"): `batch` sequences of `seq_len`
// tokens in one ragged batch, causal (the non-absorbed MLA prompt path). Fields (defaults):
// q_heads, kv_heads (q_heads), dk (192), dv (128), batch (1), seq_len, causal (1), window (0).
// Floor: flops = 2 * len^2 / 2 * q_heads * (dk + dv) per sequence (QK^T and PV over the causal
// triangle, the count cuDNN's published rates use) at the measured bf16 GEMM rate; bytes = q, k,
// v read and out written once. Notes: docs/kernels/prefill_attention.md.
#include <algorithm>
#include <cmath>
#include <limits>

#include "bench/workloads.h"

namespace moex::bench {
namespace {

struct PrefillShape {
  int64_t batch = 1, len = 0, hq = 0, h = 0, dk = 192, dv = 128, window = 0;
  bool causal = true;
};

Expected<PrefillShape> prefill_shape(const BenchCase& c) {
  PrefillShape s;
  s.batch = case_int_or(c, "batch", 1);
  MOEX_ASSIGN_OR_RETURN(s.len, case_int(c, "seq_len"));
  MOEX_ASSIGN_OR_RETURN(s.hq, case_int(c, "q_heads"));
  s.h = case_int_or(c, "kv_heads", s.hq);
  s.dk = case_int_or(c, "dk", 192);
  s.dv = case_int_or(c, "dv", 128);
  s.causal = case_int_or(c, "causal", 1) != 0;
  s.window = case_int_or(c, "window", 0);
  if (s.batch < 1 || s.len < 1 || s.hq < 1 || s.h < 1 || s.hq % s.h != 0 || s.dk < 1 || s.dv < 1 || s.window < 0)
    return invalid_argument("case " + c.name + ": need batch, seq_len, dims > 0, window >= 0, q_heads a multiple of kv_heads");
  if (s.batch * s.len >= (int64_t(1) << 30)) return invalid_argument("case " + c.name + ": too many tokens");
  return s;
}

// Naive double attention over one sequence of `rows` tokens held in host tensors (the CPU
// backend's check): out [rows, hq, dv].
std::vector<double> naive(const HostTensor& q, const HostTensor& k, const HostTensor& v, const PrefillShape& s,
                          int64_t rows, float scale) {
  const std::vector<double> qd = to_doubles(q), kd = to_doubles(k), vd = to_doubles(v);
  std::vector<double> out(size_t(rows * s.hq * s.dv), 0.0), sc;
  const int64_t grp = s.hq / s.h;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t hh = 0; hh < s.hq; ++hh) {
      const int64_t g = hh / grp;
      const int64_t lo = s.window > 0 ? std::max<int64_t>(0, t - s.window + 1) : 0, hi = s.causal ? t + 1 : rows;
      sc.assign(size_t(hi - lo), 0.0);
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = lo; j < hi; ++j) {
        double d = 0;
        for (int64_t e = 0; e < s.dk; ++e) d += qd[size_t((t * s.hq + hh) * s.dk + e)] * kd[size_t((j * s.h + g) * s.dk + e)];
        sc[size_t(j - lo)] = d * double(scale);
        mx = std::max(mx, sc[size_t(j - lo)]);
      }
      double sum = 0;
      for (double& x : sc) { x = std::exp(x - mx); sum += x; }
      for (int64_t j = lo; j < hi; ++j)
        for (int64_t e = 0; e < s.dv; ++e)
          out[size_t((t * s.hq + hh) * s.dv + e)] += sc[size_t(j - lo)] / sum * vd[size_t((j * s.h + g) * s.dv + e)];
    }
  return out;
}

}  // namespace

Expected<std::unique_ptr<Workload>> make_prefill_workload(Backend& be, const BenchCase& c, uint64_t seed,
                                                          WorkloadCache* /*cache*/) {
  MOEX_ASSIGN_OR_RETURN(PrefillShape s, prefill_shape(c));
  const DType act = be.activation_dtype();
  const int64_t T = s.batch * s.len;
  auto w = std::make_unique<Workload>();
  ops::PrefillAttentionParams p;
  p.causal = s.causal;
  p.window = int(s.window);
  p.scale = float(1.0 / std::sqrt(double(s.dk)));
  MOEX_ASSIGN_OR_RETURN(p.q, random_tensor(be, w.get(), act, {T, s.hq, s.dk}, seed + 1, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.k, random_tensor(be, w.get(), act, {T, s.h, s.dk}, seed + 2, -1.f, 1.f));
  MOEX_ASSIGN_OR_RETURN(p.v, random_tensor(be, w.get(), act, {T, s.h, s.dv}, seed + 3, -1.f, 1.f));
  HostTensor cu(DType::kI32, {s.batch + 1});
  for (int64_t i = 0; i <= s.batch; ++i) cu.ptr<int32_t>()[i] = int32_t(i * s.len);
  MOEX_ASSIGN_OR_RETURN(p.cu_seqlens, host_to_device(be, w.get(), cu));
  MOEX_ASSIGN_OR_RETURN(DeviceTensor out, device_alloc(be, act, {T, s.hq, s.dv}));
  p.out = out.t;
  w->held.push_back(std::move(out));

  const double asize = double(dtype_size(act)), len = double(s.len);
  const double pairs = s.causal ? len * len / 2 : len * len;  // (query, key) pairs per sequence and head
  w->flops = 2.0 * pairs * double(s.batch * s.hq) * double(s.dk + s.dv);
  w->bytes = double(T) * (double(s.hq * (s.dk + s.dv)) + double(s.h * (s.dk + s.dv))) * asize + double(s.batch + 1) * 4.0;
  w->shape = c.shape;
  w->shape["batch"] = s.batch;
  w->shape["seq_len"] = s.len;
  w->shape["kv_heads"] = s.h;
  w->shape["dk"] = s.dk;
  w->shape["dv"] = s.dv;
  w->shape["causal"] = s.causal ? 1 : 0;
  w->shape["window"] = s.window;
  w->tolerance = act == DType::kF32 ? 1e-4 : 1e-2;
  Backend* bp = &be;
  w->launch = [bp, p] { return bp->prefill_attention(p); };
  // Checked on a prefix of sequence 0 (causal: its rows depend only on its earlier tokens; full
  // attention: the prefix is then a sequence of its own, checked against the same prefix run).
  w->check = [bp, p, s]() -> Expected<double> {
    const int64_t rows = std::min<int64_t>(s.len, bp->device() == DeviceType::kCpu ? 96 : 320);
    ops::PrefillAttentionParams g = p;
    DeviceTensor dcu;  // the prefix's cu_seqlens, alive until the run completes
    if (!s.causal) {  // run the prefix as its own sequence
      HostTensor cu1(DType::kI32, {2});
      cu1.ptr<int32_t>()[0] = 0;
      cu1.ptr<int32_t>()[1] = int32_t(rows);
      MOEX_ASSIGN_OR_RETURN(dcu, upload(*bp, cu1));
      g.cu_seqlens = dcu.t;
      g.q = p.q.slice(0, 0, rows); g.k = p.k.slice(0, 0, rows); g.v = p.v.slice(0, 0, rows);
      g.out = p.out.slice(0, 0, rows);
      MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));
      MOEX_RETURN_IF_ERROR(bp->prefill_attention(g));
    } else {
      MOEX_RETURN_IF_ERROR(bp->fill(p.out.data, 0xff, p.out.nbytes()));
      MOEX_RETURN_IF_ERROR(bp->prefill_attention(g));
    }
    MOEX_RETURN_IF_ERROR(bp->synchronize());
    MOEX_ASSIGN_OR_RETURN(HostTensor got, download_rows(*bp, p.out, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor q, download_rows(*bp, p.q, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor k, download_rows(*bp, p.k, rows));
    MOEX_ASSIGN_OR_RETURN(HostTensor v, download_rows(*bp, p.v, rows));
    std::vector<double> want;
    if (bp->device() == DeviceType::kCpu) {
      want = naive(q, k, v, s, rows, p.scale);
    } else {
      HostTensor cu1(DType::kI32, {2}), ref_out(DType::kF32, {rows, s.hq, s.dv});
      cu1.ptr<int32_t>()[0] = 0;
      cu1.ptr<int32_t>()[1] = int32_t(rows);
      ops::PrefillAttentionParams r = p;
      r.q = q.t; r.k = k.t; r.v = v.t; r.cu_seqlens = cu1.t; r.out = ref_out.t; r.lse = Tensor{};
      std::unique_ptr<Backend> cpu = make_cpu_backend();
      MOEX_RETURN_IF_ERROR(cpu->prefill_attention(r));
      want = to_doubles(ref_out);
    }
    return rel_l2_error(got, want);
  };
  return w;
}

}  // namespace moex::bench
