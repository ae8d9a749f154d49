// NSA decode, tensor-core path in two launches (contract: src/ops/nsa.h; launch plan and
// split rules: nsa_decode_fast.h; the per-chunk attention: nsa_decode_fast.cuh; design:
// docs/kernels/nsa.md, "Decode, tensor-core path"). This file: the ticket counters, the choice
// and the final merge (run by the last CTA of a (sequence, KV head)), the two kernels, the host.
#include <climits>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "kernels/attention/nsa/nsa_decode_fast.cuh"

namespace moex::kernels::nsa {
namespace {

using namespace fast;

// Ticket counters of the two stages, one per (sequence, KV head): the calling backend's
// (Scratch::counters, FastScratch::tickets), zero at its creation; the last CTA of a (sequence,
// KV head) sets its counter back to 0, so every launch finds them at 0. One backend orders its
// calls on its stream, and another backend on the same GPU counts in its own.
static_assert(2 * size_t(kFastMaxHeads) <= kCountersNsaDecodeSize, "counter range");

int env_tiles() {  // tiles of kFastTile keys per CTA (a constant of the process: bits never
                   // depend on the batch)
  static const int t = [] {
    const char* e = std::getenv("MOEX_NSA_DECODE_TILES");
    const int v = e ? std::atoi(e) : 0;
    return v >= 1 && v <= 8 ? v : 4;  // 4: best at batch 32-64 (docs/kernels/nsa.md)
  }();
  return t;
}
// Bench knob MOEX_NSA_DECODE_STAGES (outputs wrong unless unset), for the per-step split:
// "1" stage 1 only, "1n" stage 1 without the choice, "2n" both stages without the final merge.
// MOEX_NSA_DECODE_OLD=1 (A/B runs; outputs right): the session-3 choice and final merge.
constexpr int kSkipSelect = 1, kSkipCombine = 2, kStage1Only = 4, kOldSteps = 8;
int env_flags() {
  static const int f = [] {
    const char* o = std::getenv("MOEX_NSA_DECODE_OLD");
    const int old = o != nullptr && std::strcmp(o, "1") == 0 ? kOldSteps : 0;
    const char* e = std::getenv("MOEX_NSA_DECODE_STAGES");
    if (e == nullptr) return old;
    if (std::strcmp(e, "1") == 0) return old | kStage1Only;
    if (std::strcmp(e, "1n") == 0) return old | kStage1Only | kSkipSelect;
    if (std::strcmp(e, "2n") == 0) return old | kSkipCombine;
    return old;
  }();
  return f;
}
bool fast_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MOEX_NSA_DECODE_FAST");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

// The compressed chunks' (m, l) of this (sequence, KV head) merged per head in ascending chunk
// order into region[nsel_max + 2 sc G ..]: [G] M = max m_z, then [G] L = sum l_z exp(m_z - M)
// (kInverse: 1 / L). The chunks' values are staged at region[nsel_max ..] ([sc][G] m, [sc][G] l).
template <bool kInverse>
__device__ __forceinline__ void merge_cmp_stats(const Smem& s, const Params& p, const FastScratch& d, int b, int kvh,
                                                int G, int nsplit) {
  float* mm = s.region + d.nsel_max;      // [sc][G]
  float* ll = mm + size_t(d.sc) * G;      // [sc][G]
  float* sm = ll + size_t(d.sc) * G;      // [G]
  float* sl = sm + G;                     // [G]
  const int64_t row0 = (int64_t(b) * p.h + kvh) * d.sc * G;
  for (int e = threadIdx.x; e < nsplit * G; e += kFastThreads) {
    mm[e] = __ldcg(d.cm + row0 + e);
    ll[e] = __ldcg(d.cl + row0 + e);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G; i += kFastThreads) {
    float m = -INFINITY;
    for (int z = 0; z < nsplit; ++z) m = fmaxf(m, mm[z * G + i]);
    float l = 0.f;
    for (int z = 0; z < nsplit; ++z) l += ll[z * G + i] * expf(mm[z * G + i] - m);
    sm[i] = m;
    sl[i] = kInverse ? 1.f / l : l;
  }
  __syncthreads();
}

// The last compressed CTA of (b, kvh): merged max / sum per head, importance per selection
// block (heads ascending, then overlapping compressed blocks ascending, p = exp(s - M) / L),
// then the choice: forced blocks, then the k largest importances with ties to the lower index.
// The k-th largest key (importance bits + 1, monotone for importances >= 0; 0 for forced
// blocks) is found exactly by a bitwise search, one barrier a bit; blocks above it are taken,
// then the lowest-index ones equal to it.
__device__ void select_step(const Smem& s, const FastLayout& L, const Params& p, const FastScratch& d, int b, int kvh,
                            int t, int nc) {
  const Geometry& g = p.g;
  const int G = L.g;
  const int nsplit = nc > 0 ? (nc + d.chunk - 1) / d.chunk : 0;
  float* imp = s.region;                  // [nsel_max]
  float* sm = imp + d.nsel_max + 2 * size_t(d.sc) * G;  // [G]
  float* sl = sm + G;                     // [G]
  merge_cmp_stats<false>(s, p, d, b, kvh, G, nsplit);
  const int nsel = t / g.select_len + 1;
  const float* scores = d.scores + (int64_t(b) * p.h + kvh) * G * d.max_nc;  // [G, max_nc]
  // Rolled loops on purpose: this step runs once per (sequence, KV head) on the critical path,
  // where cold instruction fetches cost as much as data (the bench flushes L2).
  for (int bb = threadIdx.x; bb < nsel; bb += kFastThreads) {
    const int lo_tok = bb * g.select_len - g.block_len;  // j * d > lo_tok
    const int jlo = lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1;
    const int jhi = min(nc - 1, ((bb + 1) * g.select_len - 1) / g.block_stride);
    const int nj = jhi - jlo + 1, terms = nj > 0 ? G * nj : 0;
    float acc = 0.f;
    for (int x0 = 0; x0 < terms; x0 += 16) {  // 16 loads in flight, added in order
      float v[16];
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        const int x = x0 + u;
        v[u] = x < terms ? __ldcg(scores + int64_t(x / nj) * d.max_nc + jlo + x % nj) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        const int x = x0 + u;
        if (x < terms) {
          const int h = x / nj;
          acc += expf(v[u] - sm[h]) / sl[h];
        }
      }
    }
    imp[bb] = acc;
  }
  __syncthreads();

