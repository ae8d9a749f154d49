// Block-level pieces of the NSA attention kernels (CUDA cores, f32 shared memory): a CTA of
// kThreads serves the G query heads of one KV head for one query row, over tiles of kTile keys.
// Every sum runs in a fixed order (dot products in feature order, softmax sums by the warp
// butterfly, P V in key order), so a row's bits depend only on its own inputs.
#pragma once
#include <math.h>

#include <climits>

#include "kernels/attention/nsa/nsa_common.cuh"
#include "kernels/common/dtype.cuh"

namespace moex::kernels::nsa {

constexpr int kTile = 32;  // keys per tile: one per lane in the softmax step

// Shared-memory layout of one CTA (floats unless noted); ld* are row strides.
struct BlockSmem {
  int g, dk, dv, ldq, ldk;
  float* q;      // [G][ldq]
  float* k;      // [kTile][ldk]
  float* v;      // [kTile][dv]
  float* p;      // [G][kTile] scores, then probabilities
  float* o;      // [G][dv] running output
  float* m;      // [G] running max
  float* l;      // [G] running sum
  float* alpha;  // [G] rescale of this tile
  int64_t* koff;  // [kTile] element offset of each tile key, -1 = masked
  int64_t* voff;  // [kTile]

  static size_t floats(int g, int dk, int dv) {
    return size_t(g) * (dk + 1) + size_t(kTile) * (dk + 1) + size_t(kTile) * dv + size_t(g) * kTile + size_t(g) * dv +
           3 * size_t(g);
  }
  static size_t bytes(int g, int dk, int dv) { return floats(g, dk, dv) * 4 + 2 * kTile * sizeof(int64_t) + 16; }
  // Carves the layout from `base`; returns the first byte after it (8-byte aligned).
  __device__ char* carve(char* base, int g_, int dk_, int dv_) {
    g = g_; dk = dk_; dv = dv_; ldq = dk_ + 1; ldk = dk_ + 1;
    koff = reinterpret_cast<int64_t*>(base);
    voff = koff + kTile;
    float* f = reinterpret_cast<float*>(voff + kTile);
    q = f; f += size_t(g) * ldq;
    k = f; f += size_t(kTile) * ldk;
    v = f; f += size_t(kTile) * dv;
    p = f; f += size_t(g) * kTile;
    o = f; f += size_t(g) * dv;
    m = f; f += g;
    l = f; f += g;
    alpha = f; f += g;
    return reinterpret_cast<char*>(f) + ((reinterpret_cast<uintptr_t>(f) & 7) ? 4 : 0);
  }
};

// q rows of heads [h0, h0 + G) of one query row; resets the softmax state and the output.
__device__ inline void load_q_reset(BlockSmem& s, const FloatRef& q, int64_t row_off, int64_t q_sh, int h0) {
  for (int e = threadIdx.x; e < s.g * s.dk; e += kThreads) {
    const int i = e / s.dk, c = e % s.dk;
    s.q[i * s.ldq + c] = ld(q, row_off + int64_t(h0 + i) * q_sh + c);
  }
  for (int e = threadIdx.x; e < s.g * s.dv; e += kThreads) s.o[e] = 0.f;
  for (int i = threadIdx.x; i < s.g; i += kThreads) { s.m[i] = -INFINITY; s.l[i] = 0.f; }
}

// K (and V if with_v) rows of the tile from koff / voff (f32 or bf16 source); masked rows are 0.
__device__ inline void load_tile(BlockSmem& s, const FloatRef& k, const FloatRef& v, bool with_v) {
  for (int e = threadIdx.x; e < kTile * s.dk; e += kThreads) {
    const int j = e / s.dk, c = e % s.dk;
    const int64_t o = s.koff[j];
    s.k[j * s.ldk + c] = o >= 0 ? ld(k, o + c) : 0.f;
  }
  if (!with_v) return;
  for (int e = threadIdx.x; e < kTile * s.dv; e += kThreads) {
    const int j = e / s.dv, c = e % s.dv;
    const int64_t o = s.voff[j];
    s.v[j * s.dv + c] = o >= 0 ? ld(v, o + c) : 0.f;
  }
}

// p[i][j] = scale * dot(q_i, k_j) in feature order, -inf for masked keys.
__device__ inline void tile_scores(BlockSmem& s, float scale) {
  for (int e = threadIdx.x; e < s.g * kTile; e += kThreads) {
    const int i = e / kTile, j = e % kTile;
    float r = -INFINITY;
    if (s.koff[j] >= 0) {
      const float* qi = s.q + i * s.ldq;
      const float* kj = s.k + j * s.ldk;
      float acc = 0.f;
      for (int c = 0; c < s.dk; ++c) acc = fmaf(qi[c], kj[c], acc);
      r = scale * acc;
    }
    s.p[e] = r;
  }
}

// Online softmax step: warp w serves heads w, w + 4, ...; lane = key of the tile.
__device__ inline void tile_softmax(BlockSmem& s) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = warp; i < s.g; i += kThreads / 32) {
    const float x = s.p[i * kTile + lane];
    const float m_old = s.m[i];
    const float m_new = fmaxf(m_old, warp_max(x));
    const float a = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
    const float pr = m_new == -INFINITY ? 0.f : expf(x - m_new);
    const float sum = warp_sum(pr);
    s.p[i * kTile + lane] = pr;
    __syncwarp();
    if (lane == 0) {
      s.m[i] = m_new;
      s.l[i] = s.l[i] * a + sum;
      s.alpha[i] = a;
    }
  }
}

