// Tensor-core pieces of the NSA kernels (mma.sync m16n8k16, bf16 in, f32 accumulate), in the
// flash-attention-2 register layout: a warp owns 16 query rows (the G <= 16 heads of one KV
// group, zero-padded) and walks 16-key tiles; S = Q K^T stays in registers and becomes the A
// operand of O += P V. Each warp keeps its own (m, l, O); warp_merge combines the 4 warps in
// warp order, so a row's bits depend only on its own keys.
//
// Fragment layout (PTX ISA 9.7.14.5.8, m16n8k16): lane = 4 gr + gc; A regs {row gr, row gr+8} x
// {cols 2gc, 2gc+1 | 2gc+8, 2gc+9}; B regs {k 2gc, 2gc+1 | 2gc+8, 2gc+9} x {col gr}; C {row gr:
// cols 2gc, 2gc+1; row gr+8: the same}.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/attention/nsa/nsa_block.cuh"
#include "kernels/gemm/ptx.cuh"

namespace moex::kernels::nsa::tc {

constexpr int kWarps = kThreads / 32;
constexpr int kKeys = 16;  // keys per warp tile

// PTX wrappers shared with the GEMMs (gemm/ptx.cuh).
using gemm::ptx::cp_async_16;
using gemm::ptx::cp_async_commit;
using gemm::ptx::cp_async_wait;
using gemm::ptx::ldmatrix_x4;
using gemm::ptx::ldmatrix_x4_trans;
using gemm::ptx::mma_bf16_16816;
using gemm::ptx::pack_bf16x2;
using gemm::ptx::smem_addr;

// Q A-fragments of 16 rows (heads h0 .. h0 + G - 1, the rest zero) for DK / 16 k-steps.
template <int DK>
__device__ __forceinline__ void load_q_frag(uint32_t (&qa)[DK / 16][4], const __nv_bfloat16* q, int64_t row_off,
                                            int64_t q_sh, int h0, int G) {
  const int lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
  const __nv_bfloat16* r0 = q + row_off + int64_t(h0 + gr) * q_sh;
  const __nv_bfloat16* r1 = q + row_off + int64_t(h0 + gr + 8) * q_sh;
#pragma unroll
  for (int kk = 0; kk < DK / 16; ++kk) {
    const int c = kk * 16 + 2 * gc;
    qa[kk][0] = gr < G ? *reinterpret_cast<const uint32_t*>(r0 + c) : 0u;
    qa[kk][1] = gr + 8 < G ? *reinterpret_cast<const uint32_t*>(r1 + c) : 0u;
    qa[kk][2] = gr < G ? *reinterpret_cast<const uint32_t*>(r0 + c + 8) : 0u;
    qa[kk][3] = gr + 8 < G ? *reinterpret_cast<const uint32_t*>(r1 + c + 8) : 0u;
  }
}

// Online-softmax state of one warp's 16 rows: this lane holds rows gr (index 0) and gr + 8
// (index 1); m is the same on the 4 lanes of a quad, l is this lane's partial sum.
template <int DV>
struct WarpState {
  float m[2], l[2];
  float o[DV / 8][4];
  __device__ void reset() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  }
  // Scores x[nt][e] (masked ones -inf) -> probabilities in place; rescales O. kLog2: x is in
  // log2 units (exp2), else natural (expf, as the importance pass needs).
  template <bool kLog2>
  __device__ void softmax(float (&x)[2][4]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = fmaxf(fmaxf(x[0][2 * r], x[0][2 * r + 1]), fmaxf(x[1][2 * r], x[1][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m[r], mx);
      const bool none = mn == -INFINITY;
      const float a = none ? 1.f : (kLog2 ? exp2f(m[r] - mn) : expf(m[r] - mn));
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = x[nt][2 * r + e];
          v = none ? 0.f : (kLog2 ? exp2f(v - mn) : expf(v - mn));
          sum += v;
        }
      l[r] = l[r] * a + sum;
      m[r] = mn;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) { o[n][2 * r] *= a; o[n][2 * r + 1] *= a; }
    }
  }
};

// The 4 warps' states merged (warp order, scores in log2 units if kLog2) into out[16][DV] = O / l (0 for rows without keys).
// m_out / l_out [16] (optional) get the merged max and sum. `buf` holds kWarps * 16 * (DV + 2)
// floats and may alias the warps' tile buffers: the first barrier retires them.
template <int DV, bool kLog2>
__device__ void warp_merge(WarpState<DV>& s, float* buf, float* out, float* m_out, float* l_out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, gc = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    s.l[r] += __shfl_xor_sync(0xffffffffu, s.l[r], 1);
    s.l[r] += __shfl_xor_sync(0xffffffffu, s.l[r], 2);
  }
  cp_async_wait<0>();
  __syncthreads();
  float* mo = buf + warp * 16 * DV;  // [16][DV]
  float* ml = buf + kWarps * 16 * DV + warp * 32;  // [m 16][l 16]
#pragma unroll
  for (int n = 0; n < DV / 8; ++n) {
    const int c = n * 8 + 2 * gc;
    mo[gr * DV + c] = s.o[n][0];
    mo[gr * DV + c + 1] = s.o[n][1];
    mo[(gr + 8) * DV + c] = s.o[n][2];
    mo[(gr + 8) * DV + c + 1] = s.o[n][3];
  }
  if (gc == 0) {
    ml[gr] = s.m[0]; ml[gr + 8] = s.m[1];
    ml[16 + gr] = s.l[0]; ml[16 + gr + 8] = s.l[1];
  }
  __syncthreads();
  const float* mls = buf + kWarps * 16 * DV;
  for (int e = threadIdx.x; e < 16 * DV; e += kThreads) {
    const int r = e / DV;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, mls[w * 32 + r]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY)
      for (int w = 0; w < kWarps; ++w) {
        const float mw = mls[w * 32 + r];
        if (mw == -INFINITY) continue;
        const float f = kLog2 ? exp2f(mw - M) : expf(mw - M);
        L += mls[w * 32 + 16 + r] * f;
        O += buf[w * 16 * DV + e] * f;
      }
    out[e] = L > 0.f ? O / L : 0.f;
    if (e % DV == 0) {
      if (m_out) m_out[r] = M;
      if (l_out) l_out[r] = L;
    }
  }
  __syncthreads();
}

template <int DV>
constexpr int merge_floats() { return kWarps * 16 * (DV + 2); }

}  // namespace moex::kernels::nsa::tc
