// Native Sparse Attention on the CPU: the reference (contract: src/ops/nsa.h, notes:
// docs/kernels/nsa.md).
//
// One job = one query position t of one sequence and one KV head g with its G = HQ / H query
// heads; jobs run over ctx.threads OpenMP threads and never share an output. Forward and decode
// run the same job code (nsa_query) and differ only in where rows come from, so decode's result
// for the last position is the forward op's row len - 1 bit for bit when both see the same f32
// values (same raw KV, and an f32 compressed cache).
//
// Arithmetic, all in f32 (no double anywhere, so a CUDA kernel can match it closely):
// - mean pooling: sum of the block's l rows in increasing token order, then divided by l;
// - a score is dot_f32(q, k) * scale (the 16-lane order of cpu_common.h);
// - softmax per head: m = max, e = exp(score - m), sum in increasing row order, p = e / sum;
//   a branch output is sum_rows p * v, accumulated in increasing row order from 0;
// - importance: imp[b] += p_cmp[h, j] for h ascending (outer), j ascending (inner), over every
//   selection block b that compressed block j overlaps;
// - out = (gate0 * o_cmp + gate1 * o_sel) + gate2 * o_win.
// Selection: forced blocks first, then the others by (importance descending, index ascending);
// blocks nobody's compressed block overlaps have importance 0 and still fill free places, so a
// query always gets min(select_n, t / l' + 1) blocks.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace moex::cpu {
namespace {

using ops::NsaConfig;

// Complete compressed blocks of a sequence holding `len` tokens; query t sees cmp_blocks(t + 1).
inline int64_t cmp_blocks(int64_t len, const NsaConfig& c) {
  return len >= c.block_len ? (len - c.block_len) / c.block_stride + 1 : 0;
}

Status check_config(const char* op, const NsaConfig& c) {
  const std::string o = std::string(op) + ": cfg.";
  auto bad = [&](const char* field, int v, const std::string& why) {
    return invalid_argument(o + field + " = " + std::to_string(v) + " " + why);
  };
  if (c.block_len < 1) return bad("block_len", c.block_len, "must be > 0");
  if (c.block_stride < 1) return bad("block_stride", c.block_stride, "must be > 0");
  if (c.select_len < 1) return bad("select_len", c.select_len, "must be > 0");
  if (c.select_n < 1) return bad("select_n", c.select_n, "must be > 0");
  if (c.num_init < 0) return bad("num_init", c.num_init, "must be >= 0");
  if (c.num_local < 0) return bad("num_local", c.num_local, "must be >= 0");
  if (c.window < 0) return bad("window", c.window, "must be >= 0");
  if (c.block_len % c.block_stride != 0)
    return bad("block_len", c.block_len, "must be a multiple of block_stride " + std::to_string(c.block_stride));
  if (c.select_len % c.block_stride != 0)
    return bad("select_len", c.select_len, "must be a multiple of block_stride " + std::to_string(c.block_stride));
  if (c.select_n < c.num_init + c.num_local)
    return bad("select_n", c.select_n, "must be >= num_init + num_local (" + std::to_string(c.num_init + c.num_local) + ")");
  if (!std::isfinite(c.scale)) return invalid_argument(o + "scale must be finite");
  return Status::ok();
}

// Optional [rows, heads, dv] output (empty = not wanted).
Status check_opt_out(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t heads, int64_t dv) {
  if (t.empty()) return Status::ok();
  MOEX_RETURN_IF_ERROR(check_tensor(op, name, t, 3));
  MOEX_RETURN_IF_ERROR(check_output(op, name, t));
  MOEX_RETURN_IF_ERROR(check_dim(op, name, t, 0, rows));
  MOEX_RETURN_IF_ERROR(check_dim(op, name, t, 1, heads));
  return check_dim(op, name, t, 2, dv);
}

// Checks shared by forward and decode: q [rows, HQ, Dk], gates [rows, HQ, 3], the outputs, the
// config and the head geometry (H KV heads, Dv value dim).
Status check_common(const char* op, const Tensor& q, const Tensor& gates, const NsaConfig& cfg, int64_t kv_heads,
                    int64_t dv, const Tensor& out, const Tensor& out_cmp, const Tensor& out_sel, const Tensor& out_win,
                    const Tensor& sel_idx) {
  MOEX_RETURN_IF_ERROR(check_config(op, cfg));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "q", q, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "q", q));
  const int64_t rows = q.shape[0], hq = q.shape[1], dk = q.shape[2];
  if (hq < 1 || dk < 1 || dv < 1 || kv_heads < 1)
    return invalid_argument(std::string(op) + ": head counts and dims must be > 0 (q " + shape_of(q) + ", kv heads " +
                            std::to_string(kv_heads) + ", Dv " + std::to_string(dv) + ")");
  if (hq % kv_heads != 0)
    return invalid_argument(std::string(op) + ": q heads (" + std::to_string(hq) + ") must be a multiple of kv heads (" +
                            std::to_string(kv_heads) + ")");
  MOEX_RETURN_IF_ERROR(check_tensor(op, "gates", gates, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "gates", gates));
  MOEX_RETURN_IF_ERROR(check_dim(op, "gates", gates, 0, rows));
  MOEX_RETURN_IF_ERROR(check_dim(op, "gates", gates, 1, hq));
  MOEX_RETURN_IF_ERROR(check_dim(op, "gates", gates, 2, 3));
  if (out.empty()) return invalid_argument(std::string(op) + ": out is required");
  MOEX_RETURN_IF_ERROR(check_opt_out(op, "out", out, rows, hq, dv));
  MOEX_RETURN_IF_ERROR(check_opt_out(op, "out_cmp", out_cmp, rows, hq, dv));
  MOEX_RETURN_IF_ERROR(check_opt_out(op, "out_sel", out_sel, rows, hq, dv));
  MOEX_RETURN_IF_ERROR(check_opt_out(op, "out_win", out_win, rows, hq, dv));
  if (!sel_idx.empty()) {
    MOEX_RETURN_IF_ERROR(check_tensor(op, "sel_idx", sel_idx, 3));
    MOEX_RETURN_IF_ERROR(check_i32(op, "sel_idx", sel_idx));
    MOEX_RETURN_IF_ERROR(check_dim(op, "sel_idx", sel_idx, 0, rows));
    MOEX_RETURN_IF_ERROR(check_dim(op, "sel_idx", sel_idx, 1, kv_heads));
    MOEX_RETURN_IF_ERROR(check_dim(op, "sel_idx", sel_idx, 2, cfg.select_n));
  }
  return Status::ok();
}

