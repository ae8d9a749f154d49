// NSA decode, split-KV (contract: src/ops/nsa.h; launch order and split rules:
// nsa_decode_split.h; design: docs/kernels/nsa.md, "Decode"). The per-tile arithmetic is the
// CUDA-core code of nsa_block.cuh (f32, dot products in feature order; here with 16-byte bf16
// loads and 4 heads per thread, same bits); what is new is that a
// CTA covers one chunk of keys and leaves a softmax partial (m, l, unnormalised o), merged by a
// combine CTA in ascending split order, so every sum still runs in one fixed order.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "kernels/attention/nsa/nsa_block.cuh"
#include "kernels/attention/nsa/nsa_decode_split.h"

namespace moex::kernels::nsa {
namespace {

// Scratch of one decode call; bases of the per-(sequence, KV head) rows.
struct DecodeScratch {
  float* scores = nullptr;  // [B, H, G, max_nc] raw compressed scores (scale * q.k)
  float* cm = nullptr;      // [B, H, sc, G] compressed partial max
  float* cl = nullptr;      // [B, H, sc, G] compressed partial sum
  float* co = nullptr;      // [B, H, sc, G, Dv] compressed partial output (unnormalised)
  float* o_cmp = nullptr;   // [B, HQ, Dv] merged compressed branch
  int32_t* idx = nullptr;   // [B, H, n] chosen blocks
  float* wm = nullptr;      // [B, H, s_sw, G] selected (splits [0, s_sel)) and window partials
  float* wl = nullptr;      // [B, H, s_sw, G]
  float* wo = nullptr;      // [B, H, s_sw, G, Dv]
  int max_nc = 0, sc = 0, s_sel = 0, s_sw = 0;
  bool vec_cmp = false, vec_raw = false;  // compressed / raw rows readable as 16-byte bf16 chunks
};

// Host-side sizes, from the caller's maximum length only (never from the batch contents).
struct Layout {
  int g = 0, max_nc = 0, nc_alloc = 0, sc = 0, nsel_max = 0, s_sel = 0, s_win = 0, s_sw = 0;
  explicit Layout(const Params& p) {
    const Geometry& geo = p.g;
    g = p.hq / p.h;
    max_nc = p.max_len >= geo.block_len ? (p.max_len - geo.block_len) / geo.block_stride + 1 : 0;
    nc_alloc = max_nc > 0 ? max_nc : 1;
    sc = (nc_alloc + kDecodeCmpChunk - 1) / kDecodeCmpChunk;
    nsel_max = (p.max_len - 1) / geo.select_len + 1;
    const int64_t sel_keys = std::min<int64_t>(int64_t(geo.select_n) * geo.select_len, p.max_len);
    s_sel = int((sel_keys + kDecodeKeyChunk - 1) / kDecodeKeyChunk);
    if (s_sel < 1) s_sel = 1;
    const int win_keys = std::min(geo.window, p.max_len);
    s_win = (win_keys + kDecodeKeyChunk - 1) / kDecodeKeyChunk;
    s_sw = s_sel + s_win;
  }
  size_t split_smem(const Params& p) const { return BlockSmem::bytes(g, p.dk, p.dv) + size_t(p.g.select_n) * 4 + 16; }
  size_t combine_smem(const Params& p) const {
    return (size_t(sc) * g + 2 * size_t(g) + size_t(nsel_max) + size_t(p.g.select_n) + 2 * (kThreads / 32)) * 4 + 64;
  }
  size_t scratch_bytes(const Params& p) const {
    using SC = ScratchCarver;
    const size_t bh = size_t(p.rows.rows) * p.h;
    return SC::bytes_for<float>(bh * g * nc_alloc) + 2 * SC::bytes_for<float>(bh * sc * g) +
           SC::bytes_for<float>(bh * sc * g * p.dv) + SC::bytes_for<float>(size_t(p.rows.rows) * p.hq * p.dv) +
           SC::bytes_for<int32_t>(bh * p.g.select_n) + 2 * SC::bytes_for<float>(bh * s_sw * g) +
           SC::bytes_for<float>(bh * s_sw * g * p.dv);
  }
};

// load_tile of nsa_block.cuh for bf16 rows whose offsets are multiples of 8 elements (16 B):
// one 16-byte load per 8 features instead of eight 2-byte ones; the same values land in smem.
__device__ inline void load_rows_bf16x8(const __nv_bfloat16* src, const int64_t* off, float* dst, int ld, int dim) {
  const int chunks = dim / 8;
  for (int e = threadIdx.x; e < kTile * chunks; e += kThreads) {
    const int j = e / chunks, c = (e % chunks) * 8;
    const int64_t o = off[j];
    float* d = dst + j * ld + c;
    if (o < 0) {
#pragma unroll
      for (int u = 0; u < 8; ++u) d[u] = 0.f;
      continue;
    }
    // bf16 -> f32 is the 16 bits moved up (exact, as __bfloat162float); element 2u is the low
    // half of word u (little endian).
    const uint4 raw = *reinterpret_cast<const uint4*>(src + o + c);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      d[2 * u] = __uint_as_float(w[u] << 16);
      d[2 * u + 1] = __uint_as_float(w[u] & 0xffff0000u);
    }
  }
}
__device__ inline void load_kv_tile(BlockSmem& s, const FloatRef& k, const FloatRef& v, bool vec) {
  if (!vec) {
    load_tile(s, k, v, true);
    return;
  }
  load_rows_bf16x8(static_cast<const __nv_bfloat16*>(k.p), s.koff, s.k, s.ldk, s.dk);
  load_rows_bf16x8(static_cast<const __nv_bfloat16*>(v.p), s.voff, s.v, s.dv, s.dv);
}

// tile_scores / tile_pv of nsa_block.cuh with a thread serving up to 4 heads (i, i + 4, i + 8,
// i + 12 for scores; 4 consecutive heads for P V): each K / V element is read from shared memory
// once for all of them. Every output keeps its own order (features ascending for a score, keys
// ascending for P V), so the bits are those of the nsa_block.cuh functions.
__device__ inline void tile_scores_x4(BlockSmem& s, float scale) {
  const int warp = threadIdx.x / 32, j = threadIdx.x % 32;  // kThreads / 32 == 4 warps
  const bool live = s.koff[j] >= 0;
  const float* kj = s.k + j * s.ldk;
  for (int i0 = warp; i0 < s.g; i0 += 16) {
    const int nr = min(4, (s.g - i0 + 3) / 4);  // heads i0 + 4 r, r < nr, are < g
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (live) {
      const float* q0 = s.q + i0 * s.ldq;
      if (nr == 4) {
        for (int c = 0; c < s.dk; ++c) {
          const float kv = kj[c];
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[r] = fmaf(q0[4 * r * s.ldq + c], kv, acc[r]);
        }
      } else {
        for (int c = 0; c < s.dk; ++c) {
          const float kv = kj[c];
#pragma unroll
          for (int r = 0; r < 4; ++r)
            if (r < nr) acc[r] = fmaf(q0[4 * r * s.ldq + c], kv, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (r < nr) s.p[(i0 + 4 * r) * kTile + j] = live ? scale * acc[r] : -INFINITY;
  }
}

__device__ inline void tile_pv_x4(BlockSmem& s) {
  const int groups = (s.g + 3) / 4;
  for (int e = threadIdx.x; e < groups * s.dv; e += kThreads) {
    const int i0 = (e / s.dv) * 4, c = e % s.dv;
    const int nr = min(4, s.g - i0);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (r < nr) acc[r] = s.o[(i0 + r) * s.dv + c] * s.alpha[i0 + r];
    const float* p0 = s.p + i0 * kTile;
    if (nr == 4) {
      for (int j = 0; j < kTile; ++j) {
        const float vv = s.v[j * s.dv + c];
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r] = fmaf(p0[r * kTile + j], vv, acc[r]);
      }
    } else {
      for (int j = 0; j < kTile; ++j) {
        const float vv = s.v[j * s.dv + c];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          if (r < nr) acc[r] = fmaf(p0[r * kTile + j], vv, acc[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (r < nr) s.o[(i0 + r) * s.dv + c] = acc[r];
  }
}

// attend() of nsa_block.cuh with the tile loads and products above.
template <class Off>
__device__ void attend_keys(BlockSmem& s, const FloatRef& kref, const FloatRef& vref, bool vec, int nkeys, float scale,
                            Off off) {
  for (int k0 = 0; k0 < nkeys; k0 += kTile) {
    if (threadIdx.x < kTile) {
      const int k = k0 + int(threadIdx.x);
      int64_t ko = -1, vo = -1;
      if (k < nkeys) off(k, ko, vo);
      s.koff[threadIdx.x] = ko;
      s.voff[threadIdx.x] = vo;
    }
    __syncthreads();
    load_kv_tile(s, kref, vref, vec);
    __syncthreads();
    tile_scores_x4(s, scale);
    __syncthreads();
    tile_softmax(s);
    __syncthreads();
    tile_pv_x4(s);
    __syncthreads();
  }
}

// Tokens of the chosen blocks visible to position t (ascending blocks: only the last can be
// partial). sel [n] ascending, -1 padded.
__device__ inline int selected_keys(const int* sel, const Geometry& g, int t) {
  int n = 0;
  for (int a = 0; a < g.select_n && sel[a] >= 0; ++a) n += min(g.select_len, t + 1 - sel[a] * g.select_len);
  return n;
}

// 1. Compressed blocks [split * C, split * C + C) of sequence b, KV head blockIdx.y.
__global__ void __launch_bounds__(kThreads) cmp_split_kernel(Params p, DecodeScratch d) {
  extern __shared__ __align__(16) char smem[];
  const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int G = p.hq / p.h, h0 = kvh * G;
  const int t = p.rows.seq_lens[b] - 1;
  const int nc = num_cmp_visible(p.g, t);
  const int j0 = split * kDecodeCmpChunk;
  if (j0 >= nc) return;  // past this sequence's blocks: never read by the combine
  const int cnt = min(kDecodeCmpChunk, nc - j0);
  BlockSmem s;
  s.carve(smem, G, p.dk, p.dv);
  int64_t kb, vb;
  cmp_base(p.cmp, b, kvh, kb, vb);
  load_q_reset(s, p.q, int64_t(b) * p.q_st, p.q_sh, h0);
  float* scores = d.scores + (int64_t(b) * p.h + kvh) * G * d.max_nc;  // [G, max_nc]
  __syncthreads();
  for (int k0 = 0; k0 < cnt; k0 += kTile) {
    if (threadIdx.x < kTile) {
      const int k = k0 + int(threadIdx.x);
      int64_t ko = -1, vo = -1;
      if (k < cnt) {
        ko = kb + int64_t(j0 + k) * p.cmp.k_sj;
        vo = vb + int64_t(j0 + k) * p.cmp.v_sj;
      }
      s.koff[threadIdx.x] = ko;
      s.voff[threadIdx.x] = vo;
    }
    __syncthreads();
    load_kv_tile(s, p.cmp.k, p.cmp.v, d.vec_cmp);
    __syncthreads();
    tile_scores_x4(s, p.g.scale);
    __syncthreads();
    // Raw scores for the importance (the combine needs the final max and sum first).
    const int here = min(kTile, cnt - k0);
    for (int e = threadIdx.x; e < G * kTile; e += kThreads) {
      const int i = e / kTile, jj = e % kTile;
      if (jj < here) scores[int64_t(i) * d.max_nc + j0 + k0 + jj] = s.p[e];
    }
    __syncthreads();  // tile_softmax overwrites s.p
    tile_softmax(s);
    __syncthreads();
    tile_pv_x4(s);
    __syncthreads();
  }
  const int64_t row = ((int64_t(b) * p.h + kvh) * d.sc + split) * G;  // first of the G partial rows
  for (int i = threadIdx.x; i < G; i += kThreads) {
    d.cm[row + i] = s.m[i];
    d.cl[row + i] = s.l[i];
  }
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) d.co[row * p.dv + e] = s.o[e];
}

// 2. Merge of the compressed splits, importance, choice. One CTA per (sequence, KV head).
__global__ void __launch_bounds__(kThreads) cmp_combine_kernel(Params p, DecodeScratch d, int nsel_max) {
  extern __shared__ __align__(16) char smem[];
  const int b = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  const Geometry& g = p.g;
  float* wts = reinterpret_cast<float*>(smem);  // [sc][G] exp(m_s - M)
  float* sm = wts + size_t(d.sc) * G;           // [G] merged max
  float* sl = sm + G;                           // [G] merged sum
  float* imp = sl + G;                          // [nsel_max]
  int* sel = reinterpret_cast<int*>(imp + nsel_max);  // [n]
  float* red_v = reinterpret_cast<float*>(sel + g.select_n);  // [kThreads / 32]
  int* red_i = reinterpret_cast<int*>(red_v + kThreads / 32);  // [kThreads / 32]

  const int t = p.rows.seq_lens[b] - 1;
  const int nc = num_cmp_visible(g, t);
  const int nsplit = (nc + kDecodeCmpChunk - 1) / kDecodeCmpChunk;
  const int nsel = t / g.select_len + 1;
  const int64_t row0 = (int64_t(b) * p.h + kvh) * d.sc;  // split rows of this (sequence, head)
  for (int i = threadIdx.x; i < G; i += kThreads) {
    float m = -INFINITY;
    for (int s = 0; s < nsplit; ++s) m = fmaxf(m, d.cm[(row0 + s) * G + i]);
    float l = 0.f;
    for (int s = 0; s < nsplit; ++s) {
      const float w = expf(d.cm[(row0 + s) * G + i] - m);
      wts[s * G + i] = w;
      l += d.cl[(row0 + s) * G + i] * w;
    }
    sm[i] = m;
    sl[i] = l;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) {
    const int i = e / p.dv, c = e % p.dv;
    float acc = 0.f;
    for (int s = 0; s < nsplit; ++s) acc = fmaf(wts[s * G + i], d.co[((row0 + s) * G + i) * p.dv + c], acc);
    d.o_cmp[(int64_t(b) * p.hq + h0 + i) * p.dv + c] = nc > 0 ? acc / sl[i] : 0.f;
  }
  // Importance in the contract's (and the CPU reference's) order: for each selection block,
  // the group's heads ascending, then the overlapping compressed blocks ascending, adding
  // p = exp(s - M) / L. A block's p is recomputed for each selection block it overlaps (l / l' + 1
  // of them at most): cheaper than a pass and a shared array of max_nc values.
  const float* scores = d.scores + (int64_t(b) * p.h + kvh) * G * d.max_nc;  // [G, max_nc]
  for (int bb = threadIdx.x; bb < nsel; bb += kThreads) {
    const int lo_tok = bb * g.select_len - g.block_len;  // j * d > lo_tok
    const int jlo = lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1;
    const int jhi = min(nc - 1, ((bb + 1) * g.select_len - 1) / g.block_stride);
    float acc = 0.f;
    for (int i = 0; i < G; ++i) {
      const float* si = scores + int64_t(i) * d.max_nc;  // [max_nc]
      for (int j = jlo; j <= jhi; ++j) acc += expf(si[j] - sm[i]) / sl[i];
    }
    imp[bb] = acc;
  }
  select_blocks(imp, nsel, g, sel, red_v, red_i, d.idx + (int64_t(b) * p.h + kvh) * g.select_n);
}

// 3. One chunk of kDecodeKeyChunk keys of the selected blocks (z < s_sel) or of the window.
__global__ void __launch_bounds__(kThreads) sw_split_kernel(Params p, DecodeScratch d) {
  extern __shared__ __align__(16) char smem[];
  const int b = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
  const int G = p.hq / p.h, h0 = kvh * G;
  const Geometry& g = p.g;
  BlockSmem s;
  int* sel = reinterpret_cast<int*>(s.carve(smem, G, p.dk, p.dv));  // [n]
  const int t = p.rows.seq_lens[b] - 1;
  const bool is_sel = z < d.s_sel;
  for (int a = threadIdx.x; a < g.select_n; a += kThreads) sel[a] = d.idx[(int64_t(b) * p.h + kvh) * g.select_n + a];
  __syncthreads();
  const int lo = max(0, t - g.window + 1);
  const int nkeys = is_sel ? selected_keys(sel, g, t) : (g.window > 0 ? t - lo + 1 : 0);
  const int k0 = (is_sel ? z : z - d.s_sel) * kDecodeKeyChunk;
  if (k0 >= nkeys) return;  // past this branch's keys: never read by the combine
  const int cnt = min(kDecodeKeyChunk, nkeys - k0);
  load_q_reset(s, p.q, int64_t(b) * p.q_st, p.q_sh, h0);
  __syncthreads();
  attend_keys(s, p.raw.k, p.raw.v, d.vec_raw, cnt, g.scale, [&](int k, int64_t& ko, int64_t& vo) {
    const int key = k0 + k;
    const int pos = is_sel ? sel[key / g.select_len] * g.select_len + key % g.select_len : lo + key;
    raw_offsets(p.raw, b, 0, pos, kvh, ko, vo);
  });
  const int64_t row = ((int64_t(b) * p.h + kvh) * d.s_sw + z) * G;
  for (int i = threadIdx.x; i < G; i += kThreads) {
    d.wm[row + i] = s.m[i];
    d.wl[row + i] = s.l[i];
  }
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) d.wo[row * p.dv + e] = s.o[e];
}

// Normalised merge of `count` partials starting at split row `row0` for head i, feature c
// (ascending splits; 0 when count == 0).
__device__ inline float merge(const DecodeScratch& d, int64_t row0, int count, int G, int dv, int i, int c) {
  if (count == 0) return 0.f;
  float m = -INFINITY;
  for (int s = 0; s < count; ++s) m = fmaxf(m, d.wm[(row0 + s) * G + i]);
  float l = 0.f, acc = 0.f;
  for (int s = 0; s < count; ++s) {
    const float w = expf(d.wm[(row0 + s) * G + i] - m);
    l += d.wl[(row0 + s) * G + i] * w;
    acc = fmaf(w, d.wo[((row0 + s) * G + i) * dv + c], acc);
  }
  return acc / l;
}

// 4. Merge of the selected and window splits, gates, outputs.
__global__ void __launch_bounds__(kThreads) sw_combine_kernel(Params p, DecodeScratch d) {
  extern __shared__ __align__(16) char smem[];
  const int b = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  const Geometry& g = p.g;
  int* sel = reinterpret_cast<int*>(smem);  // [n]
  const int t = p.rows.seq_lens[b] - 1;
  for (int a = threadIdx.x; a < g.select_n; a += kThreads) sel[a] = d.idx[(int64_t(b) * p.h + kvh) * g.select_n + a];
  __syncthreads();
  const int lo = max(0, t - g.window + 1);
  const int nsel_keys = selected_keys(sel, g, t);
  const int nwin = g.window > 0 ? t - lo + 1 : 0;
  const int ns_sel = (nsel_keys + kDecodeKeyChunk - 1) / kDecodeKeyChunk;
  const int ns_win = (nwin + kDecodeKeyChunk - 1) / kDecodeKeyChunk;
  const int64_t row0 = (int64_t(b) * p.h + kvh) * d.s_sw;
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) {
    const int i = e / p.dv, c = e % p.dv, hq = h0 + i;
    const float oc = d.o_cmp[(int64_t(b) * p.hq + hq) * p.dv + c];
    const float os = merge(d, row0, ns_sel, G, p.dv, i, c);
    const float ow = merge(d, row0 + d.s_sel, ns_win, G, p.dv, i, c);
    const int64_t go = int64_t(b) * p.gate_st + int64_t(hq) * p.gate_sh;
    const float g0 = ld(p.gates, go), g1 = ld(p.gates, go + p.gate_sc), g2 = ld(p.gates, go + 2 * p.gate_sc);
    st(p.out, int64_t(b) * p.out_st + int64_t(hq) * p.out_sh + c, g0 * oc + g1 * os + g2 * ow);
    if (p.out_cmp.p) st(p.out_cmp, int64_t(b) * p.cmp_st + int64_t(hq) * p.cmp_sh + c, oc);
    if (p.out_sel.p) st(p.out_sel, int64_t(b) * p.sel_st + int64_t(hq) * p.sel_sh + c, os);
    if (p.out_win.p) st(p.out_win, int64_t(b) * p.win_st + int64_t(hq) * p.win_sh + c, ow);
  }
  if (p.sel_idx != nullptr)
    for (int a = threadIdx.x; a < g.select_n; a += kThreads)
      p.sel_idx[int64_t(b) * p.sel_idx_st + int64_t(kvh) * p.sel_idx_sh + a] = sel[a];
}

bool split_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MOEX_NSA_DECODE_SPLIT");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }
bool all_mult8(std::initializer_list<int64_t> v) {
  for (int64_t x : v)
    if (x % 8 != 0) return false;
  return true;
}

template <class K>
cudaError_t set_smem(K kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

}  // namespace

bool decode_split_supported(const Params& p) {
  if (p.rows.seq_lens == nullptr || p.h < 1 || p.hq % p.h != 0 || p.max_len < 1 || !split_enabled()) return false;
  const Layout L(p);
  if (L.sc > 65535 || L.s_sw > 65535 || p.h > 65535) return false;
  return L.split_smem(p) <= kMaxSmem && L.combine_smem(p) <= kMaxSmem;
}

size_t decode_split_scratch_bytes(const Params& p) { return Layout(p).scratch_bytes(p); }

cudaError_t launch_decode_split(const Params& p, void* scratch, cudaStream_t stream) {
  if (p.rows.rows == 0) return cudaSuccess;
  const Layout L(p);
  const size_t bh = size_t(p.rows.rows) * p.h;
  ScratchCarver sc{static_cast<char*>(scratch), 0};
  DecodeScratch d;
  d.max_nc = L.nc_alloc;
  d.sc = L.sc;
  d.s_sel = L.s_sel;
  d.s_sw = L.s_sw;
  const bool dims8 = p.dk % 8 == 0 && p.dv % 8 == 0;
  d.vec_cmp = dims8 && p.cmp.k.bf16 && p.cmp.v.bf16 && aligned16(p.cmp.k.p) && aligned16(p.cmp.v.p) &&
              all_mult8({p.cmp.k_sj, p.cmp.k_sh, p.cmp.k_srow, p.cmp.v_sj, p.cmp.v_sh, p.cmp.v_srow});
  d.vec_raw = dims8 && p.raw.k.bf16 && p.raw.v.bf16 && aligned16(p.raw.k.p) && aligned16(p.raw.v.p) &&
              all_mult8({p.raw.k_st, p.raw.k_sh, p.raw.k_sp, p.raw.v_st, p.raw.v_sh, p.raw.v_sp});
  d.scores = sc.carve<float>(bh * L.g * L.nc_alloc);
  d.cm = sc.carve<float>(bh * L.sc * L.g);
  d.cl = sc.carve<float>(bh * L.sc * L.g);
  d.co = sc.carve<float>(bh * L.sc * L.g * p.dv);
  d.o_cmp = sc.carve<float>(size_t(p.rows.rows) * p.hq * p.dv);
  d.idx = sc.carve<int32_t>(bh * p.g.select_n);
  d.wm = sc.carve<float>(bh * L.s_sw * L.g);
  d.wl = sc.carve<float>(bh * L.s_sw * L.g);
  d.wo = sc.carve<float>(bh * L.s_sw * L.g * p.dv);

  const size_t split_smem = L.split_smem(p), combine_smem = L.combine_smem(p);
  const size_t idx_smem = size_t(p.g.select_n) * 4 + 16;
  cudaError_t e;
  if ((e = set_smem(cmp_split_kernel, split_smem)) != cudaSuccess) return e;
  if ((e = set_smem(cmp_combine_kernel, combine_smem)) != cudaSuccess) return e;
  if ((e = set_smem(sw_split_kernel, split_smem)) != cudaSuccess) return e;
  const dim3 per_head(unsigned(p.rows.rows), unsigned(p.h));
  cmp_split_kernel<<<dim3(per_head.x, per_head.y, unsigned(L.sc)), kThreads, split_smem, stream>>>(p, d);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  cmp_combine_kernel<<<per_head, kThreads, combine_smem, stream>>>(p, d, L.nsel_max);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  sw_split_kernel<<<dim3(per_head.x, per_head.y, unsigned(L.s_sw)), kThreads, split_smem, stream>>>(p, d);
  if ((e = cudaGetLastError()) != cudaSuccess) return e;
  sw_combine_kernel<<<per_head, kThreads, idx_smem, stream>>>(p, d);
  return cudaGetLastError();
}

}  // namespace moex::kernels::nsa
