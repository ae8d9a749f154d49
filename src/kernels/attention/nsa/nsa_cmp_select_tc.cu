// Tensor-core compressed branch and block selection (contract: src/ops/nsa.h, branches 1-2), for
// bf16 q, G <= 16 and head dims (64, 64), (128, 128), (192, 128); the compressed K / V may be
// f32 (mean pooling, f32 caches) or bf16. Same passes as nsa_cmp_select.cu, with the 4 warps
// taking 16-block tiles round-robin:
//   pass 1: S = q k_cmp^T with k_cmp split into three bf16 terms (hi + mid + lo carries all 24
//           bits of an f32), so the scores, and with them the importances that decide the
//           selection, are as exact as f32 dot products; O += P V with P and V split in two
//           (hi + lo), three products; warp_merge -> o_cmp, m, l;
//   pass 2: the same scores, p = exp(s - m) / l, summed over the group's heads per block
//           (butterfly over the 8 row lanes, fixed order) into pj[j]; then importance per
//           selection block in ascending j, and select_blocks.
#include "kernels/attention/nsa/nsa_tc.cuh"

namespace moex::kernels::nsa {
namespace {

template <int DK, int DV>
struct CmpTc {
  static constexpr int kLdK = DK + 8, kLdV = DV + 4;  // f32 row strides (conflict-free fragment reads)
  static constexpr int kTileFloats = tc::kWarps * tc::kKeys * (kLdK + kLdV);
  static constexpr int kRingFloats = kTileFloats > tc::merge_floats<DV>() ? kTileFloats : tc::merge_floats<DV>();
  static size_t smem(int nsel_max, int nc_max, int n) {
    return size_t(kRingFloats) * 4 + 16 * DV * 4 + 32 * 4 + size_t(nsel_max) * 4 + size_t(nc_max) * 4 + size_t(n) * 4 +
           2 * tc::kWarps * 4 + 16;
  }
};

__device__ __forceinline__ void split3(float a, float b, uint32_t& h, uint32_t& m, uint32_t& l) {
  const float ah = __bfloat162float(__float2bfloat16_rn(a)), bh = __bfloat162float(__float2bfloat16_rn(b));
  const float ar = a - ah, br = b - bh;
  const float am = __bfloat162float(__float2bfloat16_rn(ar)), bm = __bfloat162float(__float2bfloat16_rn(br));
  h = tc::pack_bf16x2(ah, bh);
  m = tc::pack_bf16x2(am, bm);
  l = tc::pack_bf16x2(ar - am, br - bm);
}
__device__ __forceinline__ void split2(float a, float b, uint32_t& h, uint32_t& l) {
  const float ah = __bfloat162float(__float2bfloat16_rn(a)), bh = __bfloat162float(__float2bfloat16_rn(b));
  h = tc::pack_bf16x2(ah, bh);
  l = tc::pack_bf16x2(a - ah, b - bh);
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) cmp_select_tc_kernel(Params p, float* o_cmp, int32_t* idx) {
  using C = CmpTc<DK, DV>;
  extern __shared__ __align__(16) char smem[];
  float* ring = reinterpret_cast<float*>(smem);  // per warp: K [16][kLdK], V [16][kLdV]; later the merge area
  float* res = ring + C::kRingFloats;             // [16][DV]
  float* mrow = res + 16 * DV;                    // [16]
  float* lrow = mrow + 16;                        // [16]
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1;
  const int nc_max = p.max_len / p.g.block_stride + 1;
  float* imp = lrow + 16;                         // [nsel_max]
  float* pj = imp + nsel_max;                     // [nc_max]
  int* sel = reinterpret_cast<int*>(pj + nc_max);  // [n]
  float* red_v = reinterpret_cast<float*>(sel + p.g.select_n);
  int* red_i = reinterpret_cast<int*>(red_v + tc::kWarps);

  const int row = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  const Geometry& g = p.g;
  const RowPos rp = row_pos(p.rows, row);
  const int t = rp.pos;
  const int nc = num_cmp_visible(g, t);
  const int nsel = t / g.select_len + 1;
  const int ntiles = (nc + tc::kKeys - 1) / tc::kKeys;
  int64_t kb, vb;
  cmp_base(p.cmp, rp.seq, kvh, kb, vb);
  uint32_t qa[DK / 16][4];
  tc::load_q_frag<DK>(qa, static_cast<const __nv_bfloat16*>(p.q.p), int64_t(row) * p.q_st, p.q_sh, h0, G);
  float* ks = ring + warp * tc::kKeys * (C::kLdK + C::kLdV);  // [16][kLdK]
  float* vs = ks + tc::kKeys * C::kLdK;                        // [16][kLdV]

  // f32 compressed rows (mean pooling, f32 caches) that are 16-byte aligned load as float4.
  auto vec4 = [](const FloatRef& r, int64_t base, int64_t sj) {
    return !r.bf16 && (reinterpret_cast<uintptr_t>(static_cast<const float*>(r.p) + base) % 16 == 0) && sj % 4 == 0;
  };
  const bool k4 = vec4(p.cmp.k, kb, p.cmp.k_sj), v4 = vec4(p.cmp.v, vb, p.cmp.v_sj);
  auto load = [&](int tile, bool with_v) {
    if (k4) {
      const float* kg = static_cast<const float*>(p.cmp.k.p) + kb;
#pragma unroll 4
      for (int e = lane; e < tc::kKeys * DK / 4; e += 32) {
        const int j = e / (DK / 4), c = (e % (DK / 4)) * 4, blk = tile * tc::kKeys + j;
        const float4 x = blk < nc ? *reinterpret_cast<const float4*>(kg + int64_t(blk) * p.cmp.k_sj + c)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
        *reinterpret_cast<float4*>(ks + j * C::kLdK + c) = x;
      }
    } else {
      for (int e = lane; e < tc::kKeys * DK; e += 32) {
        const int j = e / DK, c = e % DK, blk = tile * tc::kKeys + j;
        ks[j * C::kLdK + c] = blk < nc ? ld(p.cmp.k, kb + int64_t(blk) * p.cmp.k_sj + c) : 0.f;
      }
    }
    if (with_v && v4) {
      const float* vg = static_cast<const float*>(p.cmp.v.p) + vb;
#pragma unroll 4
      for (int e = lane; e < tc::kKeys * DV / 4; e += 32) {
        const int j = e / (DV / 4), c = (e % (DV / 4)) * 4, blk = tile * tc::kKeys + j;
        const float4 x = blk < nc ? *reinterpret_cast<const float4*>(vg + int64_t(blk) * p.cmp.v_sj + c)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
        *reinterpret_cast<float4*>(vs + j * C::kLdV + c) = x;
      }
    } else if (with_v) {
      for (int e = lane; e < tc::kKeys * DV; e += 32) {
        const int j = e / DV, c = e % DV, blk = tile * tc::kKeys + j;
        vs[j * C::kLdV + c] = blk < nc ? ld(p.cmp.v, vb + int64_t(blk) * p.cmp.v_sj + c) : 0.f;
      }
    }
    __syncwarp();
  };
  // Scaled scores of the tile in natural units, -inf past nc.
  auto scores = [&](int tile, float (&x)[2][4]) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) x[nt][0] = x[nt][1] = x[nt][2] = x[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float* kr = ks + (nt * 8 + gr) * C::kLdK + kk * 16 + 2 * gc;
        const float2 x0 = *reinterpret_cast<const float2*>(kr);
        const float2 x1 = *reinterpret_cast<const float2*>(kr + 8);
        uint32_t h0_, m0_, l0_, h1_, m1_, l1_;
        split3(x0.x, x0.y, h0_, m0_, l0_);
        split3(x1.x, x1.y, h1_, m1_, l1_);
        tc::mma_bf16_16816(x[nt], qa[kk], h0_, h1_);
        tc::mma_bf16_16816(x[nt], qa[kk], m0_, m1_);
        tc::mma_bf16_16816(x[nt], qa[kk], l0_, l1_);
      }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int blk = tile * tc::kKeys + nt * 8 + 2 * gc + (e & 1);
        x[nt][e] = blk < nc ? g.scale * x[nt][e] : -INFINITY;
      }
  };

  // Pass 1: o_cmp, m, l.
  tc::WarpState<DV> st;
  st.reset();
  for (int tile = warp; tile < ntiles; tile += tc::kWarps) {
    load(tile, true);
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
      const float* vc = vs + dn * 8 + gr;
      uint32_t b0h, b0l, b1h, b1l;
      split2(vc[(2 * gc) * C::kLdV], vc[(2 * gc + 1) * C::kLdV], b0h, b0l);
      split2(vc[(2 * gc + 8) * C::kLdV], vc[(2 * gc + 9) * C::kLdV], b1h, b1l);
      tc::mma_bf16_16816(st.o[dn], ph, b0h, b1h);
      tc::mma_bf16_16816(st.o[dn], pl, b0h, b1h);
      tc::mma_bf16_16816(st.o[dn], ph, b0l, b1l);
    }
    __syncwarp();  // the next load overwrites the tile
  }
  tc::warp_merge<DV, false>(st, ring, res, mrow, lrow);
  for (int e = threadIdx.x; e < G * DV; e += kThreads) {
    const int i = e / DV, c = e % DV;
    o_cmp[(int64_t(row) * p.hq + h0 + i) * DV + c] = nc > 0 ? res[e] : 0.f;
  }

  // Pass 2: pj[j] = sum over the group's heads of p_cmp[h, j].
  for (int tile = warp; tile < ntiles; tile += tc::kWarps) {
    load(tile, false);
    float x[2][4];
    scores(tile, x);
    const float m0 = mrow[gr], m1 = mrow[gr + 8], l0 = lrow[gr], l1 = lrow[gr + 8];
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
    __syncwarp();
  }
  __syncthreads();
  // Importance of selection block b: its overlapping compressed blocks in ascending j.
  for (int b = threadIdx.x; b < nsel; b += kThreads) {
    const int lo_tok = b * g.select_len - g.block_len;  // j * d > lo_tok
    const int jlo = lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1;
    const int jhi = min(nc - 1, ((b + 1) * g.select_len - 1) / g.block_stride);
    float acc = 0.f;
    for (int j = jlo; j <= jhi; ++j) acc += pj[j];
    imp[b] = acc;
  }
  select_blocks(imp, nsel, g, sel, red_v, red_i, idx + (int64_t(row) * p.h + kvh) * g.select_n);
}

