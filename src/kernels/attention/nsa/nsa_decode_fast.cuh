// Building blocks of the tensor-core NSA decode (nsa_decode_fast.cu; launch plan:
// nsa_decode_fast.h; design: docs/kernels/nsa.md, "Decode, tensor-core path").
//
// A CTA of 4 warps takes C = tiles x 64 keys of one (sequence, KV head) for the G = 16 or 32
// heads of the group. Per 64-key tile: K and V land in shared memory by cp.async (16 bytes, two
// commit groups, the next tile's K loading during this tile's softmax and P V, its V during
// the next S); warp w computes S = Q K^T for keys [16 w, 16 w + 16) with mma.sync m16n8k16
// (bf16 in, f32 accumulate); the tile's row max and sum are merged over the warps in warp
// order; P goes to shared memory as two bf16 terms (hi + lo, about 16 bits of mantissa); warp w
// then computes O += P V for its own Dv columns, so no cross-warp O merge is needed. The CTA
// leaves a softmax partial (m, l, unnormalised O), merged later in ascending chunk order.
#pragma once
#include "kernels/attention/nsa/nsa_decode_fast.h"
#include "kernels/attention/nsa/nsa_tc.cuh"

namespace moex::kernels::nsa::fast {

using tc::cp_async_16;
using tc::cp_async_commit;
using tc::cp_async_wait;
using tc::ldmatrix_x4;
using tc::ldmatrix_x4_trans;
using tc::mma_bf16_16816;
using tc::pack_bf16x2;

constexpr int kWarpsF = kFastThreads / 32;
constexpr int kMaxMt = 2;  // G / 16 m-tiles of 16 heads
constexpr int kMaxPairs = 2;  // Dv / 16 column pairs per warp (Dv <= 128)

// Scratch of one call.
struct FastScratch {
  float* scores = nullptr;  // [B, H, G, max_nc] raw compressed scores (scale * q.k)
  float* cm = nullptr;      // [B, H, sc, G] compressed partial max
  float* cl = nullptr;      // [B, H, sc, G] compressed partial sum
  float* co = nullptr;      // [B, H, sc, G, Dv] compressed partial output (unnormalised)
  int32_t* idx = nullptr;   // [B, H, n] chosen blocks
  unsigned int* tickets = nullptr;  // [2][kFastMaxHeads] the backend's counters, zero between calls
  float* wm = nullptr;      // [B, H, s_sw, G] selected (splits [0, s_sel)) then window partials
  float* wl = nullptr;      // [B, H, s_sw, G]
  float* wo = nullptr;      // [B, H, s_sw, G, Dv]
  int max_nc = 0, sc = 0, s_sel = 0, s_win = 0, s_sw = 0, chunk = 0, nsel_max = 0;
};

// Sizes from the caller's length bound only; the shared-memory carve shared by host and device.
struct FastLayout {
  int g = 0, mt = 0, chunk = 0, max_nc = 0, nc_alloc = 0, sc = 0, nsel_max = 0, s_sel = 0, s_win = 0, s_sw = 0;
  int ldk = 0, ldv = 0, ldp = 0;
  // byte offsets in dynamic shared memory
  size_t o_q = 0, o_k = 0, o_v = 0, o_ph = 0, o_pl = 0, o_koff = 0, o_voff = 0, o_red = 0, o_m = 0, o_l = 0,
         o_pool = 0, o_sel = 0, o_scan = 0, total = 0;
  size_t region = 0;  // bytes of the k + v tiles, reused by the choice and the final merge