// Per-thread scratch of one job, sized for the longest sequence of the call.
struct Scratch {
  std::vector<float> q;       // [G, Dk]
  std::vector<float> p;       // [G, max_rows] scores, then probabilities
  std::vector<float> kbuf;    // [Dk] a converted key row
  std::vector<float> vbuf;    // [Dv] a converted value row
  std::vector<float> o;       // [3, G, Dv] o_cmp, o_sel, o_win
  std::vector<float> res;     // [Dv] gated result of one head
  std::vector<float> imp;     // [max_sel_blocks]
  std::vector<int32_t> cand;  // [max_sel_blocks] unforced candidate blocks
  std::vector<int64_t> pos;   // [select_n * l'] token positions of the chosen blocks
  std::vector<int32_t> sel;   // [select_n]
};

std::vector<Scratch> make_scratch(const Ctx& ctx, const NsaConfig& cfg, int64_t g, int64_t dk, int64_t dv,
                                  int64_t max_len) {
  const int64_t sel_rows = std::min<int64_t>(int64_t(cfg.select_n) * cfg.select_len, max_len);
  const int64_t max_rows = std::max<int64_t>({1, cmp_blocks(max_len, cfg), sel_rows, std::min<int64_t>(cfg.window, max_len)});
  const int64_t blocks = (max_len + cfg.select_len - 1) / cfg.select_len + 1;
  std::vector<Scratch> s(size_t(ctx.threads < 1 ? 1 : ctx.threads));
  for (Scratch& x : s) {
    x.q.resize(size_t(g * dk));
    x.p.resize(size_t(g * max_rows));
    x.kbuf.resize(size_t(dk));
    x.vbuf.resize(size_t(dv));
    x.o.resize(size_t(3 * g * dv));
    x.res.resize(size_t(dv));
    x.imp.resize(size_t(blocks));
    x.cand.resize(size_t(blocks));
    x.pos.resize(size_t(sel_rows));
    x.sel.resize(size_t(cfg.select_n));
  }
  return s;
}

