// Dense (optionally batched) out = alpha * x @ w^T (+ out). See mma_pipeline.cuh for the K
// order, which the pipelined (many rows) and WMMA (few rows, unaligned) tiles share.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/gemm/cublaslt_gemm.h"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/mma_pipeline.cuh"
#include "kernels/gemm/mma_tile.cuh"
#include "kernels/gemm/router_gemm.h"
#include "kernels/gemm/skinny_gemm.h"
#include "kernels/gemm/wgmma_pipeline.cuh"

namespace moex::kernels {
namespace {

struct DenseArgs {
  const void* x; int64_t sxb, sxm;   // x [b, m, k], k contiguous
  const void* w; int64_t swb, swn;   // w [b, n, k], k contiguous
  void* out; int64_t sob, som, son;  // out [b, m, n]
  int m, n, k;
  float alpha;
  bool accumulate;
  bool vec_out;  // son == 1, out and its batch / row strides aligned for 4-element vectors
};

// Four output elements stored (or loaded) as one 8- or 16-byte access.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Row pointers of a block's tile: A rows m0.. of x, B rows n0.. of w (batch b), nullptr past m / n.
template <int BM, int BN>
__device__ __forceinline__ void set_rows(const DenseArgs& a, int b, int m0, int n0, const __nv_bfloat16** a_row,
                                         const __nv_bfloat16** b_row) {
  const auto* x = static_cast<const __nv_bfloat16*>(a.x) + b * a.sxb;  // [m, k]
  const auto* w = static_cast<const __nv_bfloat16*>(a.w) + b * a.swb;  // [n, k]
  for (int r = threadIdx.x; r < BM; r += blockDim.x) a_row[r] = (m0 + r < a.m) ? x + int64_t(m0 + r) * a.sxm : nullptr;
  for (int c = threadIdx.x; c < BN; c += blockDim.x) b_row[c] = (n0 + c < a.n) ? w + int64_t(n0 + c) * a.swn : nullptr;
}

// One element per thread and step: out = alpha * C (+ out), C element (r, c) from c_at.
template <class TOut, int BM, int BN, class CAt>
__device__ __forceinline__ void store_tile(const DenseArgs& a, int b, int m0, int n0, CAt c_at) {
  TOut* out = static_cast<TOut*>(a.out) + b * a.sob;  // [m, n]
  for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
    const int r = i / BN, c = i % BN;
    if (m0 + r >= a.m || n0 + c >= a.n) continue;
    TOut* o = out + int64_t(m0 + r) * a.som + int64_t(n0 + c) * a.son;
    float v = a.alpha * c_at(r, c);
    if (a.accumulate) v = to_f32(*o) + v;
    *o = from_f32<TOut>(v);
  }
}

template <class Cfg, bool kVec, class TOut>
__global__ void __launch_bounds__(gemm::kThreads) dense_mma_kernel(DenseArgs a) {
  __shared__ __align__(128) gemm::SmemTile<Cfg> s;
  const int b = blockIdx.z;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  set_rows<Cfg::BM, Cfg::BN>(a, b, m0, n0, s.a_row, s.b_row);
  __syncthreads();
  gemm::mma_tile<Cfg, kVec>(s, a.k);
  store_tile<TOut, Cfg::BM, Cfg::BN>(a, b, m0, n0, [&](int r, int c) { return s.c[r][c]; });
}

// Pipelined tile (mma_pipeline.cuh): rows 16-byte aligned and k % 8 == 0.
template <class Cfg, class TOut>
__global__ void __launch_bounds__(gemm::kPipeThreads, Cfg::MIN_BLOCKS) dense_pipe_kernel(DenseArgs a) {
  extern __shared__ __align__(128) char smem[];
  const gemm::PipeSmem<Cfg> s{smem};
  const int b = blockIdx.z;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  set_rows<Cfg::BM, Cfg::BN>(a, b, m0, n0, s.a_row(), s.b_row());
  __syncthreads();
  gemm::pipe_tile<Cfg>(s, a.k);
  store_tile<TOut, Cfg::BM, Cfg::BN>(a, b, m0, n0, [&](int r, int c) { return s.c(r, c); });
}

// wgmma tile (wgmma_pipeline.cuh, sm_90a): same operands and epilogue as dense_pipe_kernel.
template <class Cfg, class TOut>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) dense_wg_kernel(DenseArgs a) {
  extern __shared__ __align__(128) char smem[];
  const auto s = gemm::WgSmem<Cfg>::from(smem);
  const int b = blockIdx.z;
  const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
  set_rows<Cfg::BM, Cfg::BN>(a, b, m0, n0, s.a_row(), s.b_row());
  __syncthreads();
  gemm::wg_tile<Cfg>(s, a.k);
  TOut* out = static_cast<TOut*>(a.out) + b * a.sob;  // [m, n]
  if (a.vec_out) {  // 4 columns per thread and step: one 16-byte C read, one vector store
    constexpr int kQuads = Cfg::BN / 4;
    for (int i = threadIdx.x; i < Cfg::BM * kQuads; i += blockDim.x) {
      const int r = i / kQuads, c = (i % kQuads) * 4;
      if (m0 + r >= a.m || n0 + c >= a.n) continue;
      TOut* o = out + int64_t(m0 + r) * a.som + (n0 + c);
      const float4 cv = *reinterpret_cast<const float4*>(&s.c(r, c));
      const float f[4] = {a.alpha * cv.x, a.alpha * cv.y, a.alpha * cv.z, a.alpha * cv.w};
      if (n0 + c + 4 <= a.n) {
        Vec4<TOut> ov;
        if (a.accumulate) ov = *reinterpret_cast<const Vec4<TOut>*>(o);
#pragma unroll
        for (int q = 0; q < 4; ++q) ov.v[q] = from_f32<TOut>(a.accumulate ? to_f32(ov.v[q]) + f[q] : f[q]);
        *reinterpret_cast<Vec4<TOut>*>(o) = ov;
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q)  // constant indices keep f in registers
          if (n0 + c + q < a.n) o[q] = from_f32<TOut>(a.accumulate ? to_f32(o[q]) + f[q] : f[q]);
      }
    }
    return;
  }
  store_tile<TOut, Cfg::BM, Cfg::BN>(a, b, m0, n0, [&](int r, int c) { return s.c(r, c); });
}

