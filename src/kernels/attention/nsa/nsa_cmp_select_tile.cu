// Token-tiled tensor-core compressed branch and block selection for the forward op (contract:
// src/ops/nsa.h, branches 1-2). Same arithmetic as nsa_cmp_select_tc.cu, row for row and bit for
// bit, but one CTA serves TT consecutive query rows of one KV head, so each compressed K / V tile
// is read from L2 and split into bf16 terms once per TT rows instead of once per row:
//   - warp = (token ti, role w): role w takes the 16-block tiles w, w + 4, ... of its token,
//     exactly as warp w of the one-row kernel does, and the 4 roles merge in warp order;
//   - a super tile (4 roles x 16 blocks) is copied f32 into a staging buffer with cp.async,
//     then split once by the whole CTA into bf16 hi / mid / lo keys and hi / lo values
//     (transposed) - the same split3 / split2 of the one-row kernel, so the mma operands and
//     thus every score, o_cmp, importance and choice are bitwise those of the one-row kernel;
//   - the next super tile is copied while the current one is multiplied;
//   - rows of several sequences in one CTA are served one sequence after the other.
// The choice (forced blocks, then arg-max with ties to the lower index) runs on one warp per
// token; it reads the same importances, so it picks the same blocks as select_blocks.
//
// Pre-split (kPre, the default for dims 64/64 and 128/128; MOEX_NSA_PRESPLIT=0 turns it off):
// split_cmp_kernel writes the bf16 terms once per compressed row, in the layout of the CTA's term
// buffers, and the tiled kernel copies them into a double buffer with cp.async: no staging, no
// convert, one barrier per super tile, the next super tile's terms landing during this one's
// mma. The terms come from the same split of the same f32 values, so the bits do not change.
#include <climits>
#include <cstdlib>
#include <cstring>

#include "kernels/attention/nsa/nsa_tc.cuh"