// Softmax attention of g heads (q [g, dk]) over `rows` rows; row i is id(i), key(id, buf) and
// val(id, buf) return its f32 key [dk] / value [dv] (buf is scratch they may fill). Leaves the
// probabilities in p [g, rows] and writes out [g, dv] (zeros when rows == 0).
template <class IdFn, class KeyFn, class ValFn>
void attend(const float* q, int64_t g, int64_t dk, int64_t dv, int64_t rows, float scale, IdFn&& id, KeyFn&& key,
            ValFn&& val, float* p, float* kbuf, float* vbuf, float* out) {
  std::fill(out, out + g * dv, 0.f);
  if (rows == 0) return;
  for (int64_t i = 0; i < rows; ++i) {
    const float* k = key(id(i), kbuf);  // [dk]
    for (int64_t h = 0; h < g; ++h) p[h * rows + i] = dot_f32(q + h * dk, k, dk) * scale;
  }
  for (int64_t h = 0; h < g; ++h) {
    float* ph = p + h * rows;  // [rows]
    float m = ph[0];
    for (int64_t i = 1; i < rows; ++i) m = std::max(m, ph[i]);
    float sum = 0.f;
    for (int64_t i = 0; i < rows; ++i) sum += (ph[i] = std::exp(ph[i] - m));
    for (int64_t i = 0; i < rows; ++i) ph[i] = ph[i] / sum;
  }
  for (int64_t i = 0; i < rows; ++i) {
    const float* v = val(id(i), vbuf);  // [dv]
    for (int64_t h = 0; h < g; ++h) {
      const float pe = p[h * rows + i];
      float* o = out + h * dv;  // [dv]
      for (int64_t c = 0; c < dv; ++c) o[c] += pe * v[c];
    }
  }
}

// Chooses the selection blocks of query t from imp [t / l' + 1]: writes them ascending into
// sel [select_n] padded with -1 and returns their count, min(select_n, t / l' + 1).
int64_t select_blocks(const NsaConfig& cfg, int64_t t, const float* imp, int32_t* cand, int32_t* sel) {
  const int64_t nb = t / cfg.select_len + 1;
  int64_t count = 0;
  auto forced = [&](int64_t b) { return b < cfg.num_init || b >= nb - cfg.num_local; };
  for (int64_t b = 0; b < nb; ++b)
    if (forced(b)) sel[count++] = int32_t(b);
  int64_t others = 0;
  for (int64_t b = 0; b < nb; ++b)
    if (!forced(b)) cand[others++] = int32_t(b);
  const int64_t take = std::min<int64_t>(others, cfg.select_n - count);
  if (take > 0) {
    auto better = [&](int32_t a, int32_t b) { return imp[a] > imp[b] || (imp[a] == imp[b] && a < b); };
    std::partial_sort(cand, cand + take, cand + others, better);
    for (int64_t i = 0; i < take; ++i) sel[count++] = cand[i];
  }
  std::sort(sel, sel + count);
  for (int64_t i = count; i < cfg.select_n; ++i) sel[i] = -1;
  return count;
}

// The three branches of query position t for the g heads of one KV head (q [g, dk]).
// raw_k(s, buf) / raw_v(s, buf): f32 key / value of token s of this sequence and KV head;
// cmp_k(j, buf) / cmp_v(j, buf): compressed block j. Writes o_cmp, o_sel, o_win ([3, g, dv] in
// x.o) and x.sel.
template <class RawK, class RawV, class CmpK, class CmpV>
void nsa_query(const NsaConfig& cfg, int64_t t, int64_t g, int64_t dk, int64_t dv, RawK&& raw_k, RawV&& raw_v,
               CmpK&& cmp_k, CmpV&& cmp_v, Scratch& x) {
  const float* q = x.q.data();
  float* o_cmp = x.o.data();
  float* o_sel = o_cmp + g * dv;
  float* o_win = o_sel + g * dv;
  auto same = [](int64_t i) { return i; };
  // 1. compressed branch; x.p keeps p_cmp [g, nc] for the importance.
  const int64_t nc = cmp_blocks(t + 1, cfg);
  attend(q, g, dk, dv, nc, cfg.scale, same, cmp_k, cmp_v, x.p.data(), x.kbuf.data(), x.vbuf.data(), o_cmp);
  // 2. importance by overlap, then selection.
  const int64_t nb = t / cfg.select_len + 1;
  float* imp = x.imp.data();
  std::fill(imp, imp + nb, 0.f);
  for (int64_t h = 0; h < g; ++h)
    for (int64_t j = 0; j < nc; ++j) {
      const float pj = x.p[size_t(h * nc + j)];
      const int64_t first = j * cfg.block_stride;
      const int64_t b1 = (first + cfg.block_len - 1) / cfg.select_len;
      for (int64_t b = first / cfg.select_len; b <= b1; ++b) imp[b] += pj;
    }
  const int64_t count = select_blocks(cfg, t, imp, x.cand.data(), x.sel.data());
  int64_t rows = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t b = x.sel[size_t(i)];
    const int64_t end = std::min<int64_t>((b + 1) * cfg.select_len, t + 1);
    for (int64_t s = b * cfg.select_len; s < end; ++s) x.pos[size_t(rows++)] = s;
  }
  const int64_t* pos = x.pos.data();
  attend(q, g, dk, dv, rows, cfg.scale, [pos](int64_t i) { return pos[i]; }, raw_k, raw_v, x.p.data(), x.kbuf.data(),
         x.vbuf.data(), o_sel);
  // 3. sliding window over (t - w, t].
  const int64_t lo = cfg.window > 0 ? std::max<int64_t>(0, t - cfg.window + 1) : t + 1;
  attend(q, g, dk, dv, t + 1 - lo, cfg.scale, [lo](int64_t i) { return lo + i; }, raw_k, raw_v, x.p.data(),
         x.kbuf.data(), x.vbuf.data(), o_win);
}

