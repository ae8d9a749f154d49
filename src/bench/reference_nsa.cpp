// Naive double-precision Native Sparse Attention (contract: src/ops/nsa.h), written from the
// contract's definitions and independent of the CPU backend: every value in double, every sum a
// straight loop, the selection by a stable sort on (importance descending, index ascending).
#include <algorithm>
#include <cmath>
#include <string>

#include "bench/reference.h"

namespace moex::bench::ref {
namespace {

using Rows = std::vector<std::vector<double>>;

double rd3(const Tensor& t, int64_t i0, int64_t i1, int64_t i2) {
  return load_as_f32(t.data, t.dtype, size_t(i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2]));
}
int32_t ri(const Tensor& t, int64_t i) { return static_cast<const int32_t*>(t.data)[i * t.stride[0]]; }

int64_t complete_blocks(int64_t len, const ops::NsaConfig& c) {
  return len >= c.block_len ? (len - c.block_len) / c.block_stride + 1 : 0;
}

// Softmax attention of q over rows (keys[id], vals[id]) for the listed ids; adds w * result into out.
void attend(const std::vector<double>& q, const Rows& keys, const Rows& vals, const std::vector<int64_t>& ids,
            double scale, std::vector<double>* probs, double* out) {
  const size_t dv = vals.empty() ? 0 : vals[0].size();
  std::fill(out, out + dv, 0.0);
  if (probs) probs->assign(ids.size(), 0.0);
  if (ids.empty()) return;
  std::vector<double> sc(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    double dot = 0;
    for (size_t e = 0; e < q.size(); ++e) dot += q[e] * keys[size_t(ids[i])][e];
    sc[i] = scale * dot;
  }
  const double mx = *std::max_element(sc.begin(), sc.end());
  double sum = 0;
  for (double& s : sc) sum += (s = std::exp(s - mx));
  for (size_t i = 0; i < ids.size(); ++i) {
    const double p = sc[i] / sum;
    if (probs) (*probs)[i] = p;
    for (size_t e = 0; e < dv; ++e) out[e] += p * vals[size_t(ids[i])][e];
  }
}

std::vector<int64_t> iota_ids(int64_t lo, int64_t hi) {  // [lo, hi)
  std::vector<int64_t> v;
  for (int64_t i = lo; i < hi; ++i) v.push_back(i);
  return v;
}

}  // namespace

std::vector<double> nsa_importance(const ops::NsaConfig& cfg, int64_t t, const Rows& q, const Rows& kc) {
  const int64_t nb = t / cfg.select_len + 1, nc = complete_blocks(t + 1, cfg);
  std::vector<double> imp(static_cast<size_t>(nb), 0.0);
  Rows no_vals;
  for (const std::vector<double>& qh : q) {
    std::vector<double> probs;
    double unused = 0;
    attend(qh, kc, no_vals, iota_ids(0, nc), cfg.scale, &probs, &unused);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t j = 0; j < nc; ++j) {
        const int64_t lo = j * cfg.block_stride, hi = lo + cfg.block_len;  // tokens [lo, hi)
        if (lo < (b + 1) * cfg.select_len && hi > b * cfg.select_len) imp[size_t(b)] += probs[size_t(j)];
      }
  }
  return imp;
}

std::vector<int32_t> nsa_select(const ops::NsaConfig& cfg, int64_t t, const std::vector<double>& imp) {
  const int64_t nb = t / cfg.select_len + 1;
  std::vector<int32_t> chosen, rest;
  for (int64_t b = 0; b < nb; ++b) {
    const bool forced = b < cfg.num_init || b > t / cfg.select_len - cfg.num_local;
    (forced ? chosen : rest).push_back(int32_t(b));
  }
  std::stable_sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) { return imp[size_t(a)] > imp[size_t(b)]; });
  for (int32_t b : rest)
    if (int64_t(chosen.size()) < cfg.select_n) chosen.push_back(b);
  std::sort(chosen.begin(), chosen.end());
  chosen.resize(size_t(cfg.select_n), -1);
  return chosen;
}