  __host__ __device__ FastLayout(const Params& p, int tiles) {
    const Geometry& geo = p.g;
    g = p.hq / p.h;
    mt = g / 16;
    chunk = tiles * kFastTile;
    max_nc = p.max_len >= geo.block_len ? (p.max_len - geo.block_len) / geo.block_stride + 1 : 0;
    nc_alloc = max_nc > 0 ? max_nc : 1;
    sc = (nc_alloc + chunk - 1) / chunk;
    nsel_max = (p.max_len - 1) / geo.select_len + 1;
    const long long sel_keys = (long long)geo.select_n * geo.select_len < p.max_len
                                   ? (long long)geo.select_n * geo.select_len : p.max_len;
    s_sel = int((sel_keys + chunk - 1) / chunk);
    if (s_sel < 1) s_sel = 1;
    const int win_keys = geo.window < p.max_len ? geo.window : p.max_len;
    s_win = (win_keys + chunk - 1) / chunk;
    s_sw = s_sel + s_win;
    ldk = p.dk + 8;  // rows of 16 * odd bytes: ldmatrix without bank conflicts
    ldv = p.dv + 8;
    ldp = kFastTile + 8;
    size_t o = 0;
    auto take = [&](size_t bytes) { const size_t at = o; o += (bytes + 15) / 16 * 16; return at; };
    o_q = take(size_t(g) * ldk * 2);
    o_k = take(size_t(kFastTile) * ldk * 2);
    o_v = take(size_t(kFastTile) * ldv * 2);
    region = o - o_k;
    o_ph = take(size_t(g) * ldp * 2);
    o_pl = take(size_t(g) * ldp * 2);
    o_koff = take(size_t(chunk) * 8);
    o_voff = take(size_t(chunk) * 8);
    o_red = take(size_t(2) * kWarpsF * g * 4);
    o_m = take(size_t(g) * 4);
    o_l = take(size_t(g) * 4);
    o_pool = take(size_t(p.dk + p.dv) * 2);
    o_sel = take(size_t(geo.select_n) * 4);
    o_scan = take(size_t(64) * 4);
    total = o;
  }
  // Floats the choice keeps in the reused region: imp, per-split max and sum, merged max / sum.
  size_t select_floats() const { return size_t(nsel_max) + 2 * size_t(sc) * g + 2 * size_t(g); }
  // The final merge: per split of every branch its max, sum and weight, 3 (max, sum), gates.
  size_t combine_floats() const { return 3 * size_t(sc + s_sw) * g + 9 * size_t(g); }
  size_t scratch_bytes(const Params& p) const {
    using SC = ScratchCarver;
    const size_t bh = size_t(p.rows.rows) * p.h;
    return SC::bytes_for<float>(bh * g * nc_alloc) + 2 * SC::bytes_for<float>(bh * sc * g) +
           SC::bytes_for<float>(bh * sc * g * p.dv) + SC::bytes_for<int32_t>(bh * p.g.select_n) +
           2 * SC::bytes_for<float>(bh * s_sw * g) + SC::bytes_for<float>(bh * s_sw * g * p.dv);
  }
};

struct Smem {
  __nv_bfloat16 *q, *k, *v, *ph, *pl, *pool;
  int64_t *koff, *voff;  // [chunk] element offsets of the chunk's keys (-1: not loaded)
  float *red, *m, *l, *region;
  int *sel, *scan;  // scan [64]: threshold buffers 0..7, scan buffer 48..55, ticket flag 60
  __device__ Smem(char* base, const FastLayout& L) {
    q = reinterpret_cast<__nv_bfloat16*>(base + L.o_q);
    k = reinterpret_cast<__nv_bfloat16*>(base + L.o_k);
    v = reinterpret_cast<__nv_bfloat16*>(base + L.o_v);
    ph = reinterpret_cast<__nv_bfloat16*>(base + L.o_ph);
    pl = reinterpret_cast<__nv_bfloat16*>(base + L.o_pl);
    pool = reinterpret_cast<__nv_bfloat16*>(base + L.o_pool);
    koff = reinterpret_cast<int64_t*>(base + L.o_koff);
    voff = reinterpret_cast<int64_t*>(base + L.o_voff);
    red = reinterpret_cast<float*>(base + L.o_red);
    m = reinterpret_cast<float*>(base + L.o_m);
    l = reinterpret_cast<float*>(base + L.o_l);
    region = reinterpret_cast<float*>(base + L.o_k);
    sel = reinterpret_cast<int*>(base + L.o_sel);
    scan = reinterpret_cast<int*>(base + L.o_scan);
  }
};

// Exclusive prefix of v over the CTA in thread order; total gets the sum. buf [kWarpsF] ints.
__device__ inline int block_excl_scan(int v, int* buf, int& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) buf[warp] = x;
  __syncthreads();
  int off = 0, tot = 0;
#pragma unroll
  for (int w = 0; w < kWarpsF; ++w) {
    if (w < warp) off += buf[w];
    tot += buf[w];
  }
  __syncthreads();
  total = tot;
  return off + x - v;
}