  const int nt = nsel - 1;
  const int init_end = min(g.num_init, nsel);
  const int local_beg = max(init_end, nt - g.num_local + 1);
  const int forced = init_end + (nt - local_beg + 1);
  const int want = min(g.select_n, nsel);
  const int k = want - forced;
  const int per = (nsel + kFastThreads - 1) / kFastThreads;
  const int b_lo = min(nsel, int(threadIdx.x) * per), b_hi = min(nsel, b_lo + per);
  auto key = [&](int bb) -> unsigned int {
    return (bb < init_end || bb >= local_beg) ? 0u : __float_as_uint(imp[bb]) + 1u;
  };
  // T = the largest value with at least k keys >= T: the k-th largest key, bit by bit.
  unsigned int T = 0;
  if (k > 0) {
    for (int bit = 31; bit >= 0; --bit) {
      const unsigned int cand = T | (1u << bit);
      int c = 0;
      for (int bb = b_lo; bb < b_hi; ++bb) c += key(bb) >= cand;
      int* buf = s.scan + (bit & 1) * kWarpsF;  // alternating buffers: one barrier a round
      c = __reduce_add_sync(0xffffffffu, c);
      if (threadIdx.x % 32 == 0) buf[threadIdx.x / 32] = c;
      __syncthreads();
      int tot = 0;
#pragma unroll
      for (int w = 0; w < kWarpsF; ++w) tot += buf[w];
      if (tot >= k) T = cand;
    }
  }
  __syncthreads();
  // Blocks above T are all taken; of those equal to T, the lowest indices fill the rest.
  int my_gt = 0, my_eq = 0;
  if (k > 0)
    for (int bb = b_lo; bb < b_hi; ++bb) {
      const unsigned int kb = key(bb);
      my_gt += kb > T;
      my_eq += kb == T;
    }
  int* sbuf = s.scan + 48;
  int gt = 0, eq_tot = 0;
  block_excl_scan(my_gt, sbuf, gt);
  const int eq_before = block_excl_scan(my_eq, sbuf, eq_tot);
  const int need_eq = k - gt;
  auto chosen = [&](int bb, int& rank) {
    if (bb < init_end || bb >= local_beg) return true;
    if (k <= 0) return false;
    const unsigned int kb = key(bb);
    if (kb > T) return true;
    return kb == T && rank++ < need_eq;
  };
  int my_chosen = 0, rank = eq_before;
  for (int bb = b_lo; bb < b_hi; ++bb) my_chosen += chosen(bb, rank);
  int total = 0;
  int pos = block_excl_scan(my_chosen, sbuf, total);
  int32_t* dst = d.idx + (int64_t(b) * p.h + kvh) * g.select_n;
  rank = eq_before;
  for (int bb = b_lo; bb < b_hi; ++bb)
    if (chosen(bb, rank)) dst[pos++] = bb;
  for (int a = total + int(threadIdx.x); a < g.select_n; a += kFastThreads) dst[a] = -1;
}

constexpr int kCombineBatch = 12;  // partials in flight per thread in the final merge
constexpr int kSelR = 8;  // selection blocks per thread and group (strided by the CTA: coalesced)
constexpr int kSelU = 4;  // (head, block) steps whose loads are in flight together

// The choice of select_step with the same rule and term order, made short for the critical
// path (docs/kernels/nsa.md, "The choice, shortened"): p = exp(s - M) * (1 / L) (one rounding
// more than the division; an ulp-level change that the near-tie rule covers), no integer
// division per term (each block's overlap range is computed once, then heads ascending and
// blocks ascending are walked with kSelU x kSelR loads in flight), the importances turned into
// keys once, and the threshold found two bits a round (16 barriers instead of 32).
__device__ void select_step_fast(const Smem& s, const FastLayout& L, const Params& p, const FastScratch& d, int b,
                                 int kvh, int t, int nc) {
  const Geometry& g = p.g;
  const int G = L.g;
  const int nsplit = nc > 0 ? (nc + d.chunk - 1) / d.chunk : 0;
  float* imp = s.region;                  // [nsel_max], becomes the keys
  float* sm = imp + d.nsel_max + 2 * size_t(d.sc) * G;  // [G] merged max
  float* si = sm + G;                     // [G] 1 / merged sum (unused when no block is visible)
  merge_cmp_stats<true>(s, p, d, b, kvh, G, nsplit);
  const int nsel = t / g.select_len + 1;
  const float* scores = d.scores + (int64_t(b) * p.h + kvh) * G * d.max_nc;  // [G, max_nc]
  for (int base = 0; base < nsel; base += kSelR * kFastThreads) {
    int jl[kSelR], jn[kSelR];
    float acc[kSelR];
    int njmax = 0;
#pragma unroll
    for (int r = 0; r < kSelR; ++r) {
      const int bb = base + r * kFastThreads + int(threadIdx.x);
      const int lo_tok = bb * g.select_len - g.block_len;  // j * d > lo_tok
      jl[r] = lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1;
      const int jhi = min(nc - 1, ((bb + 1) * g.select_len - 1) / g.block_stride);
      jn[r] = bb < nsel ? max(0, jhi - jl[r] + 1) : 0;
      njmax = max(njmax, jn[r]);
      acc[r] = 0.f;
    }
    // Steps q = h * njmax + jj in ascending order: per block, heads ascending, then its
    // overlapping compressed blocks ascending (the contract's order).
    const int steps = G * njmax;
    int h = 0, jj = 0;
    for (int q0 = 0; q0 < steps; q0 += kSelU) {
      float v[kSelU][kSelR];
      int hs[kSelU], js[kSelU];
#pragma unroll
      for (int u = 0; u < kSelU; ++u) {
        hs[u] = q0 + u < steps ? h : G;  // G: past the end, no term
        js[u] = jj;
#pragma unroll
        for (int r = 0; r < kSelR; ++r)
          v[u][r] = hs[u] < G && jj < jn[r] ? __ldcg(scores + int64_t(h) * d.max_nc + jl[r] + jj) : 0.f;
        if (++jj == njmax) { jj = 0; ++h; }
      }
#pragma unroll
      for (int u = 0; u < kSelU; ++u) {
        if (hs[u] >= G) break;
        const float mh = sm[hs[u]], ih = si[hs[u]];
#pragma unroll
        for (int r = 0; r < kSelR; ++r)
          if (js[u] < jn[r]) acc[r] += expf(v[u][r] - mh) * ih;
      }
    }
#pragma unroll
    for (int r = 0; r < kSelR; ++r) {
      const int bb = base + r * kFastThreads + int(threadIdx.x);
      if (bb < nsel) imp[bb] = acc[r];
    }
  }
  __syncthreads();

  const int nt = nsel - 1;
  const int init_end = min(g.num_init, nsel);
  const int local_beg = max(init_end, nt - g.num_local + 1);
  const int forced = init_end + (nt - local_beg + 1);
  const int want = min(g.select_n, nsel);
  const int k = want - forced;
  // Keys: importance bits + 1 (monotone for importances >= 0), 0 for forced blocks.
  unsigned int* keys = reinterpret_cast<unsigned int*>(imp);
  for (int bb = threadIdx.x; bb < nsel; bb += kFastThreads) {
    const bool f = bb < init_end || bb >= local_beg;
    keys[bb] = f ? 0u : __float_as_uint(imp[bb]) + 1u;
  }
  __syncthreads();
  const int per = (nsel + kFastThreads - 1) / kFastThreads;
  const int b_lo = min(nsel, int(threadIdx.x) * per), b_hi = min(nsel, b_lo + per);
  // T = the largest value with at least k keys >= T (the k-th largest key), two bits a round:
  // the largest digit whose candidate still has k keys at or above it.
  unsigned int T = 0;
  if (k > 0) {
    for (int bit = 30; bit >= 0; bit -= 2) {
      const unsigned int c1 = T | (1u << bit), c2 = T | (2u << bit), c3 = T | (3u << bit);
      int n1 = 0, n2 = 0, n3 = 0;
      for (int bb = b_lo; bb < b_hi; ++bb) {
        const unsigned int kb = keys[bb];
        n1 += kb >= c1;
        n2 += kb >= c2;
        n3 += kb >= c3;
      }
      int* buf = s.scan + ((bit >> 1) & 1) * 3 * kWarpsF;  // alternating buffers: one barrier a round
      n1 = __reduce_add_sync(0xffffffffu, n1);
      n2 = __reduce_add_sync(0xffffffffu, n2);
      n3 = __reduce_add_sync(0xffffffffu, n3);
      if (threadIdx.x % 32 == 0) {
        buf[threadIdx.x / 32] = n1;
        buf[kWarpsF + threadIdx.x / 32] = n2;
        buf[2 * kWarpsF + threadIdx.x / 32] = n3;
      }
      __syncthreads();
      int t1 = 0, t2 = 0, t3 = 0;
#pragma unroll
      for (int w = 0; w < kWarpsF; ++w) {
        t1 += buf[w];
        t2 += buf[kWarpsF + w];
        t3 += buf[2 * kWarpsF + w];
      }
      T = t3 >= k ? c3 : t2 >= k ? c2 : t1 >= k ? c1 : T;
    }
  }
  __syncthreads();
  // Blocks above T are all taken; of those equal to T, the lowest indices fill the rest.
  int my_gt = 0, my_eq = 0;
  if (k > 0)
    for (int bb = b_lo; bb < b_hi; ++bb) {
      const unsigned int kb = keys[bb];
      my_gt += kb > T;
      my_eq += kb == T;
    }
  int* sbuf = s.scan + 48;
  int gt = 0, eq_tot = 0;
  block_excl_scan(my_gt, sbuf, gt);
  const int eq_before = block_excl_scan(my_eq, sbuf, eq_tot);
  const int need_eq = k - gt;
  auto chosen = [&](int bb, int& rank) {
    if (bb < init_end || bb >= local_beg) return true;
    if (k <= 0) return false;
    const unsigned int kb = keys[bb];
    if (kb > T) return true;
    return kb == T && rank++ < need_eq;
  };
  int my_chosen = 0, rank = eq_before;
  for (int bb = b_lo; bb < b_hi; ++bb) my_chosen += chosen(bb, rank);
  int total = 0;
  int pos = block_excl_scan(my_chosen, sbuf, total);
  int32_t* dst = d.idx + (int64_t(b) * p.h + kvh) * g.select_n;
  rank = eq_before;
  for (int bb = b_lo; bb < b_hi; ++bb)
    if (chosen(bb, rank)) dst[pos++] = bb;
  for (int a = total + int(threadIdx.x); a < g.select_n; a += kFastThreads) dst[a] = -1;
}

// 1. Compressed chunks (z < sc, with the pooling and the choice) and window chunks.
__global__ void __launch_bounds__(kFastThreads, 4) fast_stage1_kernel(Params p, FastScratch d, int tiles,
                                                                      int update_cmp, int flags) {
  extern __shared__ __align__(16) char smem[];
  const FastLayout L(p, tiles);
  const Smem s(smem, L);
  const int b = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int G = L.g, h0 = kvh * G;
  const Geometry& g = p.g;
  const int len = p.rows.seq_lens[b], t = len - 1;
  const int nc = num_cmp_visible(g, t);
  float o[kMaxMt][kMaxPairs][2][4];
  if (z < d.sc) {
    const int nsplit = nc > 0 ? (nc + d.chunk - 1) / d.chunk : 1;  // split 0 runs the choice
    if (z >= nsplit) return;
    const int j0 = z * d.chunk, cnt = min(d.chunk, nc - j0);
    if (cnt > 0) {
      int64_t kb, vb;
      cmp_base(p.cmp, b, kvh, kb, vb);
      load_q(s, L, p, b, h0);
      int pool_key = -1;
      const bool closes = update_cmp && len >= g.block_len && (len - g.block_len) % g.block_stride == 0;
      if (closes && nc - 1 >= j0 && nc - 1 < j0 + cnt) {
        pool_block(s, L, p, b, kvh, nc - 1, kb, vb);
        pool_key = nc - 1 - j0;
      }
      float* scores = d.scores + (int64_t(b) * p.h + kvh) * G * d.max_nc + j0;  // [G, max_nc] from j0
      attend_chunk(s, L, p, static_cast<const __nv_bfloat16*>(p.cmp.k.p), static_cast<const __nv_bfloat16*>(p.cmp.v.p),
                   cnt, pool_key,
                   [&](int k, int64_t& ko, int64_t& vo) {
                     ko = kb + int64_t(j0 + k) * p.cmp.k_sj;
                     vo = vb + int64_t(j0 + k) * p.cmp.v_sj;
                   },
                   scores, d.max_nc, o);
      write_partial(s, L, p, d.cm, d.cl, d.co, ((int64_t(b) * p.h + kvh) * d.sc + z) * G, o);
    }
    if (!last_of(&d.tickets[b * p.h + kvh], nsplit, s.scan + 60)) return;
    if (flags & kSkipSelect) return;
    if (flags & kOldSteps) select_step(s, L, p, d, b, kvh, t, nc);
    else select_step_fast(s, L, p, d, b, kvh, t, nc);
    return;
  }
  const int zz = z - d.sc;
  const int lo = max(0, t - g.window + 1);
  const int nwin = g.window > 0 ? t - lo + 1 : 0;
  const int k0 = zz * d.chunk;
  if (k0 >= nwin) return;
  load_q(s, L, p, b, h0);
  attend_chunk(s, L, p, static_cast<const __nv_bfloat16*>(p.raw.k.p), static_cast<const __nv_bfloat16*>(p.raw.v.p),
               min(d.chunk, nwin - k0), -1,
               [&](int k, int64_t& ko, int64_t& vo) { raw_offsets(p.raw, b, 0, lo + k0 + k, kvh, ko, vo); }, nullptr, 0,
               o);
  write_partial(s, L, p, d.wm, d.wl, d.wo, ((int64_t(b) * p.h + kvh) * d.s_sw + d.s_sel + zz) * G, o);
}

// Tokens of the chosen blocks visible to position t (ascending: only the last can be partial).
__device__ inline int chosen_keys(const int* sel, const Geometry& g, int t) {
  int n = 0;
  for (int a = 0; a < g.select_n && sel[a] >= 0; ++a) n += min(g.select_len, t + 1 - sel[a] * g.select_len);
  return n;
}

// The final merge of (b, kvh): every branch's partials in ascending split order
// (M = max m_z, L = sum l_z exp(m_z - M), o = sum exp(m_z - M) o_z / L), gates, outputs.
__device__ void combine_step(const Smem& s, const FastLayout& L, const Params& p, const FastScratch& d, int b, int kvh,
                             int t, bool old) {
  const Geometry& g = p.g;
  const int G = L.g, h0 = kvh * G, dv = p.dv;
  const int64_t bh = int64_t(b) * p.h + kvh;
  const int nc = num_cmp_visible(g, t);
  const int nsc = nc > 0 ? (nc + d.chunk - 1) / d.chunk : 0;
  const int ns_sel = (chosen_keys(s.sel, g, t) + d.chunk - 1) / d.chunk;
  const int lo = max(0, t - g.window + 1);
  const int nwin = g.window > 0 ? t - lo + 1 : 0;
  const int ns_win = (nwin + d.chunk - 1) / d.chunk;
  const int items = nsc + ns_sel + ns_win;  // compressed, then selected, then window partials
  float* im = s.region;                     // [items][G] max
  float* il = im + size_t(items) * G;       // [items][G] sum
  float* iw = il + size_t(items) * G;       // [items][G] weight exp(m - M)
  float* ml = iw + size_t(items) * G;       // [3][M G, L G]
  float* gs = ml + 6 * G;                   // [G][3] gates
  // Row of item it in its partial arrays (G rows each).
  auto item_row = [&](int it) -> int64_t {
    if (it < nsc) return (bh * d.sc + it) * G;
    if (it < nsc + ns_sel) return (bh * d.s_sw + (it - nsc)) * G;
    return (bh * d.s_sw + d.s_sel + (it - nsc - ns_sel)) * G;
  };
  for (int e = threadIdx.x; e < items * G; e += kFastThreads) {
    const int it = e / G, i = e % G;
    const float* pm = it < nsc ? d.cm : d.wm;
    const float* pl = it < nsc ? d.cl : d.wl;
    im[e] = __ldcg(pm + item_row(it) + i);
    il[e] = __ldcg(pl + item_row(it) + i);
  }
  for (int e = threadIdx.x; e < G * 3; e += kFastThreads) {
    const int i = e / 3, c = e % 3;
    gs[e] = ld(p.gates, int64_t(b) * p.gate_st + int64_t(h0 + i) * p.gate_sh + c * p.gate_sc);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < 3 * G; e += kFastThreads) {
    const int br = e / G, i = e % G;
    const int z0 = br == 0 ? 0 : br == 1 ? nsc : nsc + ns_sel;
    const int z1 = br == 0 ? nsc : br == 1 ? nsc + ns_sel : items;
    float m = -INFINITY;
    for (int z = z0; z < z1; ++z) m = fmaxf(m, im[z * G + i]);
    float l = 0.f;
    for (int z = z0; z < z1; ++z) {
      const float w = expf(im[z * G + i] - m);
      iw[z * G + i] = w;
      l += il[z * G + i] * w;
    }
    ml[2 * br * G + i] = m;
    ml[(2 * br + 1) * G + i] = l;
  }
  __syncthreads();
  for (int e4 = threadIdx.x; e4 < G * dv / 4; e4 += kFastThreads) {
    const int i = (e4 * 4) / dv, c = (e4 * 4) % dv, hq = h0 + i;
    // Each branch's splits in ascending order; rolled, 4 loads in flight.
    auto sum_items = [&](int it0, int it1) {
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
      for (int it = it0; it < it1; ++it) {
        const float4 v = __ldcg(reinterpret_cast<const float4*>((it < nsc ? d.co : d.wo) + (item_row(it) + i) * dv + c));
        const float w = iw[it * G + i];
        a.x = fmaf(w, v.x, a.x);
        a.y = fmaf(w, v.y, a.y);
        a.z = fmaf(w, v.z, a.z);
        a.w = fmaf(w, v.w, a.w);
      }
      return a;
    };
    float4 a0, a1, a2;
    if (old) {
      a0 = sum_items(0, nsc);
      a1 = sum_items(nsc, nsc + ns_sel);
      a2 = sum_items(nsc + ns_sel, items);
    } else {
      // All branches' partials kCombineBatch at a time in flight (3 dependent round trips per
      // column group were the merge's time), each still added to its branch in ascending order:
      // the same fmaf sequence per branch as sum_items, so the same bits.
      a0 = a1 = a2 = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int it0 = 0; it0 < items; it0 += kCombineBatch) {
        float4 v[kCombineBatch];
#pragma unroll
        for (int u = 0; u < kCombineBatch; ++u) {
          const int it = it0 + u;
          v[u] = it < items ? __ldcg(reinterpret_cast<const float4*>((it < nsc ? d.co : d.wo) + (item_row(it) + i) * dv + c))
                            : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < kCombineBatch; ++u) {
          const int it = it0 + u;
          if (it >= items) break;
          const float w = iw[it * G + i];
          auto fma4 = [&](float4& a) {
            a.x = fmaf(w, v[u].x, a.x);
            a.y = fmaf(w, v[u].y, a.y);
            a.z = fmaf(w, v[u].z, a.z);
            a.w = fmaf(w, v[u].w, a.w);
          };
          if (it < nsc) fma4(a0);
          else if (it < nsc + ns_sel) fma4(a1);
          else fma4(a2);
        }
      }
    }
    const float g0 = gs[i * 3], g1 = gs[i * 3 + 1], g2 = gs[i * 3 + 2];
    const float lc = ml[G + i], ls = ml[3 * G + i], lw = ml[5 * G + i];
    const float ac[4] = {a0.x, a0.y, a0.z, a0.w}, as[4] = {a1.x, a1.y, a1.z, a1.w};
    const float aw[4] = {a2.x, a2.y, a2.z, a2.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float oc = nsc > 0 ? ac[u] / lc : 0.f;
      const float os = ns_sel > 0 ? as[u] / ls : 0.f;
      const float ow = ns_win > 0 ? aw[u] / lw : 0.f;
      st(p.out, int64_t(b) * p.out_st + int64_t(hq) * p.out_sh + c + u, g0 * oc + g1 * os + g2 * ow);
      if (p.out_cmp.p) st(p.out_cmp, int64_t(b) * p.cmp_st + int64_t(hq) * p.cmp_sh + c + u, oc);
      if (p.out_sel.p) st(p.out_sel, int64_t(b) * p.sel_st + int64_t(hq) * p.sel_sh + c + u, os);
      if (p.out_win.p) st(p.out_win, int64_t(b) * p.win_st + int64_t(hq) * p.win_sh + c + u, ow);
    }
  }
  if (p.sel_idx != nullptr)
    for (int a = threadIdx.x; a < g.select_n; a += kFastThreads)
      p.sel_idx[int64_t(b) * p.sel_idx_st + int64_t(kvh) * p.sel_idx_sh + a] = s.sel[a];
}

