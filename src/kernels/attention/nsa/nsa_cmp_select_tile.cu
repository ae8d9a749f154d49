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
#include <climits>

#include "kernels/attention/nsa/nsa_tc.cuh"

namespace moex::kernels::nsa {
namespace {

constexpr int kSuper = tc::kWarps * tc::kKeys;  // 64 compressed blocks per super tile
constexpr int kCmpTileTokens = 4;              // query rows per CTA (dk = dv = 64 or 128)

template <int DK, int DV, int TT>
struct CmpTile {
  static constexpr int kThreadsT = kThreads * TT;
  static constexpr int kLdK = DK + 8, kLdV = DV + 4;  // f32 staging row strides
  static constexpr int kLdKb = DK + 8;                // bf16 key row stride (conflict-free pairs)
  static constexpr int kLdVt = kSuper + 8;            // bf16 transposed value row stride
  static constexpr int kStageFloats = kSuper * (kLdK + kLdV);
  static constexpr int kConvHalves = 3 * kSuper * kLdKb + 2 * DV * kLdVt;
  static constexpr int kRingBytes = kStageFloats * 4 + kConvHalves * 2;
  static constexpr int kMergeBytes = TT * tc::merge_floats<DV>() * 4;
  static constexpr int kAreaBytes = ((kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes) + 15) / 16 * 16;
  // Per token: m [16], l [16], pj [nc_max], imp [nsel_max], sel [n].
  static size_t per_token(int nsel_max, int nc_max, int n) { return size_t(32 + nc_max + nsel_max + n) * 4; }
  static size_t smem(int nsel_max, int nc_max, int n) {
    return size_t(kAreaBytes) + TT * per_token(nsel_max, nc_max, n) + 4 * TT * 4 + 16;
  }
};

template <int DK, int DV, int TT>
__global__ void __launch_bounds__(kThreads * TT, 1) cmp_select_tile_kernel(Params p, float* o_cmp, int32_t* idx) {
  using C = CmpTile<DK, DV, TT>;
  constexpr int NT = C::kThreadsT;
  extern __shared__ __align__(16) char smem[];
  float* stage = reinterpret_cast<float*>(smem);                         // K [64][kLdK], V [64][kLdV]
  __nv_bfloat16* khi = reinterpret_cast<__nv_bfloat16*>(stage + C::kStageFloats);  // [64][kLdKb] x 3
  __nv_bfloat16* kmid = khi + kSuper * C::kLdKb;
  __nv_bfloat16* klo = kmid + kSuper * C::kLdKb;
  __nv_bfloat16* vthi = klo + kSuper * C::kLdKb;  // [DV][kLdVt]
  __nv_bfloat16* vtlo = vthi + DV * C::kLdVt;
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
    if (nsup > 0) { issue(0, true); tc::cp_async_commit(); }
    for (int s = 0; s < nsup; ++s) {
      tc::cp_async_wait<0>();
      __syncthreads();  // staging holds s; nobody reads the bf16 terms of s - 1 any more
      convert(true);
      __syncthreads();  // terms of s ready; staging free
      if (s + 1 < nsup) { issue(s + 1, true); tc::cp_async_commit(); }
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
    if (nsup > 0) { issue(0, false); tc::cp_async_commit(); }
    const float m0 = mrow[gr], m1 = mrow[gr + 8], l0 = lrow[gr], l1 = lrow[gr + 8];
    for (int s = 0; s < nsup; ++s) {
      tc::cp_async_wait<0>();
      __syncthreads();
      convert(false);
      __syncthreads();
      if (s + 1 < nsup) { issue(s + 1, false); tc::cp_async_commit(); }
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

template <int DK, int DV, int TT>
cudaError_t launch(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream) {
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1, nc_max = p.max_len / p.g.block_stride + 1;
  const size_t smem = CmpTile<DK, DV, TT>::smem(nsel_max, nc_max, p.g.select_n);
  if (smem > kMaxSmem) return cudaErrorNotSupported;
  cudaError_t e =
      cudaFuncSetAttribute(cmp_select_tile_kernel<DK, DV, TT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const int ctas = (p.rows.rows + TT - 1) / TT;
  cmp_select_tile_kernel<DK, DV, TT><<<dim3(ctas, p.h), kThreads * TT, smem, stream>>>(p, o_cmp, idx);
  return cudaGetLastError();
}

}  // namespace

// cudaErrorNotSupported (nothing launched) when the shape's shared memory does not fit: the
// caller then runs the one-row kernel. tokens: rows per CTA for dk = dv = 128 (2 or 4; a bench
// knob), the other shapes use fixed counts.
cudaError_t launch_cmp_select_tile(const Params& p, float* o_cmp, int32_t* idx, int tokens, cudaStream_t stream) {
  if (p.rows.cu_seqlens == nullptr) return cudaErrorNotSupported;
  if (p.dk == 64 && p.dv == 64) return launch<64, 64, kCmpTileTokens>(p, o_cmp, idx, stream);
  if (p.dk == 128 && p.dv == 128)
    return tokens == 2 ? launch<128, 128, 2>(p, o_cmp, idx, stream)
                       : launch<128, 128, kCmpTileTokens>(p, o_cmp, idx, stream);
  if (p.dk == 192 && p.dv == 128) return launch<192, 128, 2>(p, o_cmp, idx, stream);
  return cudaErrorNotSupported;
}

}  // namespace moex::kernels::nsa