// Loads q [g, dk] of row `row`, heads kv*g .. kv*g+g-1, into x.q.
void load_q(const Tensor& q, int64_t row, int64_t kv, int64_t g, Scratch& x) {
  const int64_t dk = q.shape[2];
  for (int64_t h = 0; h < g; ++h) load_row(q.at({row, kv * g + h}), q.dtype, q.stride[2], dk, x.q.data() + h * dk);
}

// Gates the branches of x.o and stores out (and the optional outputs) of output row `row` for the
// g heads of KV head kv, and sel_idx.
void store_outputs(const Tensor& gates, const Tensor& out, const Tensor& out_cmp, const Tensor& out_sel,
                   const Tensor& out_win, const Tensor& sel_idx, int64_t row, int64_t kv, int64_t g, int64_t dv,
                   int select_n, Scratch& x) {
  const Tensor* branch_out[3] = {&out_cmp, &out_sel, &out_win};
  for (int64_t h = 0; h < g; ++h) {
    const int64_t head = kv * g + h;
    const char* gp = gates.at({row, head});
    float gate[3];
    for (int b = 0; b < 3; ++b) gate[b] = load_as_f32(gp, gates.dtype, size_t(b * gates.stride[2]));
    const float* oc = x.o.data() + h * dv;       // [dv]
    const float* os = oc + g * dv;               // [dv]
    const float* ow = os + g * dv;               // [dv]
    for (int64_t c = 0; c < dv; ++c) x.res[size_t(c)] = (gate[0] * oc[c] + gate[1] * os[c]) + gate[2] * ow[c];
    store_row(out.at({row, head}), out.dtype, out.stride[2], dv, x.res.data());
    for (int b = 0; b < 3; ++b) {
      const Tensor& t = *branch_out[b];
      if (!t.empty()) store_row(t.at({row, head}), t.dtype, t.stride[2], dv, x.o.data() + (b * g + h) * dv);
    }
  }
  if (!sel_idx.empty()) {
    int32_t* dst = reinterpret_cast<int32_t*>(sel_idx.at({row, kv}));
    for (int i = 0; i < select_n; ++i) dst[i * sel_idx.stride[2]] = x.sel[size_t(i)];
  }
}

// Converts rows [rows, heads, dim] of t to a contiguous f32 copy [rows * heads, dim].
std::vector<float> to_f32(const Ctx& ctx, const Tensor& t) {
  const int64_t rows = t.shape[0], heads = t.shape[1], dim = t.shape[2];
  std::vector<float> f(size_t(rows * heads * dim));
  parallel_for(ctx, rows * heads, dim, [&](int64_t i, int) {
    load_row(t.at({i / heads, i % heads}), t.dtype, t.stride[2], dim, f.data() + i * dim);
  });
  return f;
}

}  // namespace