// 2. Chunks of the selected blocks; the last CTA of (b, kvh) merges and writes the outputs.
__global__ void __launch_bounds__(kFastThreads, 4) fast_stage2_kernel(Params p, FastScratch d, int tiles, int flags) {
  extern __shared__ __align__(16) char smem[];
  const FastLayout L(p, tiles);
  const Smem s(smem, L);
  const int b = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int G = L.g, h0 = kvh * G;
  const Geometry& g = p.g;
  const int t = p.rows.seq_lens[b] - 1;
  const int64_t bh = int64_t(b) * p.h + kvh;
  for (int a = threadIdx.x; a < g.select_n; a += kFastThreads) s.sel[a] = d.idx[bh * g.select_n + a];
  __syncthreads();
  const int nkeys = chosen_keys(s.sel, g, t);
  const int ns_sel = (nkeys + d.chunk - 1) / d.chunk;
  const int k0 = z * d.chunk;
  if (k0 >= nkeys) return;  // past this sequence's keys: not counted, never read
  load_q(s, L, p, b, h0);
  float o[kMaxMt][kMaxPairs][2][4];
  attend_chunk(s, L, p, static_cast<const __nv_bfloat16*>(p.raw.k.p), static_cast<const __nv_bfloat16*>(p.raw.v.p),
               min(d.chunk, nkeys - k0), -1,
               [&](int k, int64_t& ko, int64_t& vo) {
                 const int key = k0 + k;
                 const int pos = s.sel[key / g.select_len] * g.select_len + key % g.select_len;
                 raw_offsets(p.raw, b, 0, pos, kvh, ko, vo);
               },
               nullptr, 0, o);
  write_partial(s, L, p, d.wm, d.wl, d.wo, (bh * d.s_sw + z) * G, o);
  if (!last_of(&d.tickets[kFastMaxHeads + bh], ns_sel, s.scan + 60)) return;
  if (flags & kSkipCombine) return;
  combine_step(s, L, p, d, b, kvh, t, (flags & kOldSteps) != 0);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
bool all_mult8(std::initializer_list<int64_t> v) {
  for (int64_t x : v)
    if (x % 8 != 0) return false;
  return true;
}

}  // namespace

