// RMSNorm: one block per row; the sum of squares is reduced in a fixed order (per-thread strided
// partials, warp butterflies, warps summed in index order), and the block size depends only on
// dim, so a row's result never depends on the other rows.
#include "kernels/common/pdl.cuh"
#include "kernels/elementwise/elementwise.h"
#include "kernels/norm/rms_norm.cuh"

namespace moex::kernels {
namespace {

// Row r lives at (r / inner) * s_outer + (r % inner) * s_inner (covers 2-D and [t, heads, d] views).
struct RowLayout {
  int64_t inner, s_outer, s_inner;
  __device__ int64_t offset(int64_t r) const { return (r / inner) * s_outer + (r % inner) * s_inner; }
};

template <class TX, class TW, class TO>
__global__ void rms_norm_kernel(const TX* x, RowLayout lx, const TW* w, TO* out, RowLayout lo, int dim, float eps) {
  __shared__ float warp_part[32];
  pdl::trigger();  // the next GEMM may start prefetching its weights (pdl.cuh)
  const int64_t r = blockIdx.x;
  const TX* xr = x + lx.offset(r);
  float ss = 0.f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float v = to_f32(xr[c]);
    ss = fmaf(v, v, ss);
  }
  const float inv = rms_norm_inv(ss, dim, eps, warp_part);
  TO* orow = out + lo.offset(r);
  // Every thread read all of its inputs above before any write: safe when out aliases x.
  for (int c = threadIdx.x; c < dim; c += blockDim.x) orow[c] = from_f32<TO>(rms_norm_scale(to_f32(xr[c]), inv, to_f32(w[c])));
}

RowLayout layout_of(const Tensor& t) {
  if (t.ndim == 3) return {t.shape[1], t.stride[0], t.stride[1]};
  return {1, t.stride[0], 0};
}

}  // namespace

cudaError_t launch_rms_norm(const ops::RmsNormParams& p, cudaStream_t stream) {
  const int dim = int(p.x.shape[p.x.ndim - 1]);
  int64_t rows = 1;
  for (int d = 0; d < p.x.ndim - 1; ++d) rows *= p.x.shape[d];
  if (rows == 0) return cudaSuccess;
  const int threads = rms_norm_threads(dim);
  bool ok_w = false, ok_o = false;
  const bool ok_x = dispatch_act(p.x.dtype, [&](auto tx) {
    using TX = decltype(tx);
    ok_w = dispatch_float(p.weight.dtype, [&](auto tw) {
      using TW = decltype(tw);
      ok_o = dispatch_act(p.out.dtype, [&](auto to) {
        using TO = decltype(to);
        rms_norm_kernel<TX, TW, TO><<<unsigned(rows), threads, 0, stream>>>(
            p.x.ptr<TX>(), layout_of(p.x), p.weight.ptr<TW>(), p.out.ptr<TO>(), layout_of(p.out), dim, p.eps);
      });
    });
  });
  return ok_x && ok_w && ok_o ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
