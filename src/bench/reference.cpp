#include "bench/reference.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace moex::bench::ref {
namespace {

double rd(const Tensor& t, int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0) {
  int64_t off = i0 * t.stride[0];
  if (t.ndim > 1) off += i1 * t.stride[1];
  if (t.ndim > 2) off += i2 * t.stride[2];
  if (t.ndim > 3) off += i3 * t.stride[3];
  return load_as_f32(t.data, t.dtype, size_t(off));
}

int32_t ri(const Tensor& t, int64_t i0, int64_t i1 = 0) {
  int64_t off = i0 * t.stride[0] + (t.ndim > 1 ? i1 * t.stride[1] : 0);
  return static_cast<const int32_t*>(t.data)[off];
}

Status need(bool ok, const std::string& what) { return ok ? Status::ok() : invalid_argument("reference: " + what); }

double silu(double g) { return g / (1.0 + std::exp(-g)); }

// The cache slot of token position s of sequence i (page from the block table).
struct PageWalk {
  const ops::PagedSeqs& seqs;
  int64_t slot_page(int64_t seq, int64_t s) const { return ri(seqs.block_table, seq, s / seqs.page_size); }
};

}  // namespace

Status fused_moe(const ops::FusedMoeParams& p, std::vector<double>* out) {
  MOEX_RETURN_IF_ERROR(need(p.x.ndim == 2 && p.topk_ids.ndim == 2 && p.w13.ndim == 3 && p.w2.ndim == 3,
                            "fused_moe: x, topk_ids must be 2-D and w13, w2 3-D"));
  const int64_t n = p.x.shape[0], hidden = p.x.shape[1], top_k = p.topk_ids.shape[1];
  const int64_t inter = p.w2.shape[2];
  MOEX_RETURN_IF_ERROR(need(p.w13.shape[1] == 2 * inter && p.w13.shape[2] == hidden && p.w2.shape[1] == hidden,
                            "fused_moe: w13 [E, 2*inter, hidden] / w2 [E, hidden, inter] disagree"));
  const int64_t local = p.w13.shape[0];
  out->assign(size_t(n * hidden), 0.0);
  std::vector<double> act(static_cast<size_t>(inter));
  for (int64_t t = 0; t < n; ++t) {
    double* o = out->data() + t * hidden;
    for (int64_t j = 0; j < top_k; ++j) {
      int32_t e = ri(p.topk_ids, t, j);
      int64_t le = e;
      if (!p.expert_map.empty()) {
        MOEX_RETURN_IF_ERROR(need(e >= 0 && e < p.expert_map.shape[0], "fused_moe: expert id out of expert_map"));
        le = ri(p.expert_map, e);
        if (le < 0) continue;  // expert lives on another device
      }
      MOEX_RETURN_IF_ERROR(need(le >= 0 && le < local, "fused_moe: expert id " + std::to_string(e) + " out of range"));
      double w = rd(p.topk_weights, t, j);
      for (int64_t i = 0; i < inter; ++i) {
        double g = 0, u = 0;
        for (int64_t h = 0; h < hidden; ++h) {
          double xv = rd(p.x, t, h);
          g += rd(p.w13, le, i, h) * xv;
          u += rd(p.w13, le, inter + i, h) * xv;
        }
        act[size_t(i)] = silu(g) * u;
      }
      for (int64_t h = 0; h < hidden; ++h) {
        double d = 0;
        for (int64_t i = 0; i < inter; ++i) d += rd(p.w2, le, h, i) * act[size_t(i)];
        o[h] += w * d;
      }
    }
  }
  return Status::ok();
}

