// The split merge of the MLA decode kernels (mla_decode_tc.cu, mla_decode_wg.cu): both write
// the same partials, [tokens, heads, num_splits] x (m, l) and x 512 unnormalised O values.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/common/dtype.cuh"

namespace moex::kernels::mla_combine {

// One block of kCombineThreads threads per (token, head): merge the splits in ascending order.
// The splits' (m, l) are staged in smem by all threads at once and the O partials are read 8
// splits at a time, so the DRAM latencies overlap instead of adding up split after split; the
// arithmetic is max, then l and O summed in ascending split order, empty splits skipped.
constexpr int kCombineThreads = 128, kCombineStaged = 1024, kCombineUnroll = 8, kDV = 512;

// The body of a combine kernel of kCombineThreads threads, block (token, head) = blockIdx.x; A is
// either kernel's Args (heads, num_splits, token0, part_ml, part_acc, out, s_ot, s_oh, lse, s_lse).
template <class TO, class A>
__device__ __forceinline__ void combine_block(const A& a) {
  __shared__ float s_w[kCombineStaged];  // [num_splits] exp(m_s - m), 0 for an empty split
  __shared__ float s_l[kCombineStaged];  // [num_splits] l_s (<= 0: empty split)
  __shared__ float s_max[kCombineThreads / 32];
  const int tok_local = blockIdx.x / a.heads, h = blockIdx.x % a.heads;
  const int ns = a.num_splits, tid = threadIdx.x;
  const int64_t base = (int64_t(tok_local) * a.heads + h) * ns;
  const float* ml = a.part_ml + base * 2;     // [num_splits][2]
  const float* acc = a.part_acc + base * kDV;  // [num_splits][512]
  const int d = tid * 4;
  float m = -INFINITY, l = 0.f;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
  if (ns <= kCombineStaged) {
    for (int s = tid; s < ns; s += kCombineThreads) {
      const float2 v = *reinterpret_cast<const float2*>(ml + 2 * s);
      s_l[s] = v.y;
      s_w[s] = v.x;
      if (v.y > 0.f) m = fmaxf(m, v.x);
    }
    m = warp_max(m);  // the max is exact in any order
    if (tid % 32 == 0) s_max[tid / 32] = m;
    __syncthreads();
    m = s_max[0];
#pragma unroll
    for (int w = 1; w < kCombineThreads / 32; ++w) m = fmaxf(m, s_max[w]);
    for (int s = tid; s < ns; s += kCombineThreads) s_w[s] = s_l[s] > 0.f ? expf(s_w[s] - m) : 0.f;
    __syncthreads();
    for (int s = 0; s < ns; ++s)
      if (s_l[s] > 0.f) l += s_l[s] * s_w[s];
    for (int s0 = 0; s0 < ns; s0 += kCombineUnroll) {
      float4 v[kCombineUnroll];
#pragma unroll
      for (int u = 0; u < kCombineUnroll; ++u)
        if (s0 + u < ns && s_l[s0 + u] > 0.f) v[u] = *reinterpret_cast<const float4*>(acc + int64_t(s0 + u) * kDV + d);
#pragma unroll
      for (int u = 0; u < kCombineUnroll; ++u) {
        if (s0 + u < ns && s_l[s0 + u] > 0.f) {
          const float w = s_w[s0 + u];
          o.x += v[u].x * w; o.y += v[u].y * w; o.z += v[u].z * w; o.w += v[u].w * w;
        }
      }
    }
  } else {  // more splits than staged: the same arithmetic straight from global memory
    for (int s = 0; s < ns; ++s)
      if (ml[2 * s + 1] > 0.f) m = fmaxf(m, ml[2 * s]);
    for (int s = 0; s < ns; ++s) {
      const float ls = ml[2 * s + 1];
      if (!(ls > 0.f)) continue;
      const float w = expf(ml[2 * s] - m);
      l += ls * w;
      const float4 v = *reinterpret_cast<const float4*>(acc + int64_t(s) * kDV + d);
      o.x += v.x * w; o.y += v.y * w; o.z += v.z * w; o.w += v.w * w;
    }
  }
  const int t = a.token0 + tok_local;
  TO* out = static_cast<TO*>(a.out) + int64_t(t) * a.s_ot + int64_t(h) * a.s_oh + d;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  out[0] = from_f32<TO>(o.x * inv); out[1] = from_f32<TO>(o.y * inv);
  out[2] = from_f32<TO>(o.z * inv); out[3] = from_f32<TO>(o.w * inv);
  if (a.lse && tid == 0) a.lse[int64_t(t) * a.s_lse + h] = l > 0.f ? m + logf(l) : -INFINITY;
}

}  // namespace moex::kernels::mla_combine
