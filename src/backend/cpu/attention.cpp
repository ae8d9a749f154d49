// cache_write, and GQA / MLA attention over the paged KV cache (contract: src/ops/attention.h).
//
// Attention per (query row, head), two passes in fp32 over the visible key positions
// s = lo .. pos in increasing order:
//   score[s] = dot(q, k[s]) * scale            (dot in the 16-lane order of cpu_common.h)
//   m        = max_s score[s]
//   l        = sum_s exp(score[s] - m)          (increasing s)
//   acc[d]   = sum_s exp(score[s] - m) * v[s, d] (increasing s, starting from 0)
//   out[d]   = acc[d] / l;  lse = m + log(l)
// A query's result depends only on its own sequence's cache, never on the batch or threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

// Host-side view of the sequence layout after validation.
struct SeqLayout {
  std::vector<int32_t> seq_of_row;  // [n]
  std::vector<int32_t> pos_of_row;  // [n] position of each query row
};

inline int32_t table_at(const Tensor& bt, int64_t seq, int64_t page) {
  return bt.ptr<const int32_t>()[seq * bt.stride[0] + page * bt.stride[1]];
}

// Visible key positions [lo, pos] for a query at pos.
inline int64_t window_lo(int64_t pos, int sliding_window) {
  return sliding_window > 0 ? std::max<int64_t>(0, pos - sliding_window + 1) : 0;
}

Status check_seqs(const char* op, const ops::PagedSeqs& s, int64_t n, int64_t num_pages, int64_t cache_page_size,
                  int sliding_window, SeqLayout* out) {
  MOEX_RETURN_IF_ERROR(check_tensor(op, "block_table", s.block_table, 2));
  MOEX_RETURN_IF_ERROR(check_i32(op, "block_table", s.block_table));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "seq_lens", s.seq_lens, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "seq_lens", s.seq_lens));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "query_start", s.query_start, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "query_start", s.query_start));
  const int64_t seqs = s.seq_lens.shape[0], max_pages = s.block_table.shape[1];
  const std::string o(op);
  if (s.page_size < 1 || s.page_size != cache_page_size)
    return invalid_argument(o + ": page_size " + std::to_string(s.page_size) + " does not match the cache's page dim " +
                            std::to_string(cache_page_size));
  MOEX_RETURN_IF_ERROR(check_dim(op, "block_table", s.block_table, 0, seqs));
  MOEX_RETURN_IF_ERROR(check_dim(op, "query_start", s.query_start, 0, seqs + 1));
  if (i32_at(s.query_start, 0) != 0 || i32_at(s.query_start, seqs) != n)
    return invalid_argument(o + ": query_start must run from 0 to the query rows (" + std::to_string(n) + ")");
  out->seq_of_row.assign(static_cast<size_t>(n), 0);
  out->pos_of_row.assign(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < seqs; ++i) {
    const int64_t q0 = i32_at(s.query_start, i), q1 = i32_at(s.query_start, i + 1), len = i32_at(s.seq_lens, i);
    const std::string seq = "sequence " + std::to_string(i);
    if (q1 < q0) return invalid_argument(o + ": query_start decreases at " + seq);
    if (len < q1 - q0)
      return invalid_argument(o + ": seq_lens of " + seq + " (" + std::to_string(len) + ") is below its query count");
    if (len > max_pages * s.page_size)
      return invalid_argument(o + ": seq_lens of " + seq + " exceeds block_table capacity");
    if (q1 == q0) continue;
    // Pages this sequence's queries read must be valid.
    const int64_t first_pos = len - (q1 - q0);
    for (int64_t pg = window_lo(first_pos, sliding_window) / s.page_size; pg * s.page_size < len; ++pg) {
      const int32_t page = table_at(s.block_table, i, pg);
      if (page < 0 || page >= num_pages)
        return invalid_argument(o + ": block_table[" + std::to_string(i) + ", " + std::to_string(pg) + "] = " +
                                std::to_string(page) + " is outside the cache's " + std::to_string(num_pages) + " pages");
    }
    for (int64_t t = q0; t < q1; ++t) {
      out->seq_of_row[size_t(t)] = int32_t(i);
      out->pos_of_row[size_t(t)] = int32_t(len - (q1 - t));
    }
  }
  return Status::ok();
}

