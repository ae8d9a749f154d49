// Tensor-core selected + window branches (contract: src/ops/nsa.h, branches 2-3), for bf16
// q / k / v, G <= 16 heads per KV head and head dims (64, 64), (128, 128), (192, 128). One CTA
// per (query row, KV head); its 4 warps take the 16-key tiles of a branch round-robin (tile i to
// warp i % 4), each with a two-stage cp.async ring of K / V rows gathered by position, then
// warp_merge combines them. Same key order and gating as the CUDA-core kernel (nsa_sel_win.cu);
// P is rounded to bf16 for the P V product, as flash attention does.
#include "kernels/attention/nsa/nsa_tc.cuh"

namespace moex::kernels::nsa {
namespace {

template <int DK, int DV>
struct SelWinTc {
  static constexpr int kLdK = DK + 8, kLdV = DV + 8;             // bf16 row strides (conflict-free ldmatrix)
  static constexpr int kStage = tc::kKeys * (kLdK + kLdV);        // bf16 per stage
  static constexpr int kTileBytes = tc::kWarps * 2 * kStage * 2;  // all warps, 2 stages
  static constexpr int kMergeBytes = (tc::merge_floats<DV>() + 16 * DV) * 4;  // merge area + o_win
  static constexpr int kRingBytes = kTileBytes > kMergeBytes ? kTileBytes : kMergeBytes;
  static size_t smem(int n) { return size_t(kRingBytes) + 16 * DV * 4 + size_t(n) * 4 + 16; }
};

// One branch: keys k = 0..nkeys-1 at raw offsets off(k, ko, vo), into `res` [16][DV] (normalised).
template <int DK, int DV, class Off>
__device__ void branch(const uint32_t (&qa)[DK / 16][4], const Params& p, __nv_bfloat16* ring, float* res, int nkeys,
                       float scale_log2, Off off) {
  using C = SelWinTc<DK, DV>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  const __nv_bfloat16* kg = static_cast<const __nv_bfloat16*>(p.raw.k.p);
  const __nv_bfloat16* vg = static_cast<const __nv_bfloat16*>(p.raw.v.p);
  __nv_bfloat16* stages = ring + warp * 2 * C::kStage;
  const int ntiles = (nkeys + tc::kKeys - 1) / tc::kKeys;
  auto issue = [&](int tile, int buf) {
    int64_t ko = -1, vo = -1;
    const int key = tile * tc::kKeys + (lane & 15);
    if (key < nkeys) off(key, ko, vo);
    __nv_bfloat16* ks = stages + buf * C::kStage;
    __nv_bfloat16* vs = ks + tc::kKeys * C::kLdK;
#pragma unroll
    for (int c = lane; c < tc::kKeys * DK / 8; c += 32) {
      const int j = c / (DK / 8), ch = c % (DK / 8);
      const int64_t kj = __shfl_sync(0xffffffffu, ko, j);
      tc::cp_async_16(ks + j * C::kLdK + ch * 8, kj >= 0 ? kg + kj + ch * 8 : kg, kj >= 0);
    }
#pragma unroll
    for (int c = lane; c < tc::kKeys * DV / 8; c += 32) {
      const int j = c / (DV / 8), ch = c % (DV / 8);
      const int64_t vj = __shfl_sync(0xffffffffu, vo, j);
      tc::cp_async_16(vs + j * C::kLdV + ch * 8, vj >= 0 ? vg + vj + ch * 8 : vg, vj >= 0);
    }
  };
  tc::WarpState<DV> st;
  st.reset();
  if (warp < ntiles) issue(warp, 0);
  tc::cp_async_commit();
  int buf = 0;
  for (int tile = warp; tile < ntiles; tile += tc::kWarps, buf ^= 1) {
    if (tile + tc::kWarps < ntiles) issue(tile + tc::kWarps, buf ^ 1);
    tc::cp_async_commit();
    tc::cp_async_wait<1>();
    __syncwarp();
    const __nv_bfloat16* ks = stages + buf * C::kStage;
    const __nv_bfloat16* vs = ks + tc::kKeys * C::kLdK;
    float x[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      uint32_t b[4];
      tc::ldmatrix_x4(b, ks + ((lane / 16) * 8 + lane % 8) * C::kLdK + kk * 16 + ((lane / 8) % 2) * 8);
      tc::mma_bf16_16816(x[0], qa[kk], b[0], b[1]);
      tc::mma_bf16_16816(x[1], qa[kk], b[2], b[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = tile * tc::kKeys + nt * 8 + 2 * gc + (e & 1);
        x[nt][e] = key < nkeys ? x[nt][e] * scale_log2 : -INFINITY;
      }
    st.template softmax<true>(x);
    const uint32_t pa[4] = {tc::pack_bf16x2(x[0][0], x[0][1]), tc::pack_bf16x2(x[0][2], x[0][3]), tc::pack_bf16x2(x[1][0], x[1][1]),
                            tc::pack_bf16x2(x[1][2], x[1][3])};
#pragma unroll
    for (int dn = 0; dn < DV / 16; ++dn) {
      uint32_t b[4];
      tc::ldmatrix_x4_trans(b, vs + ((lane % 8) + ((lane / 8) % 2) * 8) * C::kLdV + dn * 16 + (lane / 16) * 8);
      tc::mma_bf16_16816(st.o[2 * dn], pa, b[0], b[1]);
      tc::mma_bf16_16816(st.o[2 * dn + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // the next issue overwrites this buffer
  }
  (void)gr;
  tc::warp_merge<DV, true>(st, reinterpret_cast<float*>(ring), res, nullptr, nullptr);
}

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) sel_win_tc_kernel(Params p, const float* o_cmp, const int32_t* idx) {
  using C = SelWinTc<DK, DV>;
  extern __shared__ __align__(16) char smem[];
  __nv_bfloat16* ring = reinterpret_cast<__nv_bfloat16*>(smem);
  float* o_sel = reinterpret_cast<float*>(smem + C::kRingBytes);  // [16][DV]
  int* sel = reinterpret_cast<int*>(o_sel + 16 * DV);              // [n]
  const int row = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  const Geometry& g = p.g;
  const float scale_log2 = g.scale * 1.4426950408889634f;

  const RowPos rp = row_pos(p.rows, row);
  const int t = rp.pos;
  const int32_t* my_idx = idx + (int64_t(row) * p.h + kvh) * g.select_n;
  for (int a = threadIdx.x; a < g.select_n; a += kThreads) sel[a] = my_idx[a];
  uint32_t qa[DK / 16][4];
  tc::load_q_frag<DK>(qa, static_cast<const __nv_bfloat16*>(p.q.p), int64_t(row) * p.q_st, p.q_sh, h0, G);
  __syncthreads();

  int nsel_keys = 0;
  for (int a = 0; a < g.select_n && sel[a] >= 0; ++a) nsel_keys += min(g.select_len, t + 1 - sel[a] * g.select_len);
  branch<DK, DV>(qa, p, ring, o_sel, nsel_keys, scale_log2, [&](int k, int64_t& ko, int64_t& vo) {
    const int pos = sel[k / g.select_len] * g.select_len + k % g.select_len;
    raw_offsets(p.raw, rp.seq, rp.start, pos, kvh, ko, vo);
  });
  const int lo = max(0, t - g.window + 1);
  const int nwin = g.window > 0 ? t - lo + 1 : 0;
  // [16][DV] after the merge area of the ring: written by the window branch's merge only.
  float* o_win = reinterpret_cast<float*>(ring) + tc::merge_floats<DV>();
  branch<DK, DV>(qa, p, ring, o_win, nwin, scale_log2, [&](int k, int64_t& ko, int64_t& vo) {
    raw_offsets(p.raw, rp.seq, rp.start, lo + k, kvh, ko, vo);
  });

  for (int e = threadIdx.x; e < G * DV; e += kThreads) {
    const int i = e / DV, c = e % DV, hq = h0 + i;
    const float oc = o_cmp[(int64_t(row) * p.hq + hq) * DV + c];
    const float os = o_sel[e];
    const float ow = o_win[e];
    const int64_t go = int64_t(row) * p.gate_st + int64_t(hq) * p.gate_sh;
    const float g0 = ld(p.gates, go), g1 = ld(p.gates, go + p.gate_sc), g2 = ld(p.gates, go + 2 * p.gate_sc);
    st(p.out, int64_t(row) * p.out_st + int64_t(hq) * p.out_sh + c, g0 * oc + g1 * os + g2 * ow);
    if (p.out_cmp.p) st(p.out_cmp, int64_t(row) * p.cmp_st + int64_t(hq) * p.cmp_sh + c, oc);
    if (p.out_sel.p) st(p.out_sel, int64_t(row) * p.sel_st + int64_t(hq) * p.sel_sh + c, os);
    if (p.out_win.p) st(p.out_win, int64_t(row) * p.win_st + int64_t(hq) * p.win_sh + c, ow);
  }
  if (p.sel_idx != nullptr)
    for (int a = threadIdx.x; a < g.select_n; a += kThreads)
      p.sel_idx[int64_t(row) * p.sel_idx_st + int64_t(kvh) * p.sel_idx_sh + a] = sel[a];
}

template <int DK, int DV>
cudaError_t launch(const Params& p, const float* o_cmp, const int32_t* idx, cudaStream_t stream) {
  const size_t smem = SelWinTc<DK, DV>::smem(p.g.select_n);
  cudaError_t e = cudaFuncSetAttribute(sel_win_tc_kernel<DK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  sel_win_tc_kernel<DK, DV><<<dim3(p.rows.rows, p.h), kThreads, smem, stream>>>(p, o_cmp, idx);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sel_win_tc(const Params& p, const float* o_cmp, const int32_t* idx, cudaStream_t stream) {
  if (p.dk == 64 && p.dv == 64) return launch<64, 64>(p, o_cmp, idx, stream);
  if (p.dk == 128 && p.dv == 128) return launch<128, 128>(p, o_cmp, idx, stream);
  if (p.dk == 192 && p.dv == 128) return launch<192, 128>(p, o_cmp, idx, stream);
  return cudaErrorInvalidValue;
}

}  // namespace moex::kernels::nsa
