// Embedding, strided copy/cast, residual add, SwiGLU and cache_write: memory-bound, one pass.
#include <algorithm>

#include "core/random.h"
#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/elementwise/elementwise.h"

namespace moex::kernels {
namespace {

constexpr int kThreads = 256;

// out[i, :] = table[ids[i], :]; an id outside [0, vocab) yields a NaN row (cannot be reported
// from the device without a host sync; NaN makes it visible downstream).
template <class TT, class TO>
__global__ void embedding_kernel(const int32_t* ids, const TT* table, int64_t s_table, int64_t vocab, int hidden,
                                 TO* out, int64_t s_out) {
  const int i = blockIdx.x;
  const int id = ids[i];
  const bool ok = id >= 0 && id < vocab;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x)
    out[int64_t(i) * s_out + c] = from_f32<TO>(ok ? to_f32(table[int64_t(id) * s_table + c]) : __int_as_float(0x7fc00000));
}

struct Shape4 {
  int64_t size[4];
  int64_t src_stride[4];
  int64_t dst_stride[4];
};

template <class TS, class TD>
__global__ void copy_kernel(const TS* src, TD* dst, Shape4 s, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, so = 0, dof = 0;
#pragma unroll
    for (int d = 3; d >= 0; --d) {
      const int64_t c = rem % s.size[d];
      rem /= s.size[d];
      so += c * s.src_stride[d];
      dof += c * s.dst_stride[d];
    }
    dst[dof] = from_f32<TD>(to_f32(src[so]));
  }
}

// Explicit _rn ops: no FMA contraction, so the result is the CPU's a + s * b bit for bit.
template <class TA, class TB, class TO>
__global__ void add_kernel(const TA* a, int64_t sa, const TB* b, int64_t sb, TO* out, int64_t so, int dim,
                           float b_scale) {
  const int r = blockIdx.y;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < dim; c += gridDim.x * blockDim.x)
    out[int64_t(r) * so + c] = from_f32<TO>(__fadd_rn(to_f32(a[int64_t(r) * sa + c]), __fmul_rn(b_scale, to_f32(b[int64_t(r) * sb + c]))));
}

template <class TX, class TO>
__global__ void silu_mul_kernel(const TX* x, int64_t sx, TO* out, int64_t so, int inter) {
  const int r = blockIdx.y;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < inter; c += gridDim.x * blockDim.x) {
    const float g = to_f32(x[int64_t(r) * sx + c]);
    const float u = to_f32(x[int64_t(r) * sx + inter + c]);
    out[int64_t(r) * so + c] = from_f32<TO>(g / (1.f + expf(-g)) * u);
  }
}

// dst[slot[t], :] = src[t, :]; negative slots (padding) are skipped.
template <class TS, class TD>
__global__ void cache_write_kernel(const TS* src, int64_t s_src, const int32_t* slots, TD* dst, int64_t s_dst,
                                   int64_t num_slots, int dim) {
  const int t = blockIdx.x;
  const int slot = slots[t];
  if (slot < 0 || slot >= num_slots) return;
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    dst[int64_t(slot) * s_dst + c] = from_f32<TD>(to_f32(src[int64_t(t) * s_src + c]));
}

// out[i] = round(uniform_element(stream, i, half_width)) (core/random.h, constexpr, compiled for
// the device): the same double as the CPU reference.
template <class TO>
__global__ void random_uniform_kernel(TO* out, int64_t n, uint64_t stream, double half_width) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = from_f32<TO>(float(uniform_element(stream, uint64_t(i), half_width)));
  }
}

int row_threads(int64_t dim) { return dim >= kThreads ? kThreads : int((dim + 31) / 32 * 32); }
dim3 row_grid(int64_t dim, int64_t rows) { return dim3(ceil_div(dim, 4 * kThreads) > 0 ? ceil_div(dim, 4 * kThreads) : 1, unsigned(rows)); }

}  // namespace

