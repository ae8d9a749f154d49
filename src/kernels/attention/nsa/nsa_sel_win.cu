// NSA selected-block and sliding-window branches, gating and outputs (contract: src/ops/nsa.h,
// branches 2-3). One CTA per (query row, KV head) serves the group's G query heads: one online
// softmax over the tokens s <= t of the chosen blocks (ascending, so only the last block can be
// partial and the visible keys are a prefix of the concatenated blocks), a second one over the
// window, then out = gate0 * o_cmp + gate1 * o_sel + gate2 * o_win.
#include <cstdlib>
#include <cstring>

#include "kernels/attention/nsa/nsa_block.cuh"

namespace moex::kernels::nsa {

// The tensor-core kernels (nsa_*_tc.cu) serve bf16 q / k / v with G <= 16 and head dims
// 64/64, 128/128, 192/128; everything else takes the CUDA-core kernels of this file and
// nsa_cmp_select.cu, which are the simpler statement of the same arithmetic.
constexpr bool kUseTensorCores = true;

namespace {

__global__ void __launch_bounds__(kThreads) sel_win_kernel(Params p, const float* o_cmp, const int32_t* idx) {
  extern __shared__ __align__(16) char smem[];
  const int row = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  const Geometry& g = p.g;
  BlockSmem s;
  char* rest = s.carve(smem, G, p.dk, p.dv);
  float* o_sel = reinterpret_cast<float*>(rest);         // [G][dv] normalised selected branch
  int* sel = reinterpret_cast<int*>(o_sel + G * p.dv);  // [n]

  const RowPos rp = row_pos(p.rows, row);
  const int t = rp.pos;
  const int32_t* my_idx = idx + (int64_t(row) * p.h + kvh) * g.select_n;
  for (int a = threadIdx.x; a < g.select_n; a += kThreads) sel[a] = my_idx[a];
  load_q_reset(s, p.q, int64_t(row) * p.q_st, p.q_sh, h0);
  __syncthreads();

  int nsel_keys = 0;
  for (int a = 0; a < g.select_n && sel[a] >= 0; ++a) nsel_keys += min(g.select_len, t + 1 - sel[a] * g.select_len);
  attend(s, p.raw.k, p.raw.v, nsel_keys, g.scale, [&](int k, int64_t& ko, int64_t& vo) {
    const int pos = sel[k / g.select_len] * g.select_len + k % g.select_len;
    raw_offsets(p.raw, rp.seq, rp.start, pos, kvh, ko, vo);
  });
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) {
    o_sel[e] = s.o[e] / s.l[e / p.dv];
    s.o[e] = 0.f;
  }
  __syncthreads();  // s.l is read above
  for (int i = threadIdx.x; i < G; i += kThreads) { s.m[i] = -INFINITY; s.l[i] = 0.f; }
  __syncthreads();