namespace moex::kernels::nsa {
namespace {

constexpr int kSuper = tc::kWarps * tc::kKeys;  // 64 compressed blocks per super tile
constexpr int kCmpTileTokens = 4;              // query rows per CTA (dk = dv = 64 or 128)

// Pre-split terms of one call, per KV head and padded compressed row R:
//   k [3][H][rows][DK] (hi, mid, lo), vt [2][H][rows / 64][DV][64] (hi, lo, transposed per super
//   tile; zero past a sequence's last block).
// Sequence i's rows start at pad_base(i) = 64 (P_i / 64 + i) with P_i = cu_seqlens[i] / d: 64-aligned,
// and far enough apart (nc_i <= L_i / d <= P_i+1 - P_i) that its ceil(nc_i / 64) super tiles never
// reach the next sequence's. Only cu_seqlens and the geometry are used, as for the rows themselves.
struct Presplit {
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* vt = nullptr;
  int64_t rows = 0;  // padded rows per KV head, a multiple of 64
};
__device__ __forceinline__ int64_t pad_base(const Params& p, int seq) {
  return int64_t(kSuper) * (p.rows.cu_seqlens[seq] / p.g.block_stride / kSuper + seq);
}
int64_t presplit_rows(const Params& p) {
  const int64_t tc_bound = int64_t(p.rows.rows) / p.g.block_stride;  // nc(L) <= L / d (l >= d)
  return int64_t(kSuper) * (tc_bound / kSuper + p.rows.num_seqs + 1);
}

// grid (rows / 64, H): super tile u of the padded rows (a sequence's tile s, or a gap: nothing),
// split as the tiled kernel's convert does (split3 keys, split2 values transposed).
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) split_cmp_kernel(Params p, Presplit ps) {
  const int u = blockIdx.x, kvh = blockIdx.y;
  const int B = p.rows.num_seqs;
  int lo = 0, hi = B - 1;  // the last sequence whose first super tile is <= u
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (pad_base(p, mid) / kSuper <= u) lo = mid; else hi = mid - 1;
  }
  const int seq = lo;
  const int s = u - int(pad_base(p, seq) / kSuper);
  const int len = p.rows.cu_seqlens[seq + 1] - p.rows.cu_seqlens[seq];
  const int nc_seq = len > 0 ? num_cmp_visible(p.g, len - 1) : 0;
  if (s < 0 || s * kSuper >= nc_seq) return;  // a gap between sequences: never read
  int64_t kb, vb;
  cmp_base(p.cmp, seq, kvh, kb, vb);
  const int64_t r0 = pad_base(p, seq) + int64_t(s) * kSuper;
  const int H = p.h;
  __nv_bfloat16* khi = ps.k + (int64_t(0 * H + kvh) * ps.rows + r0) * DK;
  __nv_bfloat16* kmid = ps.k + (int64_t(1 * H + kvh) * ps.rows + r0) * DK;
  __nv_bfloat16* klo = ps.k + (int64_t(2 * H + kvh) * ps.rows + r0) * DK;
  for (int e = threadIdx.x; e < kSuper * DK / 2; e += kThreads) {
    const int j = e / (DK / 2), c = (e % (DK / 2)) * 2, blk = s * kSuper + j;
    const bool ok = blk < nc_seq;
    const float x0 = ok ? ld(p.cmp.k, kb + int64_t(blk) * p.cmp.k_sj + c) : 0.f;
    const float x1 = ok ? ld(p.cmp.k, kb + int64_t(blk) * p.cmp.k_sj + c + 1) : 0.f;
    const float ah = __bfloat162float(__float2bfloat16_rn(x0)), bh = __bfloat162float(__float2bfloat16_rn(x1));
    const float ar = x0 - ah, br = x1 - bh;
    const float am = __bfloat162float(__float2bfloat16_rn(ar)), bm = __bfloat162float(__float2bfloat16_rn(br));
    *reinterpret_cast<uint32_t*>(khi + j * DK + c) = tc::pack_bf16x2(ah, bh);
    *reinterpret_cast<uint32_t*>(kmid + j * DK + c) = tc::pack_bf16x2(am, bm);
    *reinterpret_cast<uint32_t*>(klo + j * DK + c) = tc::pack_bf16x2(ar - am, br - bm);
  }
  const int64_t vt_tile = (int64_t(kvh) * (ps.rows / kSuper) + r0 / kSuper) * DV * kSuper;
  __nv_bfloat16* vthi = ps.vt + vt_tile;
  __nv_bfloat16* vtlo = ps.vt + int64_t(H) * ps.rows * DV + vt_tile;
  for (int e = threadIdx.x; e < DV * kSuper / 2; e += kThreads) {
    const int c = e % DV, j = (e / DV) * 2, blk = s * kSuper + j;
    const float a0 = blk < nc_seq ? ld(p.cmp.v, vb + int64_t(blk) * p.cmp.v_sj + c) : 0.f;
    const float b0 = blk + 1 < nc_seq ? ld(p.cmp.v, vb + int64_t(blk + 1) * p.cmp.v_sj + c) : 0.f;
    const float ah = __bfloat162float(__float2bfloat16_rn(a0)), bh = __bfloat162float(__float2bfloat16_rn(b0));
    *reinterpret_cast<uint32_t*>(vthi + c * kSuper + j) = tc::pack_bf16x2(ah, bh);
    *reinterpret_cast<uint32_t*>(vtlo + c * kSuper + j) = tc::pack_bf16x2(a0 - ah, b0 - bh);
  }
}

template <int DK, int DV, int TT, bool kPre = false>
struct CmpTile {
  static constexpr int kThreadsT = kThreads * TT;
  static constexpr int kLdK = DK + 8, kLdV = DV + 4;  // f32 staging row strides
  static constexpr int kLdKb = DK + 8;                // bf16 key row stride (conflict-free pairs)
  static constexpr int kLdVt = kSuper + 8;            // bf16 transposed value row stride
  static constexpr int kStageFloats = kSuper * (kLdK + kLdV);
  static constexpr int kConvHalves = 3 * kSuper * kLdKb + 2 * DV * kLdVt;
  // kPre: two buffers of bf16 terms, no staging.
  static constexpr int kRingBytes = kPre ? 2 * kConvHalves * 2 : kStageFloats * 4 + kConvHalves * 2;
  static constexpr int kMergeBytes = TT * tc::merge_floats<DV>() * 4;
  static constexpr int kAreaBytes = ((kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes) + 15) / 16 * 16;
  // Per token: m [16], l [16], pj [nc_max], imp [nsel_max], sel [n].
  static size_t per_token(int nsel_max, int nc_max, int n) { return size_t(32 + nc_max + nsel_max + n) * 4; }
  static size_t smem(int nsel_max, int nc_max, int n) {
    return size_t(kAreaBytes) + TT * per_token(nsel_max, nc_max, n) + 4 * TT * 4 + 16;
  }
};

