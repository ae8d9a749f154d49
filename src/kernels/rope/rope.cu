// Rotary embedding in place: one thread per (token, head, rotated pair).
#include "kernels/common/dtype.cuh"
#include "kernels/elementwise/elementwise.h"
#include "kernels/rope/rope.cuh"

namespace moex::kernels {
namespace {

template <class T>
__global__ void rope_kernel(T* x, int64_t s_tok, int64_t s_head, int heads, const int32_t* positions,
                            const float* inv_freq, int half, float attn_scale, bool interleaved) {
  const int64_t th = blockIdx.x;  // token * heads + head
  const int64_t t = th / heads, h = th % heads;
  const int i = threadIdx.x + blockIdx.y * blockDim.x;
  if (i >= half) return;
  float c, s;
  rope_cos_sin(positions[t], inv_freq[i], attn_scale, &c, &s);
  T* row = x + t * s_tok + h * s_head;
  int i0, i1;
  rope_pair(i, half, interleaved, &i0, &i1);
  float y0, y1;
  rope_rotate(to_f32(row[i0]), to_f32(row[i1]), c, s, &y0, &y1);
  row[i0] = from_f32<T>(y0);
  row[i1] = from_f32<T>(y1);
}

}  // namespace

cudaError_t launch_rope(const ops::RopeParams& p, cudaStream_t stream) {
  const int64_t n = p.x.shape[0];
  const int heads = int(p.x.shape[1]);
  const int half = int(p.inv_freq.shape[0]);
  if (n == 0 || heads == 0 || half == 0) return cudaSuccess;
  const int threads = half >= 128 ? 128 : (half + 31) / 32 * 32;
  const dim3 grid(unsigned(n * heads), unsigned(ceil_div(half, threads)));
  const bool ok = dispatch_act(p.x.dtype, [&](auto tx) {
    using T = decltype(tx);
    rope_kernel<T><<<grid, threads, 0, stream>>>(p.x.ptr<T>(), p.x.stride[0], p.x.stride[1], heads,
                                                 p.positions.ptr<int32_t>(), p.inv_freq.ptr<float>(), half,
                                                 p.attn_scale, p.interleaved);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
