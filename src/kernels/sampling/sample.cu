// Sampling kernel: one 1024-thread block per row of logits. Every decision is a radix walk over
// a 64-bit sort key (ordered float bits, then the inverted id), so the order is exactly the
// host Sampler's (logit descending, ties by id) without sorting. Weights are f64 exponentials
// quantized to fixed point (2^-44) and summed as integers, so a row's sums are exact and
// independent of thread order, batch size and run: the same row gives the same id whatever
// shares its batch. Design, passes and complexity: docs/kernels/sampling.md.
#include "kernels/sampling/sample.h"

#include <cmath>

#include "kernels/common/dtype.cuh"

namespace moex::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 8;  // one radix digit per pass
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerLane = kBins / 32;
constexpr int kUnroll = 8;  // row elements loaded per thread before they are binned
constexpr double kMassScale = 17592186044416.0;  // 2^44: weight 1 (the max logit) in fixed point
// exp(x) * 2^44 < 0.5 for x below this: such weights round to 0, so exp is skipped.
constexpr double kMinExponent = -31.2;
constexpr unsigned kFull = 0xffffffffu;

struct Args {
  const void* logits; int64_t s_logits;  // [B, vocab], row stride in elements
  const float* temperature;              // [B]
  const int32_t* top_k;                  // [B]
  const float* top_p;                    // [B]
  const void* uniform;                   // [B] f32, or i64 raw draws when uniform_bits
  bool uniform_bits;
  int32_t* out;                          // [B]
  int64_t vocab;
  int id_bits;                           // bits of the id field of the sort key
};

// Float bits mapped so that unsigned order is float order; -0 sorts with +0 (they compare
// equal on the host) and NaN below everything.
__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u << 1) == 0u) u = 0u;
  if (v != v) return 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sort key: descending key order is the sampling order (logit descending, then id ascending).
__device__ __forceinline__ uint64_t sort_key(float v, int64_t id, int id_bits) {
  const uint64_t id_mask = (uint64_t(1) << id_bits) - 1;
  return (uint64_t(order_key(v)) << id_bits) | (id_mask - uint64_t(id));
}

template <class T>
__device__ __forceinline__ float load(const T* row, int64_t i) { return to_f32<T>(row[i]); }

struct RowCtx {
  int64_t vocab;
  int id_bits;
  double max_logit;  // logit of the first candidate
  double inv_t;      // 1 / temperature, as the host computes it
};

// Fixed-point weight exp((logit - max) / T) * 2^44, the host's fp64 formula before rounding.
__device__ __forceinline__ uint64_t weight(float v, const RowCtx& c) {
  const double x = (double(v) - c.max_logit) * c.inv_t;
  if (!(x >= kMinExponent)) return 0;  // also NaN
  return __double2ull_rn(fmin(exp(x), 1.0) * kMassScale);
}

struct Shared {
  unsigned long long mass[kBins];  // per digit: fixed-point weight of the candidates
  unsigned int count[kBins];       // per digit: number of candidates
  unsigned long long red[kWarps];  // block reduction
  int chosen;                      // digit picked by the scan, -1 none
  unsigned int chosen_count;
  unsigned long long target;       // what is still to reach inside the chosen digit
  int found;                       // id found by a find pass
};

// Adds (1, w) to bin `bin` for every lane with bin >= 0. Warp-collective. Lanes that share a
// bin (the top digits of a row's keys fall into a few bins) are summed first, so one atomic per
// distinct bin: the weight in two 22-bit halves so redux.sync's 32-bit sums cannot overflow.
template <bool kMass>
__device__ __forceinline__ void accumulate(int bin, uint64_t w, Shared& sh) {
  if (__ballot_sync(kFull, bin >= 0) == 0u) return;
  const int lane = threadIdx.x & 31;
  const unsigned peers = __match_any_sync(kFull, bin);
  unsigned hi = 0, lo = 0;
  if (kMass) {  // every lane reduces within its own group (its mask is its group)
    hi = __reduce_add_sync(peers, unsigned(w >> 22));
    lo = __reduce_add_sync(peers, unsigned(w & 0x3fffffu));
  }
  if (bin >= 0 && lane == __ffs(peers) - 1) {
    atomicAdd(&sh.count[bin], unsigned(__popc(peers)));
    if (kMass) atomicAdd(&sh.mass[bin], (unsigned long long)((uint64_t(hi) << 22) + lo));
  }
}

enum class Target { kCount, kTopP, kSample };