cudaError_t launch_embedding(const ops::EmbeddingParams& p, cudaStream_t stream) {
  const int64_t n = p.ids.shape[0];
  const int hidden = int(p.table.shape[1]);
  if (n == 0) return cudaSuccess;
  bool inner = false;
  const bool ok = dispatch_float(p.table.dtype, [&](auto tt) {
    using TT = decltype(tt);
    inner = dispatch_act(p.out.dtype, [&](auto to) {
      using TO = decltype(to);
      embedding_kernel<TT, TO><<<unsigned(n), row_threads(hidden), 0, stream>>>(
          p.ids.ptr<int32_t>(), p.table.ptr<TT>(), p.table.stride[0], p.table.shape[0], hidden, p.out.ptr<TO>(),
          p.out.stride[0]);
    });
  });
  return ok && inner ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_copy(const ops::CopyParams& p, cudaStream_t stream) {
  Shape4 s{};
  const int pad = 4 - p.src.ndim;
  for (int d = 0; d < 4; ++d) {
    const int sd = d - pad;
    s.size[d] = sd < 0 ? 1 : p.src.shape[sd];
    s.src_stride[d] = sd < 0 ? 0 : p.src.stride[sd];
    s.dst_stride[d] = sd < 0 ? 0 : p.dst.stride[sd];
  }
  const int64_t total = p.src.numel();
  if (total == 0) return cudaSuccess;
  const int64_t blocks64 = (total + kThreads - 1) / kThreads;
  const unsigned blocks = unsigned(blocks64 < 65536 ? blocks64 : 65536);
  bool inner = false;
  const bool ok = dispatch_float(p.src.dtype, [&](auto ts) {
    using TS = decltype(ts);
    inner = dispatch_float(p.dst.dtype, [&](auto td) {
      using TD = decltype(td);
      copy_kernel<TS, TD><<<blocks, kThreads, 0, stream>>>(p.src.ptr<TS>(), p.dst.ptr<TD>(), s, total);
    });
  });
  return ok && inner ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_add(const ops::AddParams& p, cudaStream_t stream) {
  const int64_t rows = p.out.shape[0];
  const int dim = int(p.out.shape[1]);
  if (rows == 0 || dim == 0) return cudaSuccess;
  bool ok_b = false, ok_o = false;
  const bool ok_a = dispatch_act(p.a.dtype, [&](auto ta) {
    using TA = decltype(ta);
    ok_b = dispatch_act(p.b.dtype, [&](auto tb) {
      using TB = decltype(tb);
      ok_o = dispatch_act(p.out.dtype, [&](auto to) {
        using TO = decltype(to);
        add_kernel<TA, TB, TO><<<row_grid(dim, rows), kThreads, 0, stream>>>(
            p.a.ptr<TA>(), p.a.stride[0], p.b.ptr<TB>(), p.b.stride[0], p.out.ptr<TO>(), p.out.stride[0], dim,
            p.b_scale);
      });
    });
  });
  return ok_a && ok_b && ok_o ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_silu_mul(const ops::SiluMulParams& p, cudaStream_t stream) {
  const int64_t rows = p.out.shape[0];
  const int inter = int(p.out.shape[1]);
  if (rows == 0 || inter == 0) return cudaSuccess;
  bool ok_o = false;
  const bool ok_x = dispatch_act(p.x.dtype, [&](auto tx) {
    using TX = decltype(tx);
    ok_o = dispatch_act(p.out.dtype, [&](auto to) {
      using TO = decltype(to);
      silu_mul_kernel<TX, TO><<<row_grid(inter, rows), kThreads, 0, stream>>>(p.x.ptr<TX>(), p.x.stride[0],
                                                                              p.out.ptr<TO>(), p.out.stride[0], inter);
    });
  });
  return ok_x && ok_o ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_random_uniform(const ops::RandomUniformParams& p, cudaStream_t stream) {
  const int64_t n = p.out.shape[0];
  if (n == 0) return cudaSuccess;
  const unsigned blocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(sm_count()) * 16));
  const bool ok = dispatch_act(p.out.dtype, [&](auto to) {
    using TO = decltype(to);
    random_uniform_kernel<TO><<<blocks, kThreads, 0, stream>>>(p.out.ptr<TO>(), n, p.stream, double(p.half_width));
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_cache_write(const ops::CacheWriteParams& p, cudaStream_t stream) {
  const int64_t n = p.src.shape[0];
  const int dim = int(p.src.shape[1]);
  if (n == 0) return cudaSuccess;
  bool inner = false;
  const bool ok = dispatch_float(p.src.dtype, [&](auto ts) {
    using TS = decltype(ts);
    inner = dispatch_float(p.dst.dtype, [&](auto td) {
      using TD = decltype(td);
      cache_write_kernel<TS, TD><<<unsigned(n), row_threads(dim), 0, stream>>>(
          p.src.ptr<TS>(), p.src.stride[0], p.slot_mapping.ptr<int32_t>(), p.dst.ptr<TD>(), p.dst.stride[0],
          p.dst.shape[0], dim);
    });
  });
  return ok && inner ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
