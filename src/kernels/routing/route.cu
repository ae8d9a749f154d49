// Expert selection, one warp per token: scores (softmax or sigmoid), optional group limiting,
// top-k by repeated warp argmax (descending value, ties to the lower id: the same order as the
// CPU reference), then renormalisation in slot order and routed scaling.
#include <cmath>

#include "kernels/common/dtype.cuh"
#include "kernels/routing/route.h"

namespace moex::kernels {
namespace {

constexpr int kWarps = 4;

struct RouteArgs {
  const float* logits; int64_t s_logits;  // [n, E]
  const float* bias;                      // [E] or nullptr
  int32_t* ids; int64_t s_ids;            // [n, top_k]
  float* weights; int64_t s_w;            // [n, top_k]
  int n, num_experts, top_k, n_group, topk_group;
  ops::ScoringFunc scoring;
  ops::TopkMethod method;
  bool norm;
  float scaling;
};

struct Best {
  float v;
  int i;
};

// Larger value wins; equal values go to the lower index; NaN marks a taken / masked-out entry.
__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

__device__ Best warp_argmax(const float* v, int count) {
  const int lane = threadIdx.x % 32;
  Best best{0.f, -1};
  for (int i = lane; i < count; i += 32)
    if (!isnan(v[i])) best = better(best, Best{v[i], i});
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(0xffffffffu, best.v, o), __shfl_xor_sync(0xffffffffu, best.i, o)};
    best = better(best, other);
  }
  return best;
}

__global__ void __launch_bounds__(kWarps * 32) route_kernel(RouteArgs a) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * kWarps + warp;
  if (t >= a.n) return;
  const int E = a.num_experts;
  float* score = smem + warp * (2 * E + kRouteMaxGroups);  // [E] weights source
  float* sel = score + E;                                  // [E] selection values (NaN = out)
  float* gscore = sel + E;                                 // [n_group]
  const float* x = a.logits + int64_t(t) * a.s_logits;

  if (a.scoring == ops::ScoringFunc::kSoftmax) {
    float m = -INFINITY;
    for (int i = lane; i < E; i += 32) m = fmaxf(m, x[i]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < E; i += 32) {
      const float e = expf(x[i] - m);
      score[i] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    for (int i = lane; i < E; i += 32) score[i] = score[i] / sum;
  } else {
    for (int i = lane; i < E; i += 32) score[i] = 1.f / (1.f + expf(-x[i]));
  }
  // Softmax selects on the logits (softmax is increasing), so ids never depend on expf's ulps;
  // the CPU reference does the same.
  const bool softmax = a.scoring == ops::ScoringFunc::kSoftmax;
  for (int i = lane; i < E; i += 32) sel[i] = softmax ? x[i] : score[i] + (a.bias ? a.bias[i] : 0.f);
  __syncwarp();

  if (a.method != ops::TopkMethod::kGreedy && a.n_group > 1) {
    const int gs = E / a.n_group;
    for (int g = lane; g < a.n_group; g += 32) {
      float m1 = -INFINITY, m2 = -INFINITY;
      for (int i = g * gs; i < (g + 1) * gs; ++i) {
        const float v = sel[i];
        if (v > m1) { m2 = m1; m1 = v; } else if (v > m2) { m2 = v; }
      }
      gscore[g] = a.method == ops::TopkMethod::kNoauxTc ? m1 + m2 : m1;
    }
    __syncwarp();
    // Pick topk_group groups; mark them by NaN in gscore, then drop the experts of the others.
    for (int j = 0; j < a.topk_group; ++j) {
      const Best b = warp_argmax(gscore, a.n_group);
      __syncwarp();
      if (lane == 0 && b.i >= 0) gscore[b.i] = NAN;
      __syncwarp();
    }
    for (int i = lane; i < E; i += 32)
      if (!isnan(gscore[i / gs])) sel[i] = NAN;
    __syncwarp();
  }

  float wsum = 0.f;
  int32_t* ids = a.ids + int64_t(t) * a.s_ids;
  float* w = a.weights + int64_t(t) * a.s_w;
  for (int j = 0; j < a.top_k; ++j) {
    const Best b = warp_argmax(sel, E);
    __syncwarp();
    if (lane == 0) {
      ids[j] = b.i;
      const float v = b.i >= 0 ? score[b.i] : 0.f;
      w[j] = v;
      wsum += v;
      if (b.i >= 0) sel[b.i] = NAN;
    }
    __syncwarp();
  }
  if (lane == 0) {
    const float denom = a.norm ? wsum + (softmax ? 0.f : 1e-20f) : 1.f;  // 1e-20 as DeepSeek-V3 does
    for (int j = 0; j < a.top_k; ++j) w[j] = (a.norm ? w[j] / denom : w[j]) * a.scaling;
  }
}

}  // namespace

cudaError_t launch_route(const ops::RouteParams& p, cudaStream_t stream) {
  RouteArgs a{};
  a.logits = p.logits.ptr<float>(); a.s_logits = p.logits.stride[0];
  a.bias = p.method == ops::TopkMethod::kNoauxTc && !p.bias.empty() ? p.bias.ptr<float>() : nullptr;
  a.ids = p.topk_ids.ptr<int32_t>(); a.s_ids = p.topk_ids.stride[0];
  a.weights = p.topk_weights.ptr<float>(); a.s_w = p.topk_weights.stride[0];
  a.n = int(p.logits.shape[0]); a.num_experts = int(p.logits.shape[1]);
  a.top_k = p.top_k; a.n_group = p.n_group; a.topk_group = p.topk_group;
  a.scoring = p.scoring; a.method = p.method; a.norm = p.norm_topk_prob; a.scaling = p.routed_scaling_factor;
  if (a.n == 0) return cudaSuccess;
  const size_t smem = size_t(kWarps) * (2 * a.num_experts + kRouteMaxGroups) * sizeof(float);
  route_kernel<<<ceil_div(a.n, kWarps), kWarps * 32, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace moex::kernels