// One attention job: `g` query heads (q rows [g, d]) against keys lo..hi of one sequence.
// key(s, dst) / val(s, dst) convert key / value row s to fp32. Writes out [g, dv], lse [g].
// Scratch: scores [g, hi - lo + 1], row [max(d, dv)], stats [2 g].
template <class KeyFn, class ValFn>
void attend(const float* q, int64_t g, int64_t d, int64_t dv, int64_t lo, int64_t hi, float scale, KeyFn&& key,
            ValFn&& val, float* scores, float* row, float* stats, float* out, float* lse) {
  const int64_t len = hi - lo + 1;
  for (int64_t s = lo; s <= hi; ++s) {
    key(s, row);
    for (int64_t h = 0; h < g; ++h) scores[h * len + (s - lo)] = dot_f32(q + h * d, row, d) * scale;
  }
  float* mx = stats;    // [g]
  float* l = stats + g;  // [g]
  for (int64_t h = 0; h < g; ++h) {
    float m = scores[h * len];
    for (int64_t s = 1; s < len; ++s) m = std::max(m, scores[h * len + s]);
    mx[h] = m;
    l[h] = 0.f;
  }
  std::fill(out, out + g * dv, 0.f);
  for (int64_t s = lo; s <= hi; ++s) {
    val(s, row);
    for (int64_t h = 0; h < g; ++h) {
      const float pe = std::exp(scores[h * len + (s - lo)] - mx[h]);
      l[h] += pe;
      float* o = out + h * dv;  // [dv]
      for (int64_t c = 0; c < dv; ++c) o[c] += pe * row[c];
    }
  }
  for (int64_t h = 0; h < g; ++h) {
    float* o = out + h * dv;  // [dv]
    for (int64_t c = 0; c < dv; ++c) o[c] = o[c] / l[h];
    if (lse) lse[h] = mx[h] + std::log(l[h]);
  }
}

inline const char* elem(const Tensor& t, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<const char*>(t.data) +
         (i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2]) * int64_t(dtype_size(t.dtype));
}

// Power-of-two exponent e of an FP8 row scale (contract: CacheWriteParams::dst_scale): the
// smallest e with amax <= 448 * 2^e, read off amax's bits (448 = 1.75 * 2^8) so the CUDA
// kernel computes the same e without a division. Zero, subnormal or non-finite amax: e = 0.
int fp8_scale_exp(float amax) {
  const uint32_t b = f32_to_bits(amax);
  const int biased = int((b >> 23) & 0xffu);
  if (biased == 0 || biased == 0xff) return 0;
  return std::max(biased - 127 - 8 + ((b & 0x7fffffu) > 0x600000u ? 1 : 0), -126);
}

}  // namespace