// cp.async of the K (is_k) or V rows of tile ti of the chunk (rows past cnt zero-filled); the
// pooled key's row comes from s.pool (plain stores, visible after the next barrier).
__device__ inline void issue_rows(const Smem& s, const FastLayout& L, const Params& p, const __nv_bfloat16* src,
                                  bool is_k, int ti, int cnt, int pool_key) {
  const int dim = is_k ? p.dk : p.dv, ch = dim / 8, ld = is_k ? L.ldk : L.ldv, t0 = ti * kFastTile;
  __nv_bfloat16* dst = is_k ? s.k : s.v;
  const int64_t* off = is_k ? s.koff : s.voff;
  for (int e = threadIdx.x; e < kFastTile * ch; e += kFastThreads) {
    const int j = e / ch, c = (e % ch) * 8, key = t0 + j;
    if (key >= cnt) {
      cp_async_16(dst + j * ld + c, src, false);
    } else {
      const int64_t o = off[key];
      if (o >= 0) cp_async_16(dst + j * ld + c, src + o + c, true);
    }
  }
  if (pool_key >= t0 && pool_key < t0 + kFastTile)
    for (int c = threadIdx.x; c < dim; c += kFastThreads)
      dst[(pool_key - t0) * ld + c] = s.pool[(is_k ? 0 : p.dk) + c];
}

// Online-softmax attention of the CTA's G heads over `cnt` keys (1 <= cnt <= chunk). Key k's
// element offsets come from off(k, ko, vo); the key pool_key (or -1) is not loaded but taken
// from s.pool (the compressed block this CTA just pooled). When scores != nullptr the raw
// scores go to scores[i * ld_scores + k]. Leaves s.m / s.l and returns O in o. The q rows must
// be in flight (one commit group) or in place.
template <class Off>
__device__ void attend_chunk(const Smem& s, const FastLayout& L, const Params& p, const __nv_bfloat16* kg,
                             const __nv_bfloat16* vg, int cnt, int pool_key, Off off, float* scores,
                             int64_t ld_scores, float (&o)[kMaxMt][kMaxPairs][2][4]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  const int G = L.g, MT = L.mt, dk = p.dk, pairs = p.dv / 16;
  for (int i = threadIdx.x; i < G; i += kFastThreads) { s.m[i] = -INFINITY; s.l[i] = 0.f; }
#pragma unroll
  for (int a = 0; a < kMaxMt; ++a)
#pragma unroll
    for (int b = 0; b < kMaxPairs; ++b)
#pragma unroll
      for (int c = 0; c < 2; ++c) o[a][b][c][0] = o[a][b][c][1] = o[a][b][c][2] = o[a][b][c][3] = 0.f;
  // Offsets of all the chunk's keys first: one round trip for the page table.
  for (int j = threadIdx.x; j < cnt; j += kFastThreads) {
    int64_t ko = -1, vo = -1;
    if (j != pool_key) off(j, ko, vo);
    s.koff[j] = ko;
    s.voff[j] = vo;
  }
  __syncthreads();
  const int ntiles = (cnt + kFastTile - 1) / kFastTile;
  issue_rows(s, L, p, kg, true, 0, cnt, pool_key);
  cp_async_commit();
  issue_rows(s, L, p, vg, false, 0, cnt, pool_key);
  cp_async_commit();
  float* red_max = s.red;                  // [4][G]
  float* red_sum = s.red + kWarpsF * G;    // [4][G]
  for (int ti = 0; ti < ntiles; ++ti) {
    const int t0 = ti * kFastTile, tc = min(kFastTile, cnt - t0);
    cp_async_wait<1>();  // K(ti) (and q) landed; V(ti) may still be in flight
    __syncthreads();
    // S = Q K^T for keys [16 warp, 16 warp + 16).
    float acc[kMaxMt][2][4];
#pragma unroll
    for (int a = 0; a < kMaxMt; ++a)
#pragma unroll
      for (int n = 0; n < 2; ++n) acc[a][n][0] = acc[a][n][1] = acc[a][n][2] = acc[a][n][3] = 0.f;
    const int kb = 16 * warp;
    if (kb < tc) {
      for (int kk = 0; kk < dk / 16; ++kk) {
        uint32_t bk[4];
        ldmatrix_x4(bk, s.k + (kb + (lane % 8) + (lane / 16) * 8) * L.ldk + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int a = 0; a < kMaxMt; ++a) {
          if (a >= MT) break;
          uint32_t qa[4];
          ldmatrix_x4(qa, s.q + (a * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * L.ldk + kk * 16 + (lane / 16) * 8);
          mma_bf16_16816(acc[a][0], qa, bk[0], bk[1]);
          mma_bf16_16816(acc[a][1], qa, bk[2], bk[3]);
        }
      }
    }
    // Scale, mask, raw scores out, row max of this warp's keys.
#pragma unroll
    for (int a = 0; a < kMaxMt; ++a) {
      if (a >= MT) break;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int kt = kb + n * 8 + 2 * gc + e;
            float& x = acc[a][n][2 * r + e];
            x = kt < tc ? p.g.scale * x : -INFINITY;
            if (scores != nullptr && kt < tc) scores[int64_t(a * 16 + gr + 8 * r) * ld_scores + t0 + kt] = x;
            mx = fmaxf(mx, x);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        if (gc == 0) red_max[warp * G + a * 16 + gr + 8 * r] = mx;
      }
    }
    __syncthreads();  // K(ti) free, red_max complete
    if (ti + 1 < ntiles) issue_rows(s, L, p, kg, true, ti + 1, cnt, pool_key);
    cp_async_commit();
    // New row max (over the warps in order), probabilities, this warp's row sums, P to smem.
    float alpha[kMaxMt][2];
#pragma unroll
    for (int a = 0; a < kMaxMt; ++a) {
      if (a >= MT) break;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = a * 16 + gr + 8 * r;
        float mt = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarpsF; ++w) mt = fmaxf(mt, red_max[w * G + row]);
        const float m_old = s.m[row];
        const float m_new = fmaxf(m_old, mt);
        const bool none = m_new == -INFINITY;
        alpha[a][r] = none ? 1.f : expf(m_old - m_new);
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          float pr[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            pr[e] = none ? 0.f : expf(acc[a][n][2 * r + e] - m_new);
            sum += pr[e];
          }
          const __nv_bfloat162 hi = __floats2bfloat162_rn(pr[0], pr[1]);
          const float2 hf = __bfloat1622float2(hi);
          const uint32_t lo = pack_bf16x2(pr[0] - hf.x, pr[1] - hf.y);
          const int col = kb + n * 8 + 2 * gc;
          *reinterpret_cast<__nv_bfloat162*>(s.ph + row * L.ldp + col) = hi;
          *reinterpret_cast<uint32_t*>(s.pl + row * L.ldp + col) = lo;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (gc == 0) red_sum[warp * G + row] = sum;
      }
    }
    cp_async_wait<1>();  // V(ti) landed; K(ti + 1) may still be in flight
    __syncthreads();
    // Running max and sum (one thread per head; no other thread reads s.m until the next tile).
    for (int i = threadIdx.x; i < G; i += kFastThreads) {
      float mt = -INFINITY;
      for (int w = 0; w < kWarpsF; ++w) mt = fmaxf(mt, red_max[w * G + i]);
      const float m_old = s.m[i], m_new = fmaxf(m_old, mt);
      const float al = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
      float ts = 0.f;
      for (int w = 0; w < kWarpsF; ++w) ts += red_sum[w * G + i];
      s.l[i] = s.l[i] * al + ts;
      s.m[i] = m_new;
    }
    // O = O * alpha + P V for this warp's column pairs.