template <int DK, int DV, int TT, bool kPre>
__global__ void __launch_bounds__(kThreads * TT, 1) cmp_select_tile_kernel(Params p, float* o_cmp, int32_t* idx,
                                                                          Presplit ps) {
  using C = CmpTile<DK, DV, TT, kPre>;
  constexpr int NT = C::kThreadsT;
  extern __shared__ __align__(16) char smem[];
  float* stage = reinterpret_cast<float*>(smem);                         // K [64][kLdK], V [64][kLdV]
  // Term buffers: after the staging buffer, or (kPre) buffer 0 of two at the start.
  __nv_bfloat16* const conv0 = reinterpret_cast<__nv_bfloat16*>(kPre ? reinterpret_cast<float*>(smem) : stage + C::kStageFloats);
  __nv_bfloat16* khi = conv0;  // [64][kLdKb] x 3
  __nv_bfloat16* kmid = khi + kSuper * C::kLdKb;
  __nv_bfloat16* klo = kmid + kSuper * C::kLdKb;
  __nv_bfloat16* vthi = klo + kSuper * C::kLdKb;  // [DV][kLdVt]
  __nv_bfloat16* vtlo = vthi + DV * C::kLdVt;
  // kPre: point the term pointers at buffer `buf`.
  auto use_buf = [&](int buf) {
    khi = conv0 + buf * C::kConvHalves;
    kmid = khi + kSuper * C::kLdKb;
    klo = kmid + kSuper * C::kLdKb;
    vthi = klo + kSuper * C::kLdKb;
    vtlo = vthi + DV * C::kLdVt;
  };
  float* merge = reinterpret_cast<float*>(smem);  // aliases the ring once a pass is over
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1;
  const int nc_max = p.max_len / p.g.block_stride + 1;
  const int n = p.g.select_n;
  const int per_tok = 32 + nc_max + nsel_max + n;
  float* tok_base = reinterpret_cast<float*>(smem + C::kAreaBytes);
  int* tok_seq = reinterpret_cast<int*>(tok_base + TT * per_tok);  // [TT], -1: no row
  int* tok_nc = tok_seq + TT;
  int* tok_pos = tok_nc + TT;

  const Geometry& g = p.g;
  const int G = p.hq / p.h, kvh = blockIdx.y, h0 = kvh * G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  const int ti = warp / tc::kWarps, role = warp % tc::kWarps;
  const int lt = threadIdx.x % kThreads;  // thread index inside the token's 4 warps
  const int row0 = blockIdx.x * TT, row = row0 + ti;
  float* mrow = tok_base + ti * per_tok;  // [16]
  float* lrow = mrow + 16;                // [16]
  float* pj = lrow + 16;                  // [nc_max]
  float* imp = pj + nc_max;               // [nsel_max]
  int* sel = reinterpret_cast<int*>(imp + nsel_max);  // [n]

  if (threadIdx.x < TT) {
    const int r = row0 + threadIdx.x;
    if (r < p.rows.rows) {
      const RowPos rp = row_pos(p.rows, r);
      tok_seq[threadIdx.x] = rp.seq;
      tok_pos[threadIdx.x] = rp.pos;
      tok_nc[threadIdx.x] = num_cmp_visible(g, rp.pos);
    } else {
      tok_seq[threadIdx.x] = -1;
      tok_pos[threadIdx.x] = 0;
      tok_nc[threadIdx.x] = 0;
    }
  }
  __syncthreads();
  const bool valid = tok_seq[ti] >= 0;
  const int t = tok_pos[ti], nc = tok_nc[ti];
  const int nsel = t / g.select_len + 1;
  const int ntiles = (nc + tc::kKeys - 1) / tc::kKeys;
  uint32_t qa[DK / 16][4];
  if (valid) tc::load_q_frag<DK>(qa, static_cast<const __nv_bfloat16*>(p.q.p), int64_t(row) * p.q_st, p.q_sh, h0, G);

  // Rows [a, b) of the CTA share sequence tok_seq[a]: one segment.
  for (int a = 0; a < TT && tok_seq[a] >= 0;) {
    const int seq = tok_seq[a];
    int b = a + 1;
    while (b < TT && tok_seq[b] == seq) ++b;
    const bool active = ti >= a && ti < b;
    const int nc_seg = tok_nc[b - 1];  // positions ascend inside a sequence
    const int nsup = (nc_seg + kSuper - 1) / kSuper;
    int64_t kb, vb;
    cmp_base(p.cmp, seq, kvh, kb, vb);
    const bool k4 = !p.cmp.k.bf16 && reinterpret_cast<uintptr_t>(static_cast<const float*>(p.cmp.k.p) + kb) % 16 == 0 &&
                    p.cmp.k_sj % 4 == 0;
    const bool v4 = !p.cmp.v.bf16 && reinterpret_cast<uintptr_t>(static_cast<const float*>(p.cmp.v.p) + vb) % 16 == 0 &&
                    p.cmp.v_sj % 4 == 0;
    // Super tile s, f32, into the staging buffer (blocks past nc_seg zero-filled).
    auto issue = [&](int s, bool with_v) {
      float* ks = stage;
      float* vs = stage + kSuper * C::kLdK;
      if (k4) {
        const float* kg = static_cast<const float*>(p.cmp.k.p) + kb;
        for (int e = threadIdx.x; e < kSuper * DK / 4; e += NT) {
          const int j = e / (DK / 4), c = (e % (DK / 4)) * 4, blk = s * kSuper + j;
          const bool ok = blk < nc_seg;
          tc::cp_async_16(ks + j * C::kLdK + c, kg + (ok ? int64_t(blk) * p.cmp.k_sj + c : 0), ok);
        }
      } else {
        for (int e = threadIdx.x; e < kSuper * DK; e += NT) {
          const int j = e / DK, c = e % DK, blk = s * kSuper + j;
          ks[j * C::kLdK + c] = blk < nc_seg ? ld(p.cmp.k, kb + int64_t(blk) * p.cmp.k_sj + c) : 0.f;
        }
      }
      if (!with_v) return;
      if (v4) {
        const float* vg = static_cast<const float*>(p.cmp.v.p) + vb;
        for (int e = threadIdx.x; e < kSuper * DV / 4; e += NT) {
          const int j = e / (DV / 4), c = (e % (DV / 4)) * 4, blk = s * kSuper + j;
          const bool ok = blk < nc_seg;
          tc::cp_async_16(vs + j * C::kLdV + c, vg + (ok ? int64_t(blk) * p.cmp.v_sj + c : 0), ok);
        }
      } else {
        for (int e = threadIdx.x; e < kSuper * DV; e += NT) {
          const int j = e / DV, c = e % DV, blk = s * kSuper + j;
          vs[j * C::kLdV + c] = blk < nc_seg ? ld(p.cmp.v, vb + int64_t(blk) * p.cmp.v_sj + c) : 0.f;
        }
      }
    };
    // Staging -> bf16 terms: keys hi / mid / lo (split3), values hi / lo transposed (split2).
    auto convert = [&](bool with_v) {
      const float* ks = stage;
      for (int e = threadIdx.x; e < kSuper * DK / 2; e += NT) {
        const int j = e / (DK / 2), c = (e % (DK / 2)) * 2;
        const float2 x = *reinterpret_cast<const float2*>(ks + j * C::kLdK + c);
        const float ah = __bfloat162float(__float2bfloat16_rn(x.x)), bh = __bfloat162float(__float2bfloat16_rn(x.y));
        const float ar = x.x - ah, br = x.y - bh;
        const float am = __bfloat162float(__float2bfloat16_rn(ar)), bm = __bfloat162float(__float2bfloat16_rn(br));
        *reinterpret_cast<uint32_t*>(khi + j * C::kLdKb + c) = tc::pack_bf16x2(ah, bh);
        *reinterpret_cast<uint32_t*>(kmid + j * C::kLdKb + c) = tc::pack_bf16x2(am, bm);
        *reinterpret_cast<uint32_t*>(klo + j * C::kLdKb + c) = tc::pack_bf16x2(ar - am, br - bm);
      }
      if (!with_v) return;
      const float* vs = stage + kSuper * C::kLdK;
      for (int e = threadIdx.x; e < DV * kSuper / 2; e += NT) {
        const int c = e % DV, j = (e / DV) * 2;  // lanes along the feature: conflict-free reads
        const float a0 = vs[j * C::kLdV + c], b0 = vs[(j + 1) * C::kLdV + c];
        const float ah = __bfloat162float(__float2bfloat16_rn(a0)), bh = __bfloat162float(__float2bfloat16_rn(b0));
        *reinterpret_cast<uint32_t*>(vthi + c * C::kLdVt + j) = tc::pack_bf16x2(ah, bh);
        *reinterpret_cast<uint32_t*>(vtlo + c * C::kLdVt + j) = tc::pack_bf16x2(a0 - ah, b0 - bh);
      }
    };
    // kPre: super tile s's terms into buffer buf (key rows past nc_seg zero-filled; the value
    // chunks hold zeros past the sequence's last block, real values of blocks nobody sees here).
    const int64_t pb = kPre ? pad_base(p, seq) : 0;
    auto issue_pre = [&](int s, int buf, bool with_v) {
      __nv_bfloat16* dk0 = conv0 + buf * C::kConvHalves;
      for (int e = threadIdx.x; e < 3 * kSuper * DK / 8; e += NT) {
        const int term = e / (kSuper * DK / 8), rem = e % (kSuper * DK / 8);
        const int j = rem / (DK / 8), ch = (rem % (DK / 8)) * 8, blk = s * kSuper + j;
        const bool ok = blk < nc_seg;
        const __nv_bfloat16* src = ps.k + (int64_t(term * p.h + kvh) * ps.rows + pb + (ok ? blk : 0)) * DK + ch;
        tc::cp_async_16(dk0 + (term * kSuper + j) * C::kLdKb + ch, src, ok);
      }
      if (!with_v) return;
      __nv_bfloat16* dv0 = dk0 + 3 * kSuper * C::kLdKb;
      const int64_t vt_tile = (int64_t(kvh) * (ps.rows / kSuper) + pb / kSuper + s) * DV * kSuper;
      for (int e = threadIdx.x; e < 2 * DV * kSuper / 8; e += NT) {
        const int term = e / (DV * kSuper / 8), rem = e % (DV * kSuper / 8);
        const int c = rem / (kSuper / 8), ch = (rem % (kSuper / 8)) * 8;
        const bool ok = s * kSuper + ch < nc_seg;
        const __nv_bfloat16* src = ps.vt + int64_t(term) * p.h * ps.rows * DV + vt_tile + (ok ? c * kSuper + ch : 0);
        tc::cp_async_16(dv0 + (term * DV + c) * C::kLdVt + ch, src, ok);
      }
    };
    // The role's 16 blocks of super tile s: tile index s * 4 + role, keys at rows role * 16 + ...
    auto scores = [&](int tile, float (&x)[2][4]) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) x[nt][0] = x[nt][1] = x[nt][2] = x[nt][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int off = (role * tc::kKeys + nt * 8 + gr) * C::kLdKb + kk * 16 + 2 * gc;
          tc::mma_bf16_16816(x[nt], qa[kk], *reinterpret_cast<const uint32_t*>(khi + off),
                  *reinterpret_cast<const uint32_t*>(khi + off + 8));
          tc::mma_bf16_16816(x[nt], qa[kk], *reinterpret_cast<const uint32_t*>(kmid + off),
                  *reinterpret_cast<const uint32_t*>(kmid + off + 8));
          tc::mma_bf16_16816(x[nt], qa[kk], *reinterpret_cast<const uint32_t*>(klo + off),
                  *reinterpret_cast<const uint32_t*>(klo + off + 8));
        }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int blk = tile * tc::kKeys + nt * 8 + 2 * gc + (e & 1);
          x[nt][e] = blk < nc ? g.scale * x[nt][e] : -INFINITY;
        }
    };
    auto split2 = [](float a0, float b0, uint32_t& h, uint32_t& l) {
      const float ah = __bfloat162float(__float2bfloat16_rn(a0)), bh = __bfloat162float(__float2bfloat16_rn(b0));
      h = tc::pack_bf16x2(ah, bh);
      l = tc::pack_bf16x2(a0 - ah, b0 - bh);
    };

    // Pass 1: o_cmp, m, l.
    tc::WarpState<DV> st;
    st.reset();
    if (nsup > 0) {
      if (kPre) issue_pre(0, 0, true); else issue(0, true);
      tc::cp_async_commit();
    }
    for (int s = 0; s < nsup; ++s) {
      tc::cp_async_wait<0>();
      __syncthreads();  // staging (kPre: buffer s % 2) holds s; nobody reads the terms of s - 1 any more
      if (kPre) {
        use_buf(s & 1);
        if (s + 1 < nsup) { issue_pre(s + 1, (s + 1) & 1, true); tc::cp_async_commit(); }
      } else {
        convert(true);
        __syncthreads();  // terms of s ready; staging free
        if (s + 1 < nsup) { issue(s + 1, true); tc::cp_async_commit(); }
      }
      const int tile = s * tc::kWarps + role;
      if (active && tile < ntiles) {
        float x[2][4];
        scores(tile, x);
        st.template softmax<false>(x);
        uint32_t ph[4], pl[4];
        split2(x[0][0], x[0][1], ph[0], pl[0]);
        split2(x[0][2], x[0][3], ph[1], pl[1]);
        split2(x[1][0], x[1][1], ph[2], pl[2]);
        split2(x[1][2], x[1][3], ph[3], pl[3]);
#pragma unroll
        for (int dn = 0; dn < DV / 8; ++dn) {
          const int off = (dn * 8 + gr) * C::kLdVt + role * tc::kKeys + 2 * gc;
          const uint32_t b0h = *reinterpret_cast<const uint32_t*>(vthi + off);
          const uint32_t b1h = *reinterpret_cast<const uint32_t*>(vthi + off + 8);
          const uint32_t b0l = *reinterpret_cast<const uint32_t*>(vtlo + off);
          const uint32_t b1l = *reinterpret_cast<const uint32_t*>(vtlo + off + 8);
          tc::mma_bf16_16816(st.o[dn], ph, b0h, b1h);
          tc::mma_bf16_16816(st.o[dn], pl, b0h, b1h);
          tc::mma_bf16_16816(st.o[dn], ph, b0l, b1l);
        }
      }
    }
    // Merge of the token's 4 roles in role order (the arithmetic of tc::warp_merge).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 1);
      st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 2);
    }
    __syncthreads();  // the ring is retired
    float* buf = merge + ti * tc::merge_floats<DV>();
    if (active) {
      float* mo = buf + role * 16 * DV;                  // [16][DV]
      float* ml = buf + tc::kWarps * 16 * DV + role * 32;  // [m 16][l 16]
#pragma unroll
      for (int nn = 0; nn < DV / 8; ++nn) {
        const int c = nn * 8 + 2 * gc;
        mo[gr * DV + c] = st.o[nn][0];
        mo[gr * DV + c + 1] = st.o[nn][1];
        mo[(gr + 8) * DV + c] = st.o[nn][2];
        mo[(gr + 8) * DV + c + 1] = st.o[nn][3];
      }
      if (gc == 0) {
        ml[gr] = st.m[0]; ml[gr + 8] = st.m[1];
        ml[16 + gr] = st.l[0]; ml[16 + gr + 8] = st.l[1];
      }
    }
    __syncthreads();
    if (active) {
      const float* mls = buf + tc::kWarps * 16 * DV;
      for (int e = lt; e < 16 * DV; e += kThreads) {
        const int r = e / DV;
        float M = -INFINITY;
        for (int w = 0; w < tc::kWarps; ++w) M = fmaxf(M, mls[w * 32 + r]);
        float L = 0.f, O = 0.f;
        if (M != -INFINITY)
          for (int w = 0; w < tc::kWarps; ++w) {
            const float mw = mls[w * 32 + r];
            if (mw == -INFINITY) continue;
            const float f = expf(mw - M);
            L += mls[w * 32 + 16 + r] * f;
            O += buf[w * 16 * DV + e] * f;
          }
        if (r < G) o_cmp[(int64_t(row) * p.hq + h0 + r) * DV + e % DV] = nc > 0 && L > 0.f ? O / L : 0.f;
        if (e % DV == 0) { mrow[r] = M; lrow[r] = L; }
      }
    }
    __syncthreads();  // merge area retired; m / l visible

    // Pass 2: pj[j] = sum over the group's heads of p_cmp[h, j].
    if (nsup > 0) {
      if (kPre) issue_pre(0, 0, false); else issue(0, false);
      tc::cp_async_commit();
    }
    const float m0 = mrow[gr], m1 = mrow[gr + 8], l0 = lrow[gr], l1 = lrow[gr + 8];
    for (int s = 0; s < nsup; ++s) {
      tc::cp_async_wait<0>();
      __syncthreads();
      if (kPre) {
        use_buf(s & 1);
        if (s + 1 < nsup) { issue_pre(s + 1, (s + 1) & 1, false); tc::cp_async_commit(); }
      } else {
        convert(false);
        __syncthreads();
        if (s + 1 < nsup) { issue(s + 1, false); tc::cp_async_commit(); }
      }
      const int tile = s * tc::kWarps + role;
      if (active && tile < ntiles) {
        float x[2][4];
        scores(tile, x);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p0 = gr < G && x[nt][e] != -INFINITY ? expf(x[nt][e] - m0) / l0 : 0.f;
            const float p1 = gr + 8 < G && x[nt][2 + e] != -INFINITY ? expf(x[nt][2 + e] - m1) / l1 : 0.f;
            float cs = p0 + p1;
            cs += __shfl_xor_sync(0xffffffffu, cs, 4);
            cs += __shfl_xor_sync(0xffffffffu, cs, 8);
            cs += __shfl_xor_sync(0xffffffffu, cs, 16);
            const int blk = tile * tc::kKeys + nt * 8 + 2 * gc + e;
            if (gr == 0 && blk < nc) pj[blk] = cs;
          }
      }
    }
    __syncthreads();
    if (active) {
      // Importance of selection block b: its overlapping compressed blocks in ascending j.
      for (int bb = lt; bb < nsel; bb += kThreads) {
        const int lo_tok = bb * g.select_len - g.block_len;  // j * d > lo_tok
        const int jlo = lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1;
        const int jhi = min(nc - 1, ((bb + 1) * g.select_len - 1) / g.block_stride);
        float acc = 0.f;
        for (int j = jlo; j <= jhi; ++j) acc += pj[j];
        imp[bb] = acc;
      }
    }
    __syncthreads();
    if (active && role == 0) {
      // select_blocks on one warp: forced blocks, then arg-max with ties to the lower index.
      const int nt = nsel - 1;
      const int init_end = min(g.num_init, nsel);
      const int local_beg = max(init_end, nt - g.num_local + 1);
      int count = 0;
      for (int bb = 0; bb < init_end; ++bb) sel[count++] = bb;
      for (int bb = local_beg; bb <= nt; ++bb) sel[count++] = bb;
      __syncwarp();
      for (int c = lane; c < count; c += 32) imp[sel[c]] = -INFINITY;
      __syncwarp();
      const int want = min(n, nsel);
      while (count < want) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int bb = lane; bb < nsel; bb += 32) {
          const float x = imp[bb];
          if (x > bv) { bv = x; bi = bb; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
          const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
          if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (bi == INT_MAX || bv == -INFINITY) break;  // nothing eligible is left
        __syncwarp();
        if (lane == 0) { sel[count] = bi; imp[bi] = -INFINITY; }
        ++count;
        __syncwarp();
      }
      if (lane == 0) {
        for (int x = 1; x < count; ++x) {  // insertion sort: count <= n is small
          const int v = sel[x];
          int y = x - 1;
          while (y >= 0 && sel[y] > v) { sel[y + 1] = sel[y]; --y; }
          sel[y + 1] = v;
        }
        int32_t* dst = idx + (int64_t(row) * p.h + kvh) * n;
        for (int x = 0; x < n; ++x) dst[x] = x < count ? sel[x] : -1;
      }
    }
    __syncthreads();  // the next segment reuses the ring
    a = b;
  }
}