Status cache_write(const Ctx& ctx, const ops::CacheWriteParams& p) {
  constexpr const char* op = "cache_write";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "src", p.src, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "src", p.src));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "slot_mapping", p.slot_mapping, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "slot_mapping", p.slot_mapping));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "dst", p.dst, 2));
  MOEX_RETURN_IF_ERROR(check_float(op, "dst", p.dst));
  const int64_t n = p.src.shape[0], dim = p.src.shape[1], slots = p.dst.shape[0];
  MOEX_RETURN_IF_ERROR(check_dim(op, "slot_mapping", p.slot_mapping, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "dst", p.dst, 1, dim));
  const bool quantize = !p.dst_scale.empty();
  if (quantize) {
    if (p.dst.dtype != DType::kF8E4M3)
      return invalid_argument("cache_write: dst_scale needs an f8e4m3 dst, got dst " + shape_of(p.dst));
    MOEX_RETURN_IF_ERROR(check_tensor(op, "dst_scale", p.dst_scale, 1));
    if (p.dst_scale.dtype != DType::kF32) return invalid_argument("cache_write: dst_scale must be f32, got " + shape_of(p.dst_scale));
    MOEX_RETURN_IF_ERROR(check_dim(op, "dst_scale", p.dst_scale, 0, slots));
  }
  for (int64_t t = 0; t < n; ++t) {
    const int32_t s = i32_at(p.slot_mapping, t);
    if (s < 0 || s >= slots)
      return invalid_argument("cache_write: slot_mapping[" + std::to_string(t) + "] = " + std::to_string(s) +
                              " is outside the cache's " + std::to_string(slots) + " slots");
  }
  std::vector<float> buf(static_cast<size_t>(ctx.threads * dim));  // [threads, dim]
  const size_t ss = dtype_size(p.src.dtype), ds = dtype_size(p.dst.dtype);
  parallel_for(ctx, n, dim, [&](int64_t t, int th) {
    float* b = buf.data() + th * dim;  // [dim]
    load_row(static_cast<const char*>(p.src.data) + t * p.src.stride[0] * int64_t(ss), p.src.dtype, p.src.stride[1], dim, b);
    if (quantize) {
      float amax = 0.f;
      for (int64_t c = 0; c < dim; ++c) amax = std::max(amax, std::fabs(b[c]));  // NaN never wins
      const int e = fp8_scale_exp(amax);
      const float inv = std::ldexp(1.f, -e);  // exact: dividing by a power of two
      for (int64_t c = 0; c < dim; ++c) b[c] *= inv;
      p.dst_scale.ptr<float>()[int64_t(i32_at(p.slot_mapping, t)) * p.dst_scale.stride[0]] = std::ldexp(1.f, e);
    }
    store_row(static_cast<char*>(p.dst.data) + int64_t(i32_at(p.slot_mapping, t)) * p.dst.stride[0] * int64_t(ds),
              p.dst.dtype, p.dst.stride[1], dim, b);
  });
  return Status::ok();
}