#pragma unroll
    for (int pi = 0; pi < kMaxPairs; ++pi) {
      const int pr = warp + kWarpsF * pi;
      if (pr >= pairs) break;
#pragma unroll
      for (int a = 0; a < kMaxMt; ++a) {
        if (a >= MT) break;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          o[a][pi][n][0] *= alpha[a][0]; o[a][pi][n][1] *= alpha[a][0];
          o[a][pi][n][2] *= alpha[a][1]; o[a][pi][n][3] *= alpha[a][1];
        }
      }
      for (int kk = 0; kk * 16 < tc; ++kk) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, s.v + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * L.ldv + pr * 16 + (lane / 16) * 8);
#pragma unroll
        for (int a = 0; a < kMaxMt; ++a) {
          if (a >= MT) break;
          const int prow = a * 16 + (lane % 8) + ((lane / 8) % 2) * 8, pcol = kk * 16 + (lane / 16) * 8;
          uint32_t ah[4], al[4];
          ldmatrix_x4(ah, s.ph + prow * L.ldp + pcol);
          ldmatrix_x4(al, s.pl + prow * L.ldp + pcol);
          mma_bf16_16816(o[a][pi][0], ah, bv[0], bv[1]);
          mma_bf16_16816(o[a][pi][1], ah, bv[2], bv[3]);
          mma_bf16_16816(o[a][pi][0], al, bv[0], bv[1]);
          mma_bf16_16816(o[a][pi][1], al, bv[2], bv[3]);
        }
      }
    }
    __syncthreads();  // V(ti), P and red_* free; s.m / s.l final for this tile
    if (ti + 1 < ntiles) issue_rows(s, L, p, vg, false, ti + 1, cnt, pool_key);
    cp_async_commit();
  }
  cp_async_wait<0>();
}

