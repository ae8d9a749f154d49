// NSA compressed branch and block selection (contract: src/ops/nsa.h, branches 1-2). One CTA per
// (query row, KV head) serves the group's G query heads:
//   pass 1: online softmax over the visible compressed blocks -> o_cmp (f32 scratch), m, l;
//   pass 2: the same scores again, p = exp(s - m) / l, importance of each selection block =
//           sum over the group's heads and the overlapping compressed blocks (fixed order);
//   select: forced blocks, then repeated arg-max (ties: lower index) -> ascending indices.
// Pass 2 recomputes the scores instead of keeping G x nc of them: at 64K tokens and d = 16 they
// would not fit in shared memory, and QK is the cheaper half of the branch.
#include <climits>

#include "kernels/attention/nsa/nsa_block.cuh"

namespace moex::kernels::nsa {
namespace {

struct SelectSmem {
  float* imp;  // [nsel_max] importance; -inf once chosen
  float* pj;   // [kTile] the tile's probabilities summed over the group's heads
  int* sel;    // [n] chosen blocks
  float* red_v;  // [kThreads / 32]
  int* red_i;    // [kThreads / 32]
  static size_t bytes(int nsel_max, int n) {
    return size_t(nsel_max) * 4 + kTile * 4 + size_t(n) * 4 + (kThreads / 32) * 8 + 16;
  }
};

__device__ inline int nsel_max_of(const Params& p) { return (p.max_len - 1) / p.g.select_len + 1; }

__global__ void __launch_bounds__(kThreads) cmp_select_kernel(Params p, float* o_cmp, int32_t* idx) {
  extern __shared__ __align__(16) char smem[];
  const int row = blockIdx.x, kvh = blockIdx.y;
  const int G = p.hq / p.h, h0 = kvh * G;
  BlockSmem s;
  char* rest = s.carve(smem, G, p.dk, p.dv);
  SelectSmem ss;
  ss.imp = reinterpret_cast<float*>(rest);
  ss.pj = ss.imp + nsel_max_of(p);
  ss.sel = reinterpret_cast<int*>(ss.pj + kTile);
  ss.red_v = reinterpret_cast<float*>(ss.sel + p.g.select_n);
  ss.red_i = reinterpret_cast<int*>(ss.red_v + kThreads / 32);

  const RowPos rp = row_pos(p.rows, row);
  const int t = rp.pos;
  const Geometry& g = p.g;
  const int nc = num_cmp_visible(g, t);
  const int nsel = t / g.select_len + 1;
  int64_t kb, vb;
  cmp_base(p.cmp, rp.seq, kvh, kb, vb);
  auto off = [&](int j, int64_t& ko, int64_t& vo) {
    ko = kb + int64_t(j) * p.cmp.k_sj;
    vo = vb + int64_t(j) * p.cmp.v_sj;
  };

  load_q_reset(s, p.q, int64_t(row) * p.q_st, p.q_sh, h0);
  for (int b = threadIdx.x; b < nsel; b += kThreads) ss.imp[b] = 0.f;
  __syncthreads();

  // Pass 1: o_cmp.
  attend(s, p.cmp.k, p.cmp.v, nc, g.scale, off);
  for (int e = threadIdx.x; e < G * p.dv; e += kThreads) {
    const int i = e / p.dv, c = e % p.dv;
    o_cmp[(int64_t(row) * p.hq + h0 + i) * p.dv + c] = nc > 0 ? s.o[e] / s.l[i] : 0.f;
  }

  // Pass 2: importance.
  for (int j0 = 0; j0 < nc; j0 += kTile) {
    if (threadIdx.x < kTile) {
      const int j = j0 + threadIdx.x;
      int64_t ko = -1, vo = -1;
      if (j < nc) off(j, ko, vo);
      s.koff[threadIdx.x] = ko;
    }
    __syncthreads();
    load_tile(s, p.cmp.k, p.cmp.v, false);
    __syncthreads();
    tile_scores(s, g.scale);
    __syncthreads();
    if (threadIdx.x < kTile) {
      const int j = threadIdx.x;
      float acc = 0.f;
      if (j0 + j < nc)
        for (int i = 0; i < G; ++i) acc += expf(s.p[i * kTile + j] - s.m[i]) / s.l[i];
      ss.pj[j] = acc;
    }
    __syncthreads();
    // Selection blocks touched by compressed blocks [j0, j1]: each adds its overlapping blocks
    // in ascending j.
    const int j1 = min(nc, j0 + kTile) - 1;
    const int b0 = (j0 * g.block_stride) / g.select_len;
    const int b1 = min(nsel - 1, (j1 * g.block_stride + g.block_len - 1) / g.select_len);
    for (int b = b0 + int(threadIdx.x); b <= b1; b += kThreads) {
      const int lo_tok = b * g.select_len - g.block_len;  // j * d > lo_tok
      const int jlo = max(j0, lo_tok < 0 ? 0 : lo_tok / g.block_stride + 1);
      const int jhi = min(j1, ((b + 1) * g.select_len - 1) / g.block_stride);
      float acc = ss.imp[b];
      for (int j = jlo; j <= jhi; ++j) acc += ss.pj[j - j0];
      ss.imp[b] = acc;
    }
    __syncthreads();
  }

  select_blocks(ss.imp, nsel, g, ss.sel, ss.red_v, ss.red_i, idx + (int64_t(row) * p.h + kvh) * g.select_n);
}

}  // namespace

size_t cmp_select_smem(const Params& p) {
  const int nsel_max = (p.max_len - 1) / p.g.select_len + 1;
  return BlockSmem::bytes(p.hq / p.h, p.dk, p.dv) + SelectSmem::bytes(nsel_max, p.g.select_n);
}

cudaError_t launch_cmp_select(const Params& p, float* o_cmp, int32_t* idx, cudaStream_t stream) {
  const size_t smem = cmp_select_smem(p);
  cudaError_t e = cudaFuncSetAttribute(cmp_select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  cmp_select_kernel<<<dim3(p.rows.rows, p.h), kThreads, smem, stream>>>(p, o_cmp, idx);
  return cudaGetLastError();
}

}  // namespace moex::kernels::nsa