bool decode_fast_supported(const Params& p) {
  if (p.rows.seq_lens == nullptr || p.h < 1 || p.hq % p.h != 0 || p.max_len < 1 || !fast_enabled()) return false;
  const int G = p.hq / p.h;
  if (G % 16 != 0 || G / 16 > kMaxMt) return false;
  if (p.dk % 16 != 0 || p.dv % 16 != 0 || p.dk > 256 || p.dv > 16 * kWarpsF * kMaxPairs) return false;
  if (p.g.block_len > kFastTile || int64_t(p.rows.rows) * p.h > kFastMaxHeads) return false;
  if (!(p.q.bf16 && p.raw.k.bf16 && p.raw.v.bf16 && p.cmp.k.bf16 && p.cmp.v.bf16)) return false;
  if (!aligned16(p.q.p) || !aligned16(p.raw.k.p) || !aligned16(p.raw.v.p) || !aligned16(p.cmp.k.p) ||
      !aligned16(p.cmp.v.p))
    return false;
  if (!all_mult8({p.q_st, p.q_sh, p.raw.k_st, p.raw.k_sh, p.raw.k_sp, p.raw.v_st, p.raw.v_sh, p.raw.v_sp, p.cmp.k_sj,
                  p.cmp.k_sh, p.cmp.k_srow, p.cmp.v_sj, p.cmp.v_sh, p.cmp.v_srow}))
    return false;
  const FastLayout L(p, env_tiles());
  if (L.sc + L.s_win > 65535 || L.s_sel > 65535 || p.h > 65535) return false;
  const size_t region_floats = L.region / 4;
  return L.total <= kMaxSmem && L.select_floats() <= region_floats && L.combine_floats() <= region_floats;
}

