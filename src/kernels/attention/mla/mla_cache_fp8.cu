// Quantizing cache_write (contract: ops::CacheWriteParams::dst_scale). One warp per written row:
// amax over the row, the power-of-two scale read off amax's bits exactly as the CPU backend
// does (src/backend/cpu/attention.cpp fp8_scale_exp), then e4m3 RNE satfinite of x * 2^-e
// (exact scaling), so both backends write the same bytes and scales.
#include "kernels/attention/mla/mla_cache_fp8.h"
#include "kernels/common/dtype.cuh"

namespace moex::kernels {
namespace {

// The smallest e with amax <= 448 * 2^e (448 = 1.75 * 2^8); 0 for zero, subnormal or
// non-finite amax; never below -126 (a normal f32 scale).
__device__ __forceinline__ int fp8_scale_exp(float amax) {
  const uint32_t b = __float_as_uint(amax);
  const int biased = int((b >> 23) & 0xffu);
  if (biased == 0 || biased == 0xff) return 0;
  return max(biased - 127 - 8 + ((b & 0x7fffffu) > 0x600000u ? 1 : 0), -126);
}

template <class TS>
__global__ void __launch_bounds__(32) cache_write_fp8_kernel(const TS* src, int64_t s_src,  // src [n, dim]
                                                              const int32_t* slots,            // [n]
                                                              __nv_fp8_e4m3* dst, int64_t s_dst,  // [num_slots, dim]
                                                              float* scale, int64_t s_scale,      // [num_slots]
                                                              int dim) {
  const int64_t t = blockIdx.x;
  const TS* row = src + t * s_src;  // [dim]
  float amax = 0.f;
  for (int c = threadIdx.x; c < dim; c += 32) amax = fmaxf(amax, fabsf(to_f32(row[c])));  // fmaxf drops NaN
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const int e = fp8_scale_exp(amax);
  const float inv = __int_as_float((127 - e) << 23);  // 2^-e, normal for e in [-126, 127)
  const int64_t s = slots[t];
  __nv_fp8_e4m3* out = dst + s * s_dst;  // [dim]
  for (int c = threadIdx.x; c < dim; c += 32) out[c] = from_f32<__nv_fp8_e4m3>(to_f32(row[c]) * inv);
  if (threadIdx.x == 0) scale[s * s_scale] = __int_as_float((127 + e) << 23);
}

}  // namespace

cudaError_t launch_cache_write_fp8(const ops::CacheWriteParams& p, cudaStream_t stream) {
  const int64_t n = p.src.shape[0];
  if (n == 0) return cudaSuccess;
  const bool ok = dispatch_float(p.src.dtype, [&](auto ts) {
    using TS = decltype(ts);
    cache_write_fp8_kernel<TS><<<unsigned(n), 32, 0, stream>>>(p.src.ptr<TS>(), p.src.stride[0], p.slot_mapping.ptr<int32_t>(),
                                                               p.dst.ptr<__nv_fp8_e4m3>(), p.dst.stride[0],
                                                               p.dst_scale.ptr<float>(), p.dst_scale.stride[0],
                                                               int(p.src.shape[1]));
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