Status nsa_forward(const Ctx& ctx, const ops::NsaForwardParams& p) {
  constexpr const char* op = "nsa_forward";
  const NsaConfig& cfg = p.cfg;
  MOEX_RETURN_IF_ERROR(check_tensor(op, "k", p.k, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "k", p.k));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "v", p.v, 3));
  MOEX_RETURN_IF_ERROR(check_float(op, "v", p.v));
  const int64_t kvh = p.k.shape[1], dv = p.v.shape[2];
  MOEX_RETURN_IF_ERROR(check_common(op, p.q, p.gates, cfg, kvh, dv, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx));
  const int64_t n = p.q.shape[0], hq = p.q.shape[1], dk = p.q.shape[2], g = hq / kvh;
  MOEX_RETURN_IF_ERROR(check_dim(op, "k", p.k, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "k", p.k, 2, dk));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v", p.v, 0, n));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v", p.v, 1, kvh));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "cu_seqlens", p.cu_seqlens, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "cu_seqlens", p.cu_seqlens));
  const int64_t b = p.cu_seqlens.shape[0] - 1;
  if (b < 0) return invalid_argument("nsa_forward: cu_seqlens must hold B + 1 >= 1 entries");
  if (i32_at(p.cu_seqlens, 0) != 0 || i32_at(p.cu_seqlens, b) != n)
    return invalid_argument("nsa_forward: cu_seqlens must run from 0 to the token count " + std::to_string(n));
  int64_t max_len = 1, tc = 0;
  std::vector<int64_t> cmp_start(static_cast<size_t>(b + 1), 0);  // [B + 1] first compressed row of each sequence
  for (int64_t i = 0; i < b; ++i) {
    const int64_t len = int64_t(i32_at(p.cu_seqlens, i + 1)) - i32_at(p.cu_seqlens, i);
    if (len < 0) return invalid_argument("nsa_forward: cu_seqlens decreases at sequence " + std::to_string(i));
    max_len = std::max(max_len, len);
    tc += cmp_blocks(len, cfg);
    cmp_start[size_t(i + 1)] = tc;
  }
  const bool given_cmp = !p.k_cmp.empty() || !p.v_cmp.empty() || !p.cu_cmp.empty();
  if (given_cmp) {
    if (p.k_cmp.empty() || p.v_cmp.empty() || p.cu_cmp.empty())
      return invalid_argument("nsa_forward: k_cmp, v_cmp and cu_cmp must be given together");
    MOEX_RETURN_IF_ERROR(check_tensor(op, "k_cmp", p.k_cmp, 3));
    MOEX_RETURN_IF_ERROR(check_float(op, "k_cmp", p.k_cmp));
    MOEX_RETURN_IF_ERROR(check_tensor(op, "v_cmp", p.v_cmp, 3));
    MOEX_RETURN_IF_ERROR(check_float(op, "v_cmp", p.v_cmp));
    MOEX_RETURN_IF_ERROR(check_tensor(op, "cu_cmp", p.cu_cmp, 1));
    MOEX_RETURN_IF_ERROR(check_i32(op, "cu_cmp", p.cu_cmp));
    MOEX_RETURN_IF_ERROR(check_dim(op, "cu_cmp", p.cu_cmp, 0, b + 1));
    const int64_t rows = p.k_cmp.shape[0];
    MOEX_RETURN_IF_ERROR(check_dim(op, "k_cmp", p.k_cmp, 1, kvh));
    MOEX_RETURN_IF_ERROR(check_dim(op, "k_cmp", p.k_cmp, 2, dk));
    MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp", p.v_cmp, 0, rows));
    MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp", p.v_cmp, 1, kvh));
    MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp", p.v_cmp, 2, dv));
    if (i32_at(p.cu_cmp, 0) != 0 || i32_at(p.cu_cmp, b) != rows)
      return invalid_argument("nsa_forward: cu_cmp must run from 0 to k_cmp's rows " + std::to_string(rows));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t have = int64_t(i32_at(p.cu_cmp, i + 1)) - i32_at(p.cu_cmp, i);
      const int64_t want = cmp_start[size_t(i + 1)] - cmp_start[size_t(i)];
      if (have != want)
        return invalid_argument("nsa_forward: cu_cmp gives sequence " + std::to_string(i) + " " + std::to_string(have) +
                                " compressed rows, its length needs " + std::to_string(want));
      cmp_start[size_t(i)] = i32_at(p.cu_cmp, i);
    }
  }
  if (n == 0) return Status::ok();

  // f32 copies: raw rows [T * H, D]; compressed rows [Tc * H, D] (given, or the block means).
  const std::vector<float> k32 = to_f32(ctx, p.k), v32 = to_f32(ctx, p.v);
  std::vector<float> kc32, vc32;
  if (given_cmp) {
    kc32 = to_f32(ctx, p.k_cmp);
    vc32 = to_f32(ctx, p.v_cmp);
  } else {
    kc32.assign(size_t(tc * kvh * dk), 0.f);
    vc32.assign(size_t(tc * kvh * dv), 0.f);
    std::vector<int64_t> seq_of_block(static_cast<size_t>(tc));  // [Tc]
    for (int64_t i = 0; i < b; ++i)
      for (int64_t r = cmp_start[size_t(i)]; r < cmp_start[size_t(i + 1)]; ++r) seq_of_block[size_t(r)] = i;
    const float len_f = float(cfg.block_len);
    parallel_for(ctx, tc * kvh, int64_t(cfg.block_len) * (dk + dv), [&](int64_t item, int) {
      const int64_t r = item / kvh, kv = item % kvh, seq = seq_of_block[size_t(r)];
      const int64_t first = i32_at(p.cu_seqlens, seq) + (r - cmp_start[size_t(seq)]) * cfg.block_stride;
      float* kd = kc32.data() + item * dk;  // [dk]
      float* vd = vc32.data() + item * dv;  // [dv]
      for (int64_t s = first; s < first + cfg.block_len; ++s) {
        const float* ks = k32.data() + (s * kvh + kv) * dk;  // [dk]
        const float* vs = v32.data() + (s * kvh + kv) * dv;  // [dv]
        for (int64_t c = 0; c < dk; ++c) kd[c] += ks[c];
        for (int64_t c = 0; c < dv; ++c) vd[c] += vs[c];
      }
      for (int64_t c = 0; c < dk; ++c) kd[c] = kd[c] / len_f;
      for (int64_t c = 0; c < dv; ++c) vd[c] = vd[c] / len_f;
    });
  }

  std::vector<int64_t> seq_of_row(static_cast<size_t>(n));  // [T]
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = i32_at(p.cu_seqlens, i); t < i32_at(p.cu_seqlens, i + 1); ++t) seq_of_row[size_t(t)] = i;
  std::vector<Scratch> scratch = make_scratch(ctx, cfg, g, dk, dv, max_len);
  const int64_t cost = g * (int64_t(cfg.select_n) * cfg.select_len + cfg.window + max_len / cfg.block_stride) * (dk + dv);
  parallel_for(ctx, n * kvh, cost, [&](int64_t item, int th) {
    const int64_t row = item / kvh, kv = item % kvh, seq = seq_of_row[size_t(row)];
    const int64_t base = i32_at(p.cu_seqlens, seq), cbase = cmp_start[size_t(seq)];
    Scratch& x = scratch[size_t(th)];
    load_q(p.q, row, kv, g, x);
    auto raw_k = [&](int64_t s, float*) { return k32.data() + ((base + s) * kvh + kv) * dk; };
    auto raw_v = [&](int64_t s, float*) { return v32.data() + ((base + s) * kvh + kv) * dv; };
    auto cmp_k = [&](int64_t j, float*) { return kc32.data() + ((cbase + j) * kvh + kv) * dk; };
    auto cmp_v = [&](int64_t j, float*) { return vc32.data() + ((cbase + j) * kvh + kv) * dv; };
    nsa_query(cfg, row - base, g, dk, dv, raw_k, raw_v, cmp_k, cmp_v, x);
    store_outputs(p.gates, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx, row, kv, g, dv, cfg.select_n, x);
  });
  return Status::ok();
}