Status nsa_forward(const ops::NsaForwardParams& p, NsaResult* r, const std::vector<char>& rows_wanted) {
  const ops::NsaConfig& cfg = p.cfg;
  if (p.q.ndim != 3 || p.k.ndim != 3 || p.v.ndim != 3 || p.gates.ndim != 3 || p.cu_seqlens.ndim != 1)
    return invalid_argument("reference: nsa_forward: q, k, v, gates must be 3-D and cu_seqlens 1-D");
  const int64_t n = p.q.shape[0], hq = p.q.shape[1], dk = p.q.shape[2], kvh = p.k.shape[1], dv = p.v.shape[2];
  if (kvh < 1 || hq % kvh != 0 || p.k.shape[2] != dk || p.v.shape[1] != kvh || cfg.block_len < 1 ||
      cfg.block_stride < 1 || cfg.select_len < 1 || cfg.select_n < 1)
    return invalid_argument("reference: nsa_forward: inconsistent heads, dims or config");
  if (!rows_wanted.empty() && int64_t(rows_wanted.size()) != n)
    return invalid_argument("reference: nsa_forward: rows_wanted must hold one flag per token");
  const int64_t g = hq / kvh, b = p.cu_seqlens.shape[0] - 1;
  const bool given = !p.k_cmp.empty();
  r->out.assign(size_t(n * hq * dv), 0.0);
  r->out_cmp = r->out_sel = r->out_win = r->out;
  r->sel_idx.assign(size_t(n * kvh * cfg.select_n), -1);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t base = ri(p.cu_seqlens, i), len = ri(p.cu_seqlens, i + 1) - base, nc_all = complete_blocks(len, cfg);
    if (given && ri(p.cu_cmp, i + 1) - ri(p.cu_cmp, i) != nc_all)
      return invalid_argument("reference: nsa_forward: cu_cmp of sequence " + std::to_string(i) + " disagrees");
    for (int64_t kv = 0; kv < kvh; ++kv) {
      Rows k(static_cast<size_t>(len), std::vector<double>(static_cast<size_t>(dk)));
      Rows v(static_cast<size_t>(len), std::vector<double>(static_cast<size_t>(dv)));
      for (int64_t s = 0; s < len; ++s) {
        for (int64_t e = 0; e < dk; ++e) k[size_t(s)][size_t(e)] = rd3(p.k, base + s, kv, e);
        for (int64_t e = 0; e < dv; ++e) v[size_t(s)][size_t(e)] = rd3(p.v, base + s, kv, e);
      }
      Rows kc(static_cast<size_t>(nc_all), std::vector<double>(static_cast<size_t>(dk), 0.0));
      Rows vc(static_cast<size_t>(nc_all), std::vector<double>(static_cast<size_t>(dv), 0.0));
      for (int64_t j = 0; j < nc_all; ++j) {
        if (given) {
          const int64_t row = ri(p.cu_cmp, i) + j;
          for (int64_t e = 0; e < dk; ++e) kc[size_t(j)][size_t(e)] = rd3(p.k_cmp, row, kv, e);
          for (int64_t e = 0; e < dv; ++e) vc[size_t(j)][size_t(e)] = rd3(p.v_cmp, row, kv, e);
          continue;
        }
        for (int64_t s = j * cfg.block_stride; s < j * cfg.block_stride + cfg.block_len; ++s) {
          for (int64_t e = 0; e < dk; ++e) kc[size_t(j)][size_t(e)] += k[size_t(s)][size_t(e)] / cfg.block_len;
          for (int64_t e = 0; e < dv; ++e) vc[size_t(j)][size_t(e)] += v[size_t(s)][size_t(e)] / cfg.block_len;
        }
      }
      for (int64_t t = 0; t < len; ++t) {
        const int64_t row = base + t;
        if (!rows_wanted.empty() && !rows_wanted[size_t(row)]) continue;
        Rows q(static_cast<size_t>(g), std::vector<double>(static_cast<size_t>(dk)));
        for (int64_t h = 0; h < g; ++h)
          for (int64_t e = 0; e < dk; ++e) q[size_t(h)][size_t(e)] = rd3(p.q, row, kv * g + h, e);
        const std::vector<int32_t> sel = nsa_select(cfg, t, nsa_importance(cfg, t, q, kc));
        std::copy(sel.begin(), sel.end(), r->sel_idx.begin() + (row * kvh + kv) * cfg.select_n);
        std::vector<int64_t> sel_ids;
        for (int32_t blk : sel)
          for (int64_t s = int64_t(blk) * cfg.select_len; blk >= 0 && s < (blk + 1) * int64_t(cfg.select_len) && s <= t; ++s)
            sel_ids.push_back(s);
        const int64_t wlo = cfg.window > 0 ? std::max<int64_t>(0, t - cfg.window + 1) : t + 1;
        for (int64_t h = 0; h < g; ++h) {
          const int64_t head = kv * g + h, o = (row * hq + head) * dv;
          attend(q[size_t(h)], kc, vc, iota_ids(0, complete_blocks(t + 1, cfg)), cfg.scale, nullptr, &r->out_cmp[size_t(o)]);
          attend(q[size_t(h)], k, v, sel_ids, cfg.scale, nullptr, &r->out_sel[size_t(o)]);
          attend(q[size_t(h)], k, v, iota_ids(wlo, t + 1), cfg.scale, nullptr, &r->out_win[size_t(o)]);
          const double g0 = rd3(p.gates, row, head, 0), g1 = rd3(p.gates, row, head, 1), g2 = rd3(p.gates, row, head, 2);
          for (int64_t e = 0; e < dv; ++e)
            r->out[size_t(o + e)] = g0 * r->out_cmp[size_t(o + e)] + g1 * r->out_sel[size_t(o + e)] +
                                    g2 * r->out_win[size_t(o + e)];
        }
      }
    }
  }
  return Status::ok();
}

}  // namespace moex::bench::ref