Status mla_attention(const ops::MlaAttentionParams& p, std::vector<double>* out, std::vector<double>* lse) {
  MOEX_RETURN_IF_ERROR(need(p.q.ndim == 3 && p.cache.ndim == 3, "mla: q [n, heads, d] and cache [pages, page, d]"));
  const int64_t n = p.q.shape[0], heads = p.q.shape[1], dim = p.q.shape[2], rank = p.kv_lora_rank;
  MOEX_RETURN_IF_ERROR(need(p.cache.shape[2] == dim && rank <= dim, "mla: cache dim differs from q dim"));
  const int64_t num_seqs = p.seqs.seq_lens.shape[0];
  PageWalk walk{p.seqs};
  out->assign(size_t(n * heads * rank), 0.0);
  lse->assign(size_t(n * heads), 0.0);
  std::vector<double> score;
  for (int64_t i = 0; i < num_seqs; ++i) {
    int64_t q0 = ri(p.seqs.query_start, i), q1 = ri(p.seqs.query_start, i + 1), len = ri(p.seqs.seq_lens, i);
    for (int64_t r = q0; r < q1; ++r) {
      int64_t pos = len - (q1 - r);  // causal: keys 0..pos
      MOEX_RETURN_IF_ERROR(need(pos >= 0, "mla: seq_lens smaller than the query count"));
      for (int64_t h = 0; h < heads; ++h) {
        score.assign(size_t(pos + 1), 0.0);
        double mx = -INFINITY;
        for (int64_t s = 0; s <= pos; ++s) {
          int64_t page = walk.slot_page(i, s), off = s % p.seqs.page_size;
          double d = 0;
          for (int64_t c = 0; c < dim; ++c) d += rd(p.q, r, h, c) * rd(p.cache, page, off, c);
          if (!p.cache_scale.empty()) d *= rd(p.cache_scale, page, off);  // FP8 cache: e4m3 * token scale
          score[size_t(s)] = double(p.scale) * d;
          mx = std::max(mx, score[size_t(s)]);
        }
        double sum = 0;
        for (double& v : score) sum += (v = std::exp(v - mx));
        double* o = out->data() + (r * heads + h) * rank;
        for (int64_t s = 0; s <= pos; ++s) {
          int64_t page = walk.slot_page(i, s), off = s % p.seqs.page_size;
          double w = score[size_t(s)] / sum;
          if (!p.cache_scale.empty()) w *= rd(p.cache_scale, page, off);
          for (int64_t c = 0; c < rank; ++c) o[c] += w * rd(p.cache, page, off, c);
        }
        (*lse)[size_t(r * heads + h)] = mx + std::log(sum);
      }
    }
  }
  return Status::ok();
}

Status gqa_attention(const ops::GqaAttentionParams& p, std::vector<double>* out) {
  MOEX_RETURN_IF_ERROR(need(p.q.ndim == 3 && p.k_cache.ndim == 4 && p.v_cache.ndim == 4,
                            "gqa: q [n, heads, d], caches [pages, page, kv_heads, d]"));
  const int64_t n = p.q.shape[0], qh = p.q.shape[1], dk = p.q.shape[2];
  const int64_t kvh = p.k_cache.shape[2], dv = p.v_cache.shape[3];
  MOEX_RETURN_IF_ERROR(need(kvh > 0 && qh % kvh == 0 && p.k_cache.shape[3] == dk, "gqa: head counts or head_dim disagree"));
  const int64_t group = qh / kvh, num_seqs = p.seqs.seq_lens.shape[0];
  PageWalk walk{p.seqs};
  out->assign(size_t(n * qh * dv), 0.0);
  std::vector<double> score;
  for (int64_t i = 0; i < num_seqs; ++i) {
    int64_t q0 = ri(p.seqs.query_start, i), q1 = ri(p.seqs.query_start, i + 1), len = ri(p.seqs.seq_lens, i);
    for (int64_t r = q0; r < q1; ++r) {
      int64_t pos = len - (q1 - r);
      MOEX_RETURN_IF_ERROR(need(pos >= 0, "gqa: seq_lens smaller than the query count"));
      int64_t first = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
      for (int64_t h = 0; h < qh; ++h) {
        int64_t kh = h / group;
        score.assign(size_t(pos + 1 - first), 0.0);
        double mx = -INFINITY;
        for (int64_t s = first; s <= pos; ++s) {
          int64_t page = walk.slot_page(i, s), off = s % p.seqs.page_size;
          double d = 0;
          for (int64_t c = 0; c < dk; ++c) d += rd(p.q, r, h, c) * rd(p.k_cache, page, off, kh, c);
          double v = double(p.scale) * d;
          score[size_t(s - first)] = v;
          mx = std::max(mx, v);
        }
        double sum = 0;
        for (double& v : score) sum += (v = std::exp(v - mx));
        double* o = out->data() + (r * qh + h) * dv;
        for (int64_t s = first; s <= pos; ++s) {
          int64_t page = walk.slot_page(i, s), off = s % p.seqs.page_size;
          double w = score[size_t(s - first)] / sum;
          for (int64_t c = 0; c < dv; ++c) o[c] += w * rd(p.v_cache, page, off, kh, c);
        }
      }
    }
  }
  return Status::ok();
}

Status rms_norm(const ops::RmsNormParams& p, std::vector<double>* out) {
  MOEX_RETURN_IF_ERROR(need(p.x.ndim == 2 && p.weight.ndim == 1 && p.weight.shape[0] == p.x.shape[1],
                            "rms_norm: x [rows, dim], weight [dim]"));
  const int64_t rows = p.x.shape[0], dim = p.x.shape[1];
  out->assign(size_t(rows * dim), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += rd(p.x, r, c) * rd(p.x, r, c);
    double inv = 1.0 / std::sqrt(ss / double(dim) + double(p.eps));
    for (int64_t c = 0; c < dim; ++c) (*out)[size_t(r * dim + c)] = rd(p.x, r, c) * inv * rd(p.weight, c);
  }
  return Status::ok();
}

}  // namespace moex::bench::ref