Status nsa_decode(const Ctx& ctx, const ops::NsaDecodeParams& p) {
  constexpr const char* op = "nsa_decode";
  const NsaConfig& cfg = p.cfg;
  MOEX_RETURN_IF_ERROR(check_tensor(op, "k_cache", p.k_cache, 4));
  MOEX_RETURN_IF_ERROR(check_float(op, "k_cache", p.k_cache));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "v_cache", p.v_cache, 4));
  MOEX_RETURN_IF_ERROR(check_float(op, "v_cache", p.v_cache));
  const int64_t pages = p.k_cache.shape[0], ps = p.k_cache.shape[1], kvh = p.k_cache.shape[2], dv = p.v_cache.shape[3];
  MOEX_RETURN_IF_ERROR(check_common(op, p.q, p.gates, cfg, kvh, dv, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx));
  const int64_t b = p.q.shape[0], hq = p.q.shape[1], dk = p.q.shape[2], g = hq / kvh;
  MOEX_RETURN_IF_ERROR(check_dim(op, "k_cache", p.k_cache, 3, dk));
  for (int d = 0; d < 3; ++d) MOEX_RETURN_IF_ERROR(check_dim(op, "v_cache", p.v_cache, d, p.k_cache.shape[d]));
  // The compressed caches are written when update_cmp is on, so then they must be storable types.
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"k_cmp_cache", p.k_cmp_cache},
                                std::pair<const char*, const Tensor&>{"v_cmp_cache", p.v_cmp_cache}}) {
    MOEX_RETURN_IF_ERROR(check_tensor(op, name, t, 4));
    MOEX_RETURN_IF_ERROR(p.update_cmp ? check_output(op, name, t) : check_float(op, name, t));
  }
  const int64_t cmp_rows = p.k_cmp_cache.shape[0], max_blocks = p.k_cmp_cache.shape[1];
  MOEX_RETURN_IF_ERROR(check_dim(op, "k_cmp_cache", p.k_cmp_cache, 2, kvh));
  MOEX_RETURN_IF_ERROR(check_dim(op, "k_cmp_cache", p.k_cmp_cache, 3, dk));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp_cache", p.v_cmp_cache, 0, cmp_rows));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp_cache", p.v_cmp_cache, 1, max_blocks));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp_cache", p.v_cmp_cache, 2, kvh));
  MOEX_RETURN_IF_ERROR(check_dim(op, "v_cmp_cache", p.v_cmp_cache, 3, dv));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "cmp_rows", p.cmp_rows, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "cmp_rows", p.cmp_rows));
  MOEX_RETURN_IF_ERROR(check_dim(op, "cmp_rows", p.cmp_rows, 0, b));
  const ops::PagedSeqs& sq = p.seqs;
  MOEX_RETURN_IF_ERROR(check_tensor(op, "block_table", sq.block_table, 2));
  MOEX_RETURN_IF_ERROR(check_i32(op, "block_table", sq.block_table));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "seq_lens", sq.seq_lens, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "seq_lens", sq.seq_lens));
  MOEX_RETURN_IF_ERROR(check_tensor(op, "query_start", sq.query_start, 1));
  MOEX_RETURN_IF_ERROR(check_i32(op, "query_start", sq.query_start));
  MOEX_RETURN_IF_ERROR(check_dim(op, "block_table", sq.block_table, 0, b));
  MOEX_RETURN_IF_ERROR(check_dim(op, "seq_lens", sq.seq_lens, 0, b));
  MOEX_RETURN_IF_ERROR(check_dim(op, "query_start", sq.query_start, 0, b + 1));
  if (sq.page_size < 1 || sq.page_size != ps)
    return invalid_argument("nsa_decode: page_size " + std::to_string(sq.page_size) +
                            " does not match the cache's page dim " + std::to_string(ps));
  const int64_t max_pages = sq.block_table.shape[1];
  auto page_of = [&](int64_t seq, int64_t pg) {
    return int64_t(sq.block_table.ptr<const int32_t>()[seq * sq.block_table.stride[0] + pg * sq.block_table.stride[1]]);
  };
  int64_t max_len = 1;
  std::vector<char> row_used(static_cast<size_t>(cmp_rows), 0);  // [num_cmp_rows]
  for (int64_t i = 0; i < b; ++i) {
    const std::string seq = "sequence " + std::to_string(i);
    if (i32_at(sq.query_start, i) != i || i32_at(sq.query_start, i + 1) != i + 1)
      return invalid_argument("nsa_decode: query_start must be 0, 1, ..., B (one new token per sequence); " + seq +
                              " differs");
    const int64_t len = i32_at(sq.seq_lens, i);
    if (len < 1) return invalid_argument("nsa_decode: seq_lens of " + seq + " must be >= 1, got " + std::to_string(len));
    if (len > max_pages * ps) return invalid_argument("nsa_decode: seq_lens of " + seq + " exceeds block_table capacity");
    for (int64_t pg = 0; pg * ps < len; ++pg) {
      const int64_t page = page_of(i, pg);
      if (page < 0 || page >= pages)
        return invalid_argument("nsa_decode: block_table[" + std::to_string(i) + ", " + std::to_string(pg) + "] = " +
                                std::to_string(page) + " is outside the cache's " + std::to_string(pages) + " pages");
    }
    const int64_t row = i32_at(p.cmp_rows, i);
    if (row < 0 || row >= cmp_rows)
      return invalid_argument("nsa_decode: cmp_rows[" + std::to_string(i) + "] = " + std::to_string(row) +
                              " is outside the compressed caches' " + std::to_string(cmp_rows) + " rows");
    if (p.update_cmp && row_used[size_t(row)]++)
      return invalid_argument("nsa_decode: cmp_rows[" + std::to_string(i) + "] = " + std::to_string(row) +
                              " is shared with another sequence while update_cmp writes it");
    if (cmp_blocks(len, cfg) > max_blocks)
      return invalid_argument("nsa_decode: " + seq + " of length " + std::to_string(len) + " needs " +
                              std::to_string(cmp_blocks(len, cfg)) + " compressed blocks, k_cmp_cache holds " +
                              std::to_string(max_blocks));
    max_len = std::max(max_len, len);
  }
  if (b == 0) return Status::ok();

  // Raw row of token s of sequence seq, KV head kv, as f32 in buf.
  auto raw_row = [&](const Tensor& cache, int64_t seq, int64_t kv, int64_t s, int64_t dim, float* buf) {
    const char* r = cache.at({page_of(seq, s / ps), s % ps, kv});  // [dim]
    load_row(r, cache.dtype, cache.stride[3], dim, buf);
    return static_cast<const float*>(buf);
  };
  // 1. Complete the compressed cache: the block the new token closes, if any, gets its means
  // (the same f32 sums and division as the forward op's pooling).
  if (p.update_cmp) {
    const size_t per = size_t(dk + dv) * 2;
    std::vector<float> buf(size_t(ctx.threads < 1 ? 1 : ctx.threads) * per);
    parallel_for(ctx, b * kvh, int64_t(cfg.block_len) * (dk + dv), [&](int64_t item, int th) {
      const int64_t seq = item / kvh, kv = item % kvh, len = i32_at(sq.seq_lens, seq);
      if (len < cfg.block_len || (len - cfg.block_len) % cfg.block_stride != 0) return;
      const int64_t j = (len - cfg.block_len) / cfg.block_stride, first = j * cfg.block_stride;
      float* kd = buf.data() + size_t(th) * per;  // [dk]
      float* vd = kd + dk;                        // [dv]
      float* row = vd + dv;                       // [max(dk, dv)]
      std::fill(kd, kd + dk + dv, 0.f);
      for (int64_t s = first; s < first + cfg.block_len; ++s) {
        const float* ks = raw_row(p.k_cache, seq, kv, s, dk, row);  // [dk]
        for (int64_t c = 0; c < dk; ++c) kd[c] += ks[c];
        const float* vs = raw_row(p.v_cache, seq, kv, s, dv, row);  // [dv]
        for (int64_t c = 0; c < dv; ++c) vd[c] += vs[c];
      }
      const float len_f = float(cfg.block_len);
      for (int64_t c = 0; c < dk; ++c) kd[c] = kd[c] / len_f;
      for (int64_t c = 0; c < dv; ++c) vd[c] = vd[c] / len_f;
      const int64_t r = i32_at(p.cmp_rows, seq);
      store_row(p.k_cmp_cache.at({r, j, kv}), p.k_cmp_cache.dtype, p.k_cmp_cache.stride[3], dk, kd);
      store_row(p.v_cmp_cache.at({r, j, kv}), p.v_cmp_cache.dtype, p.v_cmp_cache.stride[3], dv, vd);
    });
  }
  // 2. Attend at t = len - 1, exactly as the forward op.
  std::vector<Scratch> scratch = make_scratch(ctx, cfg, g, dk, dv, max_len);
  const int64_t cost = g * (int64_t(cfg.select_n) * cfg.select_len + cfg.window + max_len / cfg.block_stride) * (dk + dv);
  parallel_for(ctx, b * kvh, cost, [&](int64_t item, int th) {
    const int64_t seq = item / kvh, kv = item % kvh, len = i32_at(sq.seq_lens, seq), r = i32_at(p.cmp_rows, seq);
    Scratch& x = scratch[size_t(th)];
    load_q(p.q, seq, kv, g, x);
    auto raw_k = [&](int64_t s, float* buf) { return raw_row(p.k_cache, seq, kv, s, dk, buf); };
    auto raw_v = [&](int64_t s, float* buf) { return raw_row(p.v_cache, seq, kv, s, dv, buf); };
    auto cmp_k = [&](int64_t j, float* buf) {
      load_row(p.k_cmp_cache.at({r, j, kv}), p.k_cmp_cache.dtype, p.k_cmp_cache.stride[3], dk, buf);
      return static_cast<const float*>(buf);
    };
    auto cmp_v = [&](int64_t j, float* buf) {
      load_row(p.v_cmp_cache.at({r, j, kv}), p.v_cmp_cache.dtype, p.v_cmp_cache.stride[3], dv, buf);
      return static_cast<const float*>(buf);
    };
    nsa_query(cfg, len - 1, g, dk, dv, raw_k, raw_v, cmp_k, cmp_v, x);
    store_outputs(p.gates, p.out, p.out_cmp, p.out_sel, p.out_win, p.sel_idx, seq, kv, g, dv, cfg.select_n, x);
  });
  return Status::ok();
}

}  // namespace moex::cpu