template <int DK, int DV, int TT, bool kPre>
size_t tile_smem(const Params& p) {
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1, nc_max = p.max_len / p.g.block_stride + 1;
  return CmpTile<DK, DV, TT, kPre>::smem(nsel_max, nc_max, p.g.select_n);
}

template <int DK, int DV, int TT>
cudaError_t launch(const Params& p, float* o_cmp, int32_t* idx, void* presplit, cudaStream_t stream) {
  Presplit ps;
  const bool pre = presplit != nullptr && tile_smem<DK, DV, TT, true>(p) <= kMaxSmem;
  const size_t smem = pre ? tile_smem<DK, DV, TT, true>(p) : tile_smem<DK, DV, TT, false>(p);
  if (smem > kMaxSmem) return cudaErrorNotSupported;
  auto kernel = pre ? cmp_select_tile_kernel<DK, DV, TT, true> : cmp_select_tile_kernel<DK, DV, TT, false>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  if (pre) {
    ps.rows = presplit_rows(p);
    ps.k = static_cast<__nv_bfloat16*>(presplit);
    ps.vt = ps.k + size_t(3) * p.h * ps.rows * DK;
    split_cmp_kernel<DK, DV><<<dim3(unsigned(ps.rows / kSuper), p.h), kThreads, 0, stream>>>(p, ps);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  const int ctas = (p.rows.rows + TT - 1) / TT;
  kernel<<<dim3(ctas, p.h), kThreads * TT, smem, stream>>>(p, o_cmp, idx, ps);
  return cudaGetLastError();
}

bool presplit_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MOEX_NSA_PRESPLIT");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

}  // namespace

