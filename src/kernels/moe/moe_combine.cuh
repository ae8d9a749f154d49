// The weighted partials and the slot-order combine of fused MoE, shared by the prefill path
// (fused_moe.cu) and the decode path (moe_decode.cu) so that a token gets the same bits on both:
//   part[t * top_k + j, c] = P(w[t, j] * y[t * top_k + j, c])   one fp32 product (never an FMA),
//                                                                rounded once to P
//   out[t, c] = O(sum over local slots j = 0..top_k-1, in slot order, of float(part[...]))
// y is the fp32 down-projection accumulator of the slot; P is out's dtype (bf16 or f32; f32 on
// request for timing), O rounds to out's dtype; the fp32 sum starts from 0. Slots whose expert
// is not local are skipped (their partial is never written). src/backend/cpu/fused_moe.cpp
// computes the same expressions. The GEMM 2 epilogues write part, so the combine reads
// 2 bytes per slot and column instead of 4 (docs/kernels/fused_moe.md, "Prefill path").
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/dtype.cuh"

namespace moex::kernels::moe {

enum class PartKind : int { kF32 = 0, kBF16 = 1 };

// The weighted partial before its rounding: __fmul_rn keeps the compiler from fusing it into a
// later add, so the CPU reference can reproduce it.
__device__ __forceinline__ float weighted(float w, float y) { return __fmul_rn(w, y); }

// part[idx] = P(v); part [slots, hidden] of kind k.
__device__ __forceinline__ void store_part(void* part, PartKind k, int64_t idx, float v) {
  if (k == PartKind::kBF16) static_cast<__nv_bfloat16*>(part)[idx] = __float2bfloat16_rn(v);
  else static_cast<float*>(part)[idx] = v;
}
// part[idx], part[idx + 1] (idx even).
__device__ __forceinline__ void store_part2(void* part, PartKind k, int64_t idx, float v0, float v1) {
  if (k == PartKind::kBF16)
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(part) + idx) = __floats2bfloat162_rn(v0, v1);
  else
    *reinterpret_cast<float2*>(static_cast<float*>(part) + idx) = make_float2(v0, v1);
}
// part[idx .. idx + 8) (idx a multiple of 8, part 16-byte aligned).
__device__ __forceinline__ void store_part8(void* part, PartKind k, int64_t idx, const float (&v)[8]) {
  if (k == PartKind::kBF16) {
    uint4 q;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&q);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(part) + idx) = q;
  } else {
    float4* d = reinterpret_cast<float4*>(static_cast<float*>(part) + idx);
    d[0] = make_float4(v[0], v[1], v[2], v[3]);
    d[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]);
template <>
__device__ __forceinline__ void load8<float>(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 q = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&q);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
template <class T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]);
template <>
__device__ __forceinline__ void store8<float>(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
template <>
__device__ __forceinline__ void store8<__nv_bfloat16>(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 q;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&q);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = q;
}

__device__ __forceinline__ int combine_local_expert(int id, const int32_t* map, int num_experts, int local_experts) {
  if (map) return (id >= 0 && id < num_experts) ? map[id] : -1;
  return (id >= 0 && id < local_experts) ? id : -1;
}

struct CombineArgs {
  const void* part;     // [tokens * top_k, hidden] PartKind rows by slot index
  const int32_t* ids;   // [tokens, top_k] row stride s_ids
  int64_t s_ids;
  const int32_t* map;   // [num_experts] or nullptr (identity)
  int num_experts, local_experts, top_k, hidden;
  bool vec;             // hidden % 8 == 0 and out rows 16-byte aligned: 8 columns per thread
  void* out;            // [tokens, hidden] TOut, row stride s_out
  int64_t s_out;
};
constexpr int kCombineThreads = 256;

namespace {  // one instance per .cu file that launches it (internal linkage, no registration clash)

// One block per token. Vector and scalar forms do the same per-element adds in the same order.
template <class TOut, class TPart, bool kPdlWait>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(CombineArgs a) {
  if constexpr (kPdlWait) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");  // partials complete and visible
#endif
  }
  const int64_t t = blockIdx.x;
  const TPart* part = static_cast<const TPart*>(a.part) + t * a.top_k * int64_t(a.hidden);  // [top_k, hidden]
  TOut* out = static_cast<TOut*>(a.out) + t * a.s_out;                                      // [hidden]
  const int32_t* ids = a.ids + t * a.s_ids;                                                  // [top_k]
  if (a.vec) {
    for (int c = threadIdx.x * 8; c < a.hidden; c += kCombineThreads * 8) {
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = 0.f;
      for (int j = 0; j < a.top_k; ++j) {
        if (combine_local_expert(ids[j], a.map, a.num_experts, a.local_experts) < 0) continue;
        float v[8];
        load8<TPart>(part + int64_t(j) * a.hidden + c, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], v[i]);
      }
      store8<TOut>(out + c, acc);
    }
  } else {
    for (int c = threadIdx.x; c < a.hidden; c += kCombineThreads) {
      float acc = 0.f;
      for (int j = 0; j < a.top_k; ++j) {
        if (combine_local_expert(ids[j], a.map, a.num_experts, a.local_experts) < 0) continue;
        acc = __fadd_rn(acc, to_f32<TPart>(part[int64_t(j) * a.hidden + c]));
      }
      out[c] = from_f32<TOut>(acc);
    }
  }
}

}  // namespace

inline bool combine_vec_ok(const void* out, int64_t s_out, int hidden) {
  return hidden % 8 == 0 && s_out % 8 == 0 && (reinterpret_cast<uintptr_t>(out) & 15) == 0;
}

}  // namespace moex::kernels::moe