// Warp 0: the first digit, in descending order, at which the running sum of bin values reaches
// the target. At the first level the target comes from the row total (rule) and `frac`.
template <bool kMass>
__device__ void scan_bins(Shared& sh, bool first, Target rule, double frac, unsigned long long target) {
  const int lane = threadIdx.x & 31;
  unsigned long long vals[kBinsPerLane];
  unsigned long long mine = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerLane; ++j) {
    const int b = kBins - 1 - lane * kBinsPerLane - j;
    vals[j] = kMass ? sh.mass[b] : (unsigned long long)sh.count[b];
    mine += vals[j];
  }
  unsigned long long incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long up = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += up;
  }
  const unsigned long long total = __shfl_sync(kFull, incl, 31);
  if (first && rule == Target::kTopP) {
    const double t = ceil(frac * double(total));
    target = t < 1.0 ? 1ull : (t >= double(total) ? total : (unsigned long long)t);
  } else if (first && rule == Target::kSample) {
    const double t = floor(frac * double(total)) + 1.0;
    target = t >= double(total) ? total : (unsigned long long)t;
  }
  const unsigned hit = __ballot_sync(kFull, target > 0 && incl >= target);
  if (hit == 0u) {  // nothing to reach (a row without weight): no digit
    if (lane == 0) sh.chosen = -1;
    return;
  }
  const int src = __ffs(hit) - 1;
  if (lane == src) {
    unsigned long long ahead = incl - mine;
    for (int j = 0; j < kBinsPerLane; ++j) {
      if (ahead + vals[j] >= target) {
        const int b = kBins - 1 - lane * kBinsPerLane - j;
        sh.chosen = b;
        sh.chosen_count = sh.count[b];
        sh.target = target - ahead;
        break;
      }
      ahead += vals[j];
    }
  }
}

// The candidate (sort key >= lim) at which the running count (kMass false) or fixed-point
// weight (kMass true), taken in sampling order, first reaches the target. Returns its id, or
// -1 when the row has no weight. One pass over the row per 8-bit digit, plus one pass to read
// off the id when a digit holds a single candidate.
template <class T, bool kMass>
__device__ int32_t walk(const T* row, const RowCtx& c, uint64_t lim, Target rule, double frac,
                        unsigned long long target, Shared& sh) {
  const int tid = threadIdx.x;
  uint64_t hi = 0;  // the digits chosen so far
  int remaining = 32 + c.id_bits;
  for (bool first = true;; first = false) {
    const int width = remaining < kDigitBits ? remaining : kDigitBits;
    const int shift = remaining - width;
    for (int b = tid; b < kBins; b += kThreads) {
      sh.mass[b] = 0;
      sh.count[b] = 0;
    }
    __syncthreads();
    // kUnroll loads in flight per thread before the warp-collective updates.
    for (int64_t base = 0; base < c.vocab; base += int64_t(kThreads) * kUnroll) {
      float v[kUnroll];
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int64_t i = base + int64_t(j) * kThreads + tid;
        v[j] = i < c.vocab ? load(row, i) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int64_t i = base + int64_t(j) * kThreads + tid;
        int bin = -1;
        uint64_t w = 0;
        if (i < c.vocab) {
          const uint64_t key = sort_key(v[j], i, c.id_bits);
          if (key >= lim && (key >> (shift + width)) == hi) {
            bin = int((key >> shift) & uint64_t((1 << width) - 1));
            if (kMass) {
              // A weightless candidate can never be where a weight sum first reaches its
              // target, so weight walks leave it out (its count too).
              w = weight(v[j], c);
              if (w == 0) bin = -1;
            }
          }
        }
        accumulate<kMass>(bin, w, sh);
      }
    }
    __syncthreads();
    if (tid < 32) scan_bins<kMass>(sh, first, rule, frac, target);
    __syncthreads();
    const int digit = sh.chosen;
    const unsigned count = sh.chosen_count;
    target = sh.target;
    __syncthreads();  // everyone has read the scan before the next pass clears it
    if (digit < 0) return -1;
    hi = (hi << width) | uint64_t(digit);
    remaining = shift;
    const uint64_t id_mask = (uint64_t(1) << c.id_bits) - 1;
    if (remaining == 0) return int32_t(id_mask - (hi & id_mask));
    if (count == 1) break;
  }
  // A single candidate carries the prefix: find it (weightless ones were never counted).