// Fallback for f32 / f16 operands: 16x16 output tile per block, fp32 FMA in ascending K order.
constexpr int kSimtTile = 16;
template <class TX, class TW, class TOut>
__global__ void dense_simt_kernel(DenseArgs a) {
  __shared__ float xs[kSimtTile][kSimtTile + 1];  // (m, k)
  __shared__ float ws[kSimtTile][kSimtTile + 1];  // (n, k)
  const int b = blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m = blockIdx.y * kSimtTile + ty, n = blockIdx.x * kSimtTile + tx;
  const TX* x = static_cast<const TX*>(a.x) + b * a.sxb;
  const TW* w = static_cast<const TW*>(a.w) + b * a.swb;
  float acc = 0.f;
  for (int k0 = 0; k0 < a.k; k0 += kSimtTile) {
    const int xm = blockIdx.y * kSimtTile + ty, wn = blockIdx.x * kSimtTile + ty;
    xs[ty][tx] = (xm < a.m && k0 + tx < a.k) ? to_f32(x[int64_t(xm) * a.sxm + k0 + tx]) : 0.f;
    ws[ty][tx] = (wn < a.n && k0 + tx < a.k) ? to_f32(w[int64_t(wn) * a.swn + k0 + tx]) : 0.f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtTile; ++kk) acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
    __syncthreads();
  }
  if (m < a.m && n < a.n) {
    TOut* o = static_cast<TOut*>(a.out) + b * a.sob + int64_t(m) * a.som + int64_t(n) * a.son;
    float v = a.alpha * acc;
    if (a.accumulate) v = to_f32(*o) + v;
    *o = from_f32<TOut>(v);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <class Cfg, class TOut>
void launch_mma(const DenseArgs& a, int batch, bool vec, cudaStream_t stream) {
  const dim3 grid(ceil_div(a.n, Cfg::BN), ceil_div(a.m, Cfg::BM), batch);
  if (vec) dense_mma_kernel<Cfg, true, TOut><<<grid, gemm::kThreads, 0, stream>>>(a);
  else dense_mma_kernel<Cfg, false, TOut><<<grid, gemm::kThreads, 0, stream>>>(a);
}

template <class Cfg, class TOut>
cudaError_t launch_pipe(const DenseArgs& a, int batch, cudaStream_t stream) {
  auto* kernel = dense_pipe_kernel<Cfg, TOut>;
  const cudaError_t e = gemm::pipe_prepare<Cfg>(kernel);
  if (e != cudaSuccess) return e;
  const dim3 grid(ceil_div(a.n, Cfg::BN), ceil_div(a.m, Cfg::BM), batch);
  kernel<<<grid, gemm::kPipeThreads, Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class Cfg, class TOut>
cudaError_t launch_wg(const DenseArgs& a, int batch, cudaStream_t stream) {
  auto* kernel = dense_wg_kernel<Cfg, TOut>;
  const cudaError_t e = gemm::wg_prepare<Cfg>(kernel);
  if (e != cudaSuccess) return e;
  const dim3 grid(ceil_div(a.n, Cfg::BN), ceil_div(a.m, Cfg::BM), batch);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class TOut>
cudaError_t launch_bf16(const DenseArgs& a, int batch, bool vec, cudaStream_t stream) {
  // The tile shape only changes how much work is wasted on padding rows, never the bits.
  gemm::PipeTile t = gemm::pipe_tile_override();
  if constexpr (std::is_same_v<TOut, float>) {
    // Router logits (f32 out, n <= 256): the router kernel for every m, with its own K order
    // (router_gemm.cu); chosen from the shape only, so a row's bits do not depend on the batch.
    const gemm::RouterArgs ra{a.x, a.sxb, a.sxm, a.w, a.swb, a.swn, static_cast<float*>(a.out), a.sob, a.som, a.son,
                              a.m, a.n, a.k, a.alpha, a.accumulate};
    if (gemm::router_gemm_applies(ra)) return gemm::launch_router_gemm(ra, batch, stream);
  }
  const gemm::SkinnyArgs sa{a.x, a.sxb, a.sxm, a.w, a.swb, a.swn, a.out, a.sob, a.som, a.son,
                            a.m, a.n, a.k, a.alpha, a.accumulate};
  // Small batches on sm_90a: the wgmma streaming kernel (skinny_wgmma.cu) for 17..64 rows, and
  // up to 256 while its grid fits in one wave of two blocks per SM (it re-reads the weights per
  // 64-row tile, mostly from L2; the 128-row tiles give narrow GEMMs too few blocks; qkv x 128
  // at 320 blocks measured slower than WgSquare). Not when a tile is forced or
  // MOEX_GEMM_DECODE=mma; m <= 16 takes it only with MOEX_GEMM_DECODE=wg.
  const gemm::DecodeChoice dc = gemm::decode_choice();
  bool wg_rows = false;
  if (a.m <= 16) wg_rows = t != gemm::PipeTile::kWmma && dc == gemm::DecodeChoice::kWg;
  else if (t == gemm::PipeTile::kAuto && dc != gemm::DecodeChoice::kMma && a.m <= gemm::kSkinnyWgmmaMaxRows)
    wg_rows = a.m <= 64 || dc == gemm::DecodeChoice::kWg || gemm::skinny_wgmma_blocks(sa, batch) <= 2 * int64_t(sm_count());
  if (wg_rows && gemm::wgmma_enabled() && gemm::skinny_wgmma_applies(sa))
    return gemm::launch_skinny_wgmma(sa, batch, std::is_same_v<TOut, float>, stream);
  if (a.m <= 16) {
    // Decode: the mma.sync streaming kernel (skinny_gemm.cu, same bits);
    // MOEX_GEMM_TILE=wmma keeps the WMMA tile for comparison.
    if (t != gemm::PipeTile::kWmma && gemm::skinny_gemm_applies(sa))
      return gemm::launch_skinny_gemm(sa, batch, std::is_same_v<TOut, float>, stream);
    launch_mma<gemm::TileSmall, TOut>(a, batch, vec, stream);
    return cudaGetLastError();
  }
  if (!vec || a.k % 8 != 0 || t == gemm::PipeTile::kWmma) {
    launch_mma<gemm::TileLarge, TOut>(a, batch, vec, stream);
    return cudaGetLastError();
  }
  const int64_t wide_blocks = int64_t(ceil_div(a.m, 128)) * ceil_div(a.n, 256) * batch;
  if (t == gemm::PipeTile::kAuto && a.m > 64 && gemm::wgmma_enabled())
    t = wide_blocks >= 2 * int64_t(sm_count()) ? gemm::PipeTile::kWgWide : gemm::PipeTile::kWgSquare;
  if (t == gemm::PipeTile::kAuto) {
    t = a.m <= 64                          ? gemm::PipeTile::kShort
        : wide_blocks >= 2 * int64_t(sm_count()) ? gemm::PipeTile::kWide
                                               : gemm::PipeTile::kSquare;
  }
  if (!gemm::wgmma_available()) t = gemm::pipe_equivalent(t);
  switch (t) {
    case gemm::PipeTile::kWgWide: return launch_wg<gemm::WgWide, TOut>(a, batch, stream);
    case gemm::PipeTile::kWgSquare: return launch_wg<gemm::WgSquare, TOut>(a, batch, stream);
    case gemm::PipeTile::kWide: return launch_pipe<gemm::PipeWide, TOut>(a, batch, stream);
    case gemm::PipeTile::kWide4: return launch_pipe<gemm::PipeWide4, TOut>(a, batch, stream);
    case gemm::PipeTile::kShort: return launch_pipe<gemm::PipeShort, TOut>(a, batch, stream);
    default: return launch_pipe<gemm::PipeSquare, TOut>(a, batch, stream);
  }
}

}  // namespace

namespace gemm {
DecodeChoice decode_choice() {
  const char* v = std::getenv("MOEX_GEMM_DECODE");
  if (v == nullptr) return DecodeChoice::kAuto;
  if (std::strcmp(v, "mma") == 0) return DecodeChoice::kMma;
  if (std::strcmp(v, "wg") == 0) return DecodeChoice::kWg;
  return DecodeChoice::kAuto;
}
// Read at every launch (a sub-microsecond scan) so that tests can switch tiles in one process.
PipeTile pipe_tile_override() {
  const char* v = std::getenv("MOEX_GEMM_TILE");
  if (v == nullptr) return PipeTile::kAuto;
  if (std::strcmp(v, "wide") == 0) return PipeTile::kWide;
  if (std::strcmp(v, "wide4") == 0) return PipeTile::kWide4;
  if (std::strcmp(v, "wmma") == 0) return PipeTile::kWmma;
  if (std::strcmp(v, "square") == 0) return PipeTile::kSquare;
  if (std::strcmp(v, "short") == 0) return PipeTile::kShort;
  if (std::strcmp(v, "wgmma") == 0) return PipeTile::kWgWide;
  if (std::strcmp(v, "wgsq") == 0) return PipeTile::kWgSquare;
  return PipeTile::kAuto;
}
}  // namespace gemm

cudaError_t launch_matmul(const ops::MatmulParams& p, cudaStream_t stream) {
  DenseArgs a{};
  a.x = p.x.data; a.sxb = p.x.stride[0]; a.sxm = p.x.stride[1];
  a.w = p.w.data; a.swb = p.w.stride[0]; a.swn = p.w.stride[1];
  a.out = p.out.data; a.sob = p.out.stride[0]; a.som = p.out.stride[1]; a.son = p.out.stride[2];
  a.m = int(p.x.shape[1]); a.n = int(p.w.shape[1]); a.k = int(p.x.shape[2]);
  a.alpha = p.alpha; a.accumulate = p.accumulate;
  a.vec_out = a.son == 1 && aligned16(a.out) && a.som % 4 == 0 && a.sob % 4 == 0;
  const int batch = int(p.x.shape[0]);
  if (a.m == 0 || a.n == 0 || batch == 0) return cudaSuccess;
  if (p.x.dtype == DType::kBF16 && p.w.dtype == DType::kBF16) {
    if (gemm::cublaslt_requested()) {  // opt-in: cuBLAS speed, no batch-invariance contract
      const gemm::LtArgs lt{a.x, a.sxb, a.sxm, a.w, a.swb, a.swn, a.out, a.sob, a.som, a.son,
                            a.m, a.n, a.k, batch, a.alpha, a.accumulate, p.out.dtype == DType::kF32};
      if (gemm::cublaslt_applies(lt)) {
        const cudaError_t e = gemm::launch_cublaslt(lt, stream);
        if (e != cudaErrorNotSupported) return e;  // no algorithm for this shape: moex's GEMM below
      }
    }
    const bool vec = aligned16(a.x) && aligned16(a.w) && a.sxb % 8 == 0 && a.sxm % 8 == 0 &&
                     a.swb % 8 == 0 && a.swn % 8 == 0;
    return p.out.dtype == DType::kF32 ? launch_bf16<float>(a, batch, vec, stream)
                                      : launch_bf16<__nv_bfloat16>(a, batch, vec, stream);
  }
  const dim3 grid(ceil_div(a.n, kSimtTile), ceil_div(a.m, kSimtTile), batch);
  const dim3 block(kSimtTile, kSimtTile);
  bool launched = false;
  dispatch_act(p.x.dtype, [&](auto tx) {
    using TX = decltype(tx);
    dispatch_float(p.w.dtype, [&](auto tw) {
      using TW = decltype(tw);
      dispatch_act(p.out.dtype, [&](auto to) {
        using TO = decltype(to);
        dense_simt_kernel<TX, TW, TO><<<grid, block, 0, stream>>>(a);
        launched = true;
      });
    });
  });
  return launched ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace moex::kernels