  const int lo = max(0, t - g.window + 1);
  const int nwin = g.window > 0 ? t - lo + 1 : 0;
  attend(s, p.raw.k, p.raw.v, nwin, g.scale, [&](int k, int64_t& ko, int64_t& vo) {
    raw_offsets(p.raw, rp.seq, rp.start, lo + k, kvh, ko, vo);
  });

  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) {
    const int i = e / p.dv, c = e % p.dv, hq = h0 + i;
    const float oc = o_cmp[(int64_t(row) * p.hq + hq) * p.dv + c];
    const float os = o_sel[e];
    const float ow = nwin > 0 ? s.o[e] / s.l[i] : 0.f;
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

}  // namespace

size_t sel_win_smem(const Params& p) {
  const int G = p.hq / p.h;
  return BlockSmem::bytes(G, p.dk, p.dv) + size_t(G) * p.dv * 4 + size_t(p.g.select_n) * 4 + 16;
}

cudaError_t launch_sel_win(const Params& p, const float* o_cmp, const int32_t* idx, cudaStream_t stream) {
  const size_t smem = sel_win_smem(p);
  cudaError_t e = cudaFuncSetAttribute(sel_win_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  sel_win_kernel<<<dim3(p.rows.rows, p.h), kThreads, smem, stream>>>(p, o_cmp, idx);
  return cudaGetLastError();
}

size_t scratch_bytes(const Params& p) {
  return ScratchCarver::bytes_for<float>(size_t(p.rows.rows) * p.hq * p.dv) +
         ScratchCarver::bytes_for<int32_t>(size_t(p.rows.rows) * p.h * p.g.select_n) + cmp_tile_presplit_bytes(p);
}

bool use_tensor_cores(const Params& p) {
  auto aligned = [](const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; };
  const bool dims = (p.dk == 64 && p.dv == 64) || (p.dk == 128 && p.dv == 128) || (p.dk == 192 && p.dv == 128);
  if (!dims || p.hq / p.h > 16 || !p.q.bf16 || !p.raw.k.bf16 || !p.raw.v.bf16) return false;
  // Q is read as bf16 pairs, raw K / V rows as 16-byte chunks.
  if (!aligned(p.q.p, 4) || p.q_st % 2 != 0 || p.q_sh % 2 != 0) return false;
  if (!aligned(p.raw.k.p, 16) || !aligned(p.raw.v.p, 16)) return false;
  for (int64_t s : {p.raw.k_st, p.raw.k_sh, p.raw.k_sp, p.raw.v_st, p.raw.v_sh, p.raw.v_sp})
    if (s % 8 != 0) return false;
  return cmp_select_tc_smem(p) <= kMaxSmem;
}

// Bench-only switches, read once from the environment (unset: the normal path).
//   MOEX_NSA_ONLY=cmp | sel_win  launches only that attention kernel (outputs are then wrong):
//                                the per-kernel split of `moex bench ops --op nsa`, under graphs;
//   MOEX_NSA_TILE=0 | 2 | 4      forward rows per cmp_select CTA (0: the one-row kernel).
namespace {
struct Knobs {
  bool skip_cmp = false, skip_sel_win = false;
  int tile_tokens = 4;
};
const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs r;
    if (const char* only = std::getenv("MOEX_NSA_ONLY")) {
      r.skip_cmp = std::strcmp(only, "sel_win") == 0;
      r.skip_sel_win = std::strcmp(only, "cmp") == 0;
    }
    if (const char* t = std::getenv("MOEX_NSA_TILE")) r.tile_tokens = std::atoi(t);
    return r;
  }();
  return k;
}
}  // namespace

cudaError_t launch_attention(const Params& p, void* scratch, cudaStream_t stream) {
  if (p.rows.rows == 0) return cudaSuccess;
  ScratchCarver sc{static_cast<char*>(scratch), 0};
  float* o_cmp = sc.carve<float>(size_t(p.rows.rows) * p.hq * p.dv);
  int32_t* idx = sc.carve<int32_t>(size_t(p.rows.rows) * p.h * p.g.select_n);
  const size_t pre_bytes = cmp_tile_presplit_bytes(p);
  void* presplit = pre_bytes > 0 ? sc.carve<char>(pre_bytes) : nullptr;
  const bool tc = kUseTensorCores && use_tensor_cores(p);
  const Knobs& kn = knobs();
  cudaError_t e = cudaSuccess;
  if (!kn.skip_cmp) {
    // Forward rows take the token-tiled kernel (bitwise the same rows); decode rows, and shapes
    // whose tiled shared memory does not fit, the one-row kernel.
    e = tc && kn.tile_tokens > 0 ? launch_cmp_select_tile(p, o_cmp, idx, kn.tile_tokens, presplit, stream)
                                 : cudaErrorNotSupported;
    if (e == cudaErrorNotSupported)
      e = tc ? launch_cmp_select_tc(p, o_cmp, idx, stream) : launch_cmp_select(p, o_cmp, idx, stream);
    if (e != cudaSuccess) return e;
  }
  if (kn.skip_sel_win) return cudaSuccess;
  return tc ? launch_sel_win_tc(p, o_cmp, idx, stream) : launch_sel_win(p, o_cmp, idx, stream);
}

}  // namespace moex::kernels::nsa