// cudaErrorNotSupported (nothing launched) when the shape's shared memory does not fit: the
// caller then runs the one-row kernel. tokens: rows per CTA for dk = dv = 128 (2 or 4; a bench
// knob), the other shapes use fixed counts.
cudaError_t launch_cmp_select_tile(const Params& p, float* o_cmp, int32_t* idx, int tokens, void* presplit,
                                   cudaStream_t stream) {
  if (p.rows.cu_seqlens == nullptr) return cudaErrorNotSupported;
  if (p.dk == 64 && p.dv == 64) return launch<64, 64, kCmpTileTokens>(p, o_cmp, idx, presplit, stream);
  if (p.dk == 128 && p.dv == 128)
    return tokens == 2 ? launch<128, 128, 2>(p, o_cmp, idx, presplit, stream)
                       : launch<128, 128, kCmpTileTokens>(p, o_cmp, idx, presplit, stream);
  if (p.dk == 192 && p.dv == 128) return launch<192, 128, 2>(p, o_cmp, idx, nullptr, stream);
  return cudaErrorNotSupported;
}

size_t cmp_tile_presplit_bytes(const Params& p) {
  if (p.rows.cu_seqlens == nullptr || !presplit_enabled() || p.dk != p.dv || (p.dk != 64 && p.dk != 128)) return 0;
  return ScratchCarver::bytes_for<__nv_bfloat16>(size_t(presplit_rows(p)) * p.h * (3 * p.dk + 2 * p.dv));
}

}  // namespace moex::kernels::nsa