size_t decode_fast_scratch_bytes(const Params& p) { return FastLayout(p, env_tiles()).scratch_bytes(p); }

cudaError_t launch_decode_fast(const Params& p, bool update_cmp, void* scratch, unsigned int* counters,
                               cudaStream_t stream) {
  if (p.rows.rows == 0) return cudaSuccess;
  const int tiles = env_tiles(), flags = env_flags();
  const FastLayout L(p, tiles);
  const size_t bh = size_t(p.rows.rows) * p.h;
  ScratchCarver sc{static_cast<char*>(scratch), 0};
  FastScratch d;
  d.max_nc = L.nc_alloc;
  d.sc = L.sc;
  d.s_sel = L.s_sel;
  d.s_win = L.s_win;
  d.s_sw = L.s_sw;
  d.chunk = L.chunk;
  d.nsel_max = L.nsel_max;
  d.tickets = counters;
  d.scores = sc.carve<float>(bh * L.g * L.nc_alloc);
  d.cm = sc.carve<float>(bh * L.sc * L.g);
  d.cl = sc.carve<float>(bh * L.sc * L.g);
  d.co = sc.carve<float>(bh * L.sc * L.g * p.dv);
  d.idx = sc.carve<int32_t>(bh * p.g.select_n);
  d.wm = sc.carve<float>(bh * L.s_sw * L.g);
  d.wl = sc.carve<float>(bh * L.s_sw * L.g);
  d.wo = sc.carve<float>(bh * L.s_sw * L.g * p.dv);
  cudaError_t e;
  if ((e = cudaFuncSetAttribute(fast_stage1_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L.total))) !=
      cudaSuccess)
    return e;
  if ((e = cudaFuncSetAttribute(fast_stage2_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L.total))) !=
      cudaSuccess)
    return e;
  const unsigned B = unsigned(p.rows.rows), H = unsigned(p.h);
  fast_stage1_kernel<<<dim3(B, H, unsigned(L.sc + L.s_win)), kFastThreads, L.total, stream>>>(
      p, d, tiles, update_cmp ? 1 : 0, flags);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  if (flags & kStage1Only) return cudaSuccess;
  fast_stage2_kernel<<<dim3(B, H, unsigned(L.s_sel)), kFastThreads, L.total, stream>>>(p, d, tiles, flags);
  return cudaGetLastError();
}

}  // namespace moex::kernels::nsa
