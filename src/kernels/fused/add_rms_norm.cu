// Residual add + RMSNorm in one kernel. Each element is computed with the instructions of the
// separate kernels (add_kernel's __fadd_rn(a, __fmul_rn(1, b)), then rms_norm.cuh), and a row
// runs on rms_norm_threads(dim) threads with the same column-to-thread assignment as
// rms_norm_kernel, so the partial sums, the reduction order and therefore every bit of both
// outputs are those of add followed by rms_norm.
#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/fused/fused.h"
#include "kernels/norm/rms_norm.cuh"

namespace moex::kernels {
namespace {

template <class T, class TW>
__global__ void add_rms_norm_kernel(T* residual, int64_t s_res, const T* branch, int64_t s_branch, const TW* w,
                                    T* out, int64_t s_out, int dim, float eps) {
  __shared__ float warp_part[32];
  pdl::trigger();  // the next GEMM may start prefetching its weights (pdl.cuh)
  const int64_t r = blockIdx.x;
  T* res = residual + r * s_res;             // [dim]
  const T* br = branch + r * s_branch;       // [dim]
  float ss = 0.f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const T h = from_f32<T>(__fadd_rn(to_f32(res[c]), __fmul_rn(1.f, to_f32(br[c]))));
    res[c] = h;
    const float v = to_f32(h);
    ss = fmaf(v, v, ss);
  }
  const float inv = rms_norm_inv(ss, dim, eps, warp_part);  // a barrier: all of branch was read
  T* o = out + r * s_out;                    // [dim]
  // A thread reads back only the residual elements it wrote itself.
  for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = from_f32<T>(rms_norm_scale(to_f32(res[c]), inv, to_f32(w[c])));
}

}  // namespace

cudaError_t launch_add_rms_norm(const ops::AddRmsNormParams& p, cudaStream_t stream) {
  const int64_t rows = p.residual.shape[0];
  const int dim = int(p.residual.shape[1]);
  if (rows == 0 || dim == 0) return cudaSuccess;
  bool ok_w = false;
  const bool ok = dispatch_act(p.residual.dtype, [&](auto tx) {
    using T = decltype(tx);
    ok_w = dispatch_float(p.weight.dtype, [&](auto tw) {
      using TW = decltype(tw);
      add_rms_norm_kernel<T, TW><<<unsigned(rows), rms_norm_threads(dim), 0, stream>>>(
          p.residual.ptr<T>(), p.residual.stride[0], p.branch.ptr<T>(), p.branch.stride[0], p.weight.ptr<TW>(),
          p.out.ptr<T>(), p.out.stride[0], dim, p.eps);
    });
  });
  return ok && ok_w ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