Status gqa_attention(const Ctx& ctx, const ops::GqaAttentionParams& p) {
  constexpr const char* op = "gqa_attention";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "q", p.q, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "q", p.q));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "k_cache", p.k_cache, 4));
  MOEX_RETURN_IF_ERROR(check_float(op, "k_cache", p.k_cache));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "v_cache", p.v_cache, 4));
  MOEX_RETURN_IF_ERROR(check_float(op, "v_cache", p.v_cache));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 3));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t n = p.q.shape[0], qh = p.q.shape[1], d = p.q.shape[2];
  const int64_t pages = p.k_cache.shape[0], ps = p.k_cache.shape[1], kvh = p.k_cache.shape[2], dv = p.v_cache.shape[3];
  MOEX_RETURN_IF_ERROR(check_dim(op, "k_cache", p.k_cache, 3, d));
  for (int dim = 0; dim < 3; ++dim) MOEX_RETURN_IF_ERROR(check_dim(op, "v_cache", p.v_cache, dim, p.k_cache.shape[dim]));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 1, qh));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 2, dv));
  if (kvh < 1 || qh % kvh != 0)
    return invalid_argument("gqa_attention: q heads (" + std::to_string(qh) + ") must be a multiple of k_cache heads (" +
                            std::to_string(kvh) + ")");
  SeqLayout lay;
  MOEX_RETURN_IF_ERROR(check_seqs(op, p.seqs, n, pages, ps, p.sliding_window, &lay));
  if (n == 0) return Status::ok();
  const int64_t group = qh / kvh;
  int64_t max_len = 1;
  for (int64_t t = 0; t < n; ++t) max_len = std::max<int64_t>(max_len, lay.pos_of_row[size_t(t)] + 1);
  if (p.sliding_window > 0) max_len = std::min<int64_t>(max_len, p.sliding_window);
  // Per thread: q [group, d], scores [group, max_len], row [max(d, dv)], out [group, dv], stats [2 group].
  const int64_t per = group * d + group * max_len + std::max(d, dv) + group * dv + 2 * group;
  std::vector<float> buf(static_cast<size_t>(ctx.threads * per));
  const size_t os = dtype_size(p.out.dtype);
  parallel_for(ctx, n * kvh, group * max_len * (d + dv), [&](int64_t item, int th) {
    const int64_t t = item / kvh, kv = item % kvh;
    const int64_t seq = lay.seq_of_row[size_t(t)], pos = lay.pos_of_row[size_t(t)];
    float* q = buf.data() + th * per;        // [group, d]
    float* scores = q + group * d;           // [group, <= max_len]
    float* row = scores + group * max_len;   // [max(d, dv)]
    float* out = row + std::max(d, dv);      // [group, dv], then stats [2 group]
    for (int64_t h = 0; h < group; ++h)
      load_row(elem(p.q, t, kv * group + h, 0), p.q.dtype, p.q.stride[2], d, q + h * d);
    auto slot = [&](int64_t s, int64_t* page, int64_t* off) {
      *page = table_at(p.seqs.block_table, seq, s / ps);
      *off = s % ps;
    };
    auto key = [&](int64_t s, float* dst) {
      int64_t page, off;
      slot(s, &page, &off);
      const char* r = static_cast<const char*>(p.k_cache.data) +  // [d] key row
                      (page * p.k_cache.stride[0] + off * p.k_cache.stride[1] + kv * p.k_cache.stride[2]) *
                          int64_t(dtype_size(p.k_cache.dtype));
      load_row(r, p.k_cache.dtype, p.k_cache.stride[3], d, dst);
    };
    auto val = [&](int64_t s, float* dst) {
      int64_t page, off;
      slot(s, &page, &off);
      const char* r = static_cast<const char*>(p.v_cache.data) +  // [dv] value row
                      (page * p.v_cache.stride[0] + off * p.v_cache.stride[1] + kv * p.v_cache.stride[2]) *
                          int64_t(dtype_size(p.v_cache.dtype));
      load_row(r, p.v_cache.dtype, p.v_cache.stride[3], dv, dst);
    };
    attend(q, group, d, dv, window_lo(pos, p.sliding_window), pos, p.scale, key, val, scores, row, out + group * dv, out,
           nullptr);
    for (int64_t h = 0; h < group; ++h)
      store_row(static_cast<char*>(p.out.data) + (t * p.out.stride[0] + (kv * group + h) * p.out.stride[1]) * int64_t(os),
                p.out.dtype, p.out.stride[2], dv, out + h * dv);
  });
  return Status::ok();
}