#pragma unroll 4
  for (int64_t i = tid; i < c.vocab; i += kThreads) {
    const float v = load(row, i);
    const uint64_t key = sort_key(v, i, c.id_bits);
    if (key >= lim && (key >> remaining) == hi && (!kMass || weight(v, c) != 0)) sh.found = int(i);
  }
  __syncthreads();
  const int id = sh.found;
  __syncthreads();
  return id;
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(kFull, v, o);
    v = other > v ? other : v;
  }
  return v;
}

template <class T>
__global__ void __launch_bounds__(kThreads) sample_kernel(Args a) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const T* row = static_cast<const T*>(a.logits) + b * a.s_logits;  // [vocab]
  const float temperature = a.temperature[b];
  const int top_k = a.top_k[b];
  const float top_p = a.top_p[b];
  const bool greedy = temperature <= 0.f;
  const double u = a.uniform_bits ? double(static_cast<const uint64_t*>(a.uniform)[b] >> 11) * (1.0 / 9007199254740992.0)
                                  : double(static_cast<const float*>(a.uniform)[b]);
  const bool bad = temperature != temperature || top_k < 0 || !(top_p > 0.f) || (!greedy && !(u >= 0.0 && u < 1.0));
  if (bad) {
    if (tid == 0) a.out[b] = -1;
    return;
  }

  // Pass 1: the first candidate (max sort key) = the greedy answer and the softmax's max.
  unsigned long long best = 0;
#pragma unroll 8
  for (int64_t i = tid; i < a.vocab; i += kThreads) {
    const unsigned long long key = sort_key(load(row, i), i, a.id_bits);
    best = key > best ? key : best;
  }
  best = warp_max_u64(best);
  if ((tid & 31) == 0) sh.red[tid >> 5] = best;
  __syncthreads();
  best = warp_max_u64(tid < 32 ? sh.red[tid & 31] : 0ull);
  __syncthreads();  // all of sh.red is read before thread 0 overwrites it
  if (tid == 0) sh.red[0] = best;
  __syncthreads();
  best = sh.red[0];
  const uint64_t id_mask = (uint64_t(1) << a.id_bits) - 1;
  const int32_t first_id = int32_t(id_mask - (best & id_mask));
  if (greedy || a.vocab == 1) {
    // The host argmax keeps id 0 when logits[0] is NaN (nothing compares greater).
    if (tid == 0) a.out[b] = load(row, 0) != load(row, 0) ? 0 : first_id;
    return;
  }

  RowCtx c;
  c.vocab = a.vocab;
  c.id_bits = a.id_bits;
  c.max_logit = double(load(row, first_id));
  c.inv_t = 1.0 / double(temperature);
  uint64_t lim = 0;  // candidates are the sort keys >= lim
  if (top_k > 0 && top_k < a.vocab) {
    const int32_t kth = walk<T, false>(row, c, 0, Target::kCount, 0.0, (unsigned long long)top_k, sh);
    lim = sort_key(load(row, kth), kth, a.id_bits);
  }
  if (top_p < 1.f) {
    const int32_t cut = walk<T, true>(row, c, lim, Target::kTopP, double(top_p), 0, sh);
    if (cut >= 0) lim = sort_key(load(row, cut), cut, a.id_bits);
  }
  const int32_t id = walk<T, true>(row, c, lim, Target::kSample, u, 0, sh);
  if (tid == 0) a.out[b] = id >= 0 ? id : first_id;
}

}  // namespace

cudaError_t launch_sample(const ops::SampleParams& p, cudaStream_t stream) {
  const int64_t rows = p.logits.shape[0];
  if (rows == 0) return cudaSuccess;
  Args a;
  a.logits = p.logits.data;
  a.s_logits = p.logits.stride[0];
  a.temperature = p.temperature.ptr<const float>();
  a.top_k = p.top_k.ptr<const int32_t>();
  a.top_p = p.top_p.ptr<const float>();
  a.uniform = p.uniform.data;
  a.uniform_bits = p.uniform.dtype == DType::kI64;
  a.out = p.out_ids.ptr<int32_t>();
  a.vocab = p.logits.shape[1];
  a.id_bits = 1;
  while ((int64_t(1) << a.id_bits) < a.vocab) ++a.id_bits;
  bool launched = dispatch_act(p.logits.dtype, [&](auto t) {
    using T = decltype(t);
    sample_kernel<T><<<unsigned(rows), kThreads, 0, stream>>>(a);
  });
  if (!launched) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace moex::kernels