// o[i][c] = o[i][c] * alpha[i] + sum_j p[i][j] v[j][c] (key order).
__device__ inline void tile_pv(BlockSmem& s) {
  for (int e = threadIdx.x; e < s.g * s.dv; e += kThreads) {
    const int i = e / s.dv, c = e % s.dv;
    const float* pi = s.p + i * kTile;
    float acc = s.o[e] * s.alpha[i];
    for (int j = 0; j < kTile; ++j) acc = fmaf(pi[j], s.v[j * s.dv + c], acc);
    s.o[e] = acc;
  }
}

// Attention of the CTA's heads over keys k = 0..nkeys-1, key k's offsets given by off(k, ko, vo).
// Leaves the unnormalised output in s.o and the softmax state in s.m / s.l.
template <class Off>
__device__ void attend(BlockSmem& s, const FloatRef& kref, const FloatRef& vref, int nkeys, float scale, Off off) {
  for (int k0 = 0; k0 < nkeys; k0 += kTile) {
    if (threadIdx.x < kTile) {
      const int k = k0 + threadIdx.x;
      int64_t ko = -1, vo = -1;
      if (k < nkeys) off(k, ko, vo);
      s.koff[threadIdx.x] = ko;
      s.voff[threadIdx.x] = vo;
    }
    __syncthreads();
    load_tile(s, kref, vref, true);
    __syncthreads();
    tile_scores(s, scale);
    __syncthreads();
    tile_softmax(s);
    __syncthreads();
    tile_pv(s);
    __syncthreads();
  }
}


// Block choice of query position t (contract branch 2) from imp[0, nsel), nsel = t / l' + 1
// (destroyed: chosen blocks become -inf): forced blocks (num_init + num_local <= n is checked on
// the host), then repeated arg-max over the rest with ties to the lower index. Writes the choice
// ascending and -1 padded to dst[n]. sel [n], red_v / red_i [kThreads / 32] are shared scratch.
__device__ inline void select_blocks(float* imp, int nsel, const Geometry& g, int* sel, float* red_v, int* red_i,
                                     int32_t* dst) {
  const int n = g.select_n, nt = nsel - 1;
  __shared__ int count, stop;
  __syncthreads();
  if (threadIdx.x == 0) {
    int c = 0;
    const int init_end = min(g.num_init, nsel);                // [0, init_end) forced
    const int local_beg = max(init_end, nt - g.num_local + 1);  // [local_beg, nt] forced
    for (int b = 0; b < init_end; ++b) sel[c++] = b;
    for (int b = local_beg; b <= nt; ++b) sel[c++] = b;
    for (int a = 0; a < c; ++a) imp[sel[a]] = -INFINITY;
    count = c;
    stop = 0;
  }
  __syncthreads();
  const int want = min(n, nsel);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  while (count < want && !stop) {
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int b = threadIdx.x; b < nsel; b += kThreads) {
      const float x = imp[b];
      if (x > bv) { bv = x; bi = b; }  // ascending b per thread: ties keep the lower index
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { red_v[warp] = bv; red_i[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
      float v = red_v[0];
      int i = red_i[0];
      for (int w = 1; w < kThreads / 32; ++w)
        if (red_v[w] > v || (red_v[w] == v && red_i[w] < i)) { v = red_v[w]; i = red_i[w]; }
      if (i == INT_MAX || v == -INFINITY) {
        stop = 1;  // nothing eligible is left (cannot happen: nsel >= want blocks exist)
      } else {
        sel[count++] = i;
        imp[i] = -INFINITY;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int c = count;
    for (int a = 1; a < c; ++a) {  // insertion sort: c <= n is small
      const int x = sel[a];
      int b = a - 1;
      while (b >= 0 && sel[b] > x) { sel[b + 1] = sel[b]; --b; }
      sel[b + 1] = x;
    }
    for (int a = 0; a < n; ++a) dst[a] = a < c ? sel[a] : -1;
  }
}
}  // namespace moex::kernels::nsa

namespace moex::kernels::nsa {
// The CUDA-core attention launches (nsa_cmp_select.cu, nsa_sel_win.cu).
cudaError_t launch_cmp_select(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream);
cudaError_t launch_sel_win(const Params& p, const float* o_cmp, const int32_t* idx, cudaStream_t stream);
// Tensor-core variants (nsa_cmp_select_tc.cu, nsa_sel_win_tc.cu) and their shared memory.
cudaError_t launch_cmp_select_tc(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream);
cudaError_t launch_sel_win_tc(const Params& p, const float* o_cmp, const int32_t* idx, cudaStream_t stream);
size_t cmp_select_tc_smem(const Params& p);
// Forward only: several query rows per CTA (nsa_cmp_select_tile.cu); cudaErrorNotSupported when
// the shape does not fit (nothing launched). presplit: cmp_tile_presplit_bytes(p) of scratch for
// the compressed keys' bf16 terms, split once per row (nullptr or 0 bytes: split per super tile).
size_t cmp_tile_presplit_bytes(const Params& p);
cudaError_t launch_cmp_select_tile(const Params& p, float* o_cmp, int32_t* idx, int tokens, void* presplit,
                                   cudaStream_t stream);
}  // namespace moex::kernels::nsa