Status mla_attention(const Ctx& ctx, const ops::MlaAttentionParams& p) {
  constexpr const char* op = "mla_attention";
  MOEX_RETURN_IF_ERROR(check_tensor(op, "q", p.q, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "q", p.q));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "cache", p.cache, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "cache", p.cache));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "out", p.out, 3));
  MOEX_RETURN_IF_ERROR(check_output(op, "out", p.out));
  const int64_t n = p.q.shape[0], heads = p.q.shape[1], d = p.q.shape[2], rank = p.kv_lora_rank;
  const int64_t pages = p.cache.shape[0], ps = p.cache.shape[1];
  if (rank < 1 || rank > d)
    return invalid_argument("mla_attention: kv_lora_rank " + std::to_string(rank) + " must be in [1, q dim " +
                            std::to_string(d) + "]");
  MOEX_RETURN_IF_ERROR(check_dim(op, "cache", p.cache, 2, d));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 1, heads));
  MOEX_RETURN_IF_ERROR(check_dim(op, "out", p.out, 2, rank));
  const bool want_lse = !p.lse.empty();
  if (want_lse) {
    MOEX_RETURN_IF_ERROR(check_tensor(op, "lse", p.lse, 2));
    if (p.lse.dtype != DType::kF32) return invalid_argument("mla_attention: lse must be f32, got " + shape_of(p.lse));
    MOEX_RETURN_IF_ERROR(check_dim(op, "lse", p.lse, 0, n));
    MOEX_RETURN_IF_ERROR(check_dim(op, "lse", p.lse, 1, heads));
  }
  const bool scaled = !p.cache_scale.empty();
  if (scaled) {
    if (p.cache.dtype != DType::kF8E4M3)
      return invalid_argument("mla_attention: cache_scale needs an f8e4m3 cache, got cache " + shape_of(p.cache));
    MOEX_RETURN_IF_ERROR(check_tensor(op, "cache_scale", p.cache_scale, 2));
    if (p.cache_scale.dtype != DType::kF32)
      return invalid_argument("mla_attention: cache_scale must be f32, got " + shape_of(p.cache_scale));
    MOEX_RETURN_IF_ERROR(check_dim(op, "cache_scale", p.cache_scale, 0, pages));
    MOEX_RETURN_IF_ERROR(check_dim(op, "cache_scale", p.cache_scale, 1, ps));
  }
  SeqLayout lay;
  MOEX_RETURN_IF_ERROR(check_seqs(op, p.seqs, n, pages, ps, 0, &lay));
  if (n == 0 || heads == 0) return Status::ok();
  int64_t max_len = 1;
  for (int64_t t = 0; t < n; ++t) max_len = std::max<int64_t>(max_len, lay.pos_of_row[size_t(t)] + 1);
  // Heads of one token share every latent row, so a job takes a block of heads; smaller blocks
  // when there are few tokens so both threads get work. The block size changes no result.
  int64_t hb = 8;
  while (hb > 1 && n * ((heads + hb - 1) / hb) < 4 * ctx.threads) hb /= 2;
  const int64_t blocks = (heads + hb - 1) / hb;
  // Per thread: q [hb, d], scores [hb, max_len], row [d], out [hb, rank], lse [hb], stats [2 hb].
  const int64_t per = hb * d + hb * max_len + d + hb * rank + 3 * hb;
  std::vector<float> buf(static_cast<size_t>(ctx.threads * per));
  const size_t os = dtype_size(p.out.dtype), cs = dtype_size(p.cache.dtype);
  parallel_for(ctx, n * blocks, hb * max_len * (d + rank), [&](int64_t item, int th) {
    const int64_t t = item / blocks, h0 = (item % blocks) * hb, g = std::min(hb, heads - h0);
    const int64_t seq = lay.seq_of_row[size_t(t)], pos = lay.pos_of_row[size_t(t)];
    float* q = buf.data() + th * per;     // [hb, d]
    float* scores = q + hb * d;           // [hb, <= max_len]
    float* row = scores + hb * max_len;   // [d]
    float* out = row + d;                 // [hb, rank]
    float* lse = out + hb * rank;         // [hb], then stats [2 hb]
    for (int64_t h = 0; h < g; ++h) load_row(elem(p.q, t, h0 + h, 0), p.q.dtype, p.q.stride[2], d, q + h * d);
    auto latent = [&](int64_t s, float* dst, int64_t count) {
      const int64_t page = table_at(p.seqs.block_table, seq, s / ps);
      const char* r = static_cast<const char*>(p.cache.data) +  // [d] latent row
                      (page * p.cache.stride[0] + (s % ps) * p.cache.stride[1]) * int64_t(cs);
      load_row(r, p.cache.dtype, p.cache.stride[2], count, dst);
      if (scaled) {  // the FP8 latent cache: value = e4m3 * scale of the token
        const float sc = p.cache_scale.ptr<const float>()[page * p.cache_scale.stride[0] + (s % ps) * p.cache_scale.stride[1]];
        for (int64_t c = 0; c < count; ++c) dst[c] *= sc;
      }
    };
    attend(q, g, d, rank, 0, pos, p.scale, [&](int64_t s, float* dst) { latent(s, dst, d); },
           [&](int64_t s, float* dst) { latent(s, dst, rank); }, scores, row, lse + hb, out, lse);
    for (int64_t h = 0; h < g; ++h) {
      store_row(static_cast<char*>(p.out.data) + (t * p.out.stride[0] + (h0 + h) * p.out.stride[1]) * int64_t(os),
                p.out.dtype, p.out.stride[2], rank, out + h * rank);
      if (want_lse) p.lse.ptr<float>()[t * p.lse.stride[0] + (h0 + h) * p.lse.stride[1]] = lse[h];
    }
  });
  return Status::ok();
}

}  // namespace moex::cpu