// Writes the CTA's partial: m, l [G] and unnormalised O [G][Dv] at split row `row` (G rows).
__device__ inline void write_partial(const Smem& s, const FastLayout& L, const Params& p, float* pm, float* pl,
                                     float* po, int64_t row, const float (&o)[kMaxMt][kMaxPairs][2][4]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  for (int i = threadIdx.x; i < L.g; i += kFastThreads) {
    pm[row + i] = s.m[i];
    pl[row + i] = s.l[i];
  }
  float* ob = po + row * p.dv;  // [G][Dv]
#pragma unroll
  for (int pi = 0; pi < kMaxPairs; ++pi) {
    const int pr = warp + kWarpsF * pi;
    if (pr >= p.dv / 16) break;
#pragma unroll
    for (int a = 0; a < kMaxMt; ++a) {
      if (a >= L.mt) break;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const int col = pr * 16 + n * 8 + 2 * gc;
        *reinterpret_cast<float2*>(ob + (a * 16 + gr) * p.dv + col) = make_float2(o[a][pi][n][0], o[a][pi][n][1]);
        *reinterpret_cast<float2*>(ob + (a * 16 + gr + 8) * p.dv + col) = make_float2(o[a][pi][n][2], o[a][pi][n][3]);
      }
    }
  }
}

// q rows of heads [h0, h0 + G) of decode row b into s.q (cp.async, one commit group).
__device__ inline void load_q(const Smem& s, const FastLayout& L, const Params& p, int b, int h0) {
  const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(p.q.p);
  const int kch = p.dk / 8;
  for (int e = threadIdx.x; e < L.g * kch; e += kFastThreads) {
    const int i = e / kch, c = (e % kch) * 8;
    cp_async_16(s.q + i * L.ldk + c, q + int64_t(b) * p.q_st + int64_t(h0 + i) * p.q_sh + c, true);
  }
  cp_async_commit();
}

// Ticket of the last CTA: every thread's writes are fenced before thread 0 takes a ticket.
__device__ inline bool last_of(unsigned int* counter, int expected, int* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int t = atomicAdd(counter, 1u);
    const bool last = int(t) == expected - 1;
    if (last) *counter = 0u;  // ready for the next launch
    *flag = last;
  }
  __syncthreads();
  if (!*flag) return false;
  __threadfence();
  return true;
}

// Mean pooling of compressed block j (tokens [j d, j d + l)) of sequence b, KV head kvh, staged
// through the k / v tiles (l <= kFastTile): f32 sum in token order, / l, rounded to bf16 into
// the cache and into s.pool. The bits of pool_decode_kernel (nsa_compress.cu).
__device__ inline void pool_block(const Smem& s, const FastLayout& L, const Params& p, int b, int kvh, int j, int64_t kbase,
                           int64_t vbase) {
  const int l = p.g.block_len, d = p.g.block_stride, kch = p.dk / 8, vch = p.dv / 8;
  const __nv_bfloat16* rk = static_cast<const __nv_bfloat16*>(p.raw.k.p);
  const __nv_bfloat16* rv = static_cast<const __nv_bfloat16*>(p.raw.v.p);
  for (int r = threadIdx.x; r < l; r += kFastThreads) raw_offsets(p.raw, b, 0, j * d + r, kvh, s.koff[r], s.voff[r]);
  __syncthreads();
  for (int e = threadIdx.x; e < l * (kch + vch); e += kFastThreads) {
    const int r = e / (kch + vch), c = e % (kch + vch);
    if (c < kch) cp_async_16(s.k + r * L.ldk + c * 8, rk + s.koff[r] + c * 8, true);
    else cp_async_16(s.v + r * L.ldv + (c - kch) * 8, rv + s.voff[r] + (c - kch) * 8, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  __nv_bfloat16* ck = static_cast<__nv_bfloat16*>(p.cmp.k.p);
  __nv_bfloat16* cv = static_cast<__nv_bfloat16*>(p.cmp.v.p);
  for (int col = threadIdx.x; col < p.dk + p.dv; col += kFastThreads) {
    const bool is_k = col < p.dk;
    const int c = is_k ? col : col - p.dk;
    float sum = 0.f;
    for (int r = 0; r < l; ++r) sum += __bfloat162float(is_k ? s.k[r * L.ldk + c] : s.v[r * L.ldv + c]);
    const __nv_bfloat16 mean = __float2bfloat16_rn(sum / float(l));
    s.pool[col] = mean;
    if (is_k) ck[kbase + int64_t(j) * p.cmp.k_sj + c] = mean;
    else cv[vbase + int64_t(j) * p.cmp.v_sj + c] = mean;
  }
  __syncthreads();  // the tiles and offsets are reused for keys
}

}  // namespace moex::kernels::nsa::fast