template <int DK, int DV>
cudaError_t launch(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream) {
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1, nc_max = p.max_len / p.g.block_stride + 1;
  const size_t smem = CmpTc<DK, DV>::smem(nsel_max, nc_max, p.g.select_n);
  cudaError_t e = cudaFuncSetAttribute(cmp_select_tc_kernel<DK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  cmp_select_tc_kernel<DK, DV><<<dim3(p.rows.rows, p.h), kThreads, smem, stream>>>(p, o_cmp, idx);
  return cudaGetLastError();
}

}  // namespace

size_t cmp_select_tc_smem(const Params& p) {
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1, nc_max = p.max_len / p.g.block_stride + 1;
  const int n = p.g.select_n;
  if (p.dk == 64 && p.dv == 64) return CmpTc<64, 64>::smem(nsel_max, nc_max, n);
  if (p.dk == 128 && p.dv == 128) return CmpTc<128, 128>::smem(nsel_max, nc_max, n);
  return CmpTc<192, 128>::smem(nsel_max, nc_max, n);
}

cudaError_t launch_cmp_select_tc(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream) {
  if (p.dk == 64 && p.dv == 64) return launch<64, 64>(p, o_cmp, idx, stream);
  if (p.dk == 128 && p.dv == 128) return launch<128, 128>(p, o_cmp, idx, stream);
  if (p.dk == 192 && p.dv == 128) return launch<192, 128>(p, o_cmp, idx, stream);
  return cudaErrorInvalidValue;
}

}  // namespace moex::kernels::nsa
