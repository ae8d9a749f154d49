// Dense out = alpha * x @ w^T (+ out) for 17..256 token rows on Hopper warpgroup MMAs (and for
// m <= 16 when MOEX_GEMM_DECODE=wg forces it), streaming the weight rows once per 64-row tile.
//
// Why: the 64-row pipelined tile (PipeShort, 64 x 128) gives an o_proj (2048 x 4096) 16 blocks
// on 132 SMs. Here a block owns only BN = 16 or 32 weight rows, so even narrow GEMMs spread
// over the SMs; the extra token rows cost tensor-core time only (m64 per wgmma either way).
// At m <= 16 the mma.sync decode kernel (skinny_gemm.cu) is faster: both are bound by the
// instructions issued per K slice (ncu), and here every warp of the warpgroup issues them all.
//
// Layout: a block is one warpgroup (128 threads) owning BN weight rows (the wgmma N side, B
// from shared memory through a 128-byte-swizzle descriptor) and all m token rows (the wgmma M
// side, A from registers: warp w holds tokens 16 w .. 16 w + 15, loaded with ldmatrix from a
// 16 XW-row token tile; warps past m hold zeros); more than 64 rows are more m tiles in the grid. The K loop streams slices of KSUB x 64
// elements through a ring of ST cp.async stages, one barrier per slice, the wgmma group of the
// previous slice still in flight across it (so A is double-buffered in registers).
// Rows of the token tile past m and weight rows past n are never loaded: they only feed output
// rows / columns that are not stored (row r of C depends on A row r only, column c on B row c).
//
// Bits: one fp32 accumulator per output, k16 wgmma steps in ascending K from zero, the same
// sequence as every other tile (wgmma == mma.sync m16n8k16 per k16 step on the H100:
// tests/cuda_ops/wgmma_test.cpp; matmul_test.cpp checks this kernel against the others).
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

#include "kernels/common/device_info.h"
#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gemm/ptx.cuh"
#include "kernels/gemm/skinny_gemm.h"
#include "kernels/gemm/wgmma_ptx.cuh"

namespace moex::kernels::gemm {
namespace {

using bf16 = __nv_bfloat16;

// 9.7.15.5.2 wgmma.mma_async m64nNk16 .f32.bf16.bf16, A from registers (the m16n8k16 A
// fragment of each warp's 16 rows), B K-major from a shared-memory descriptor; d += a @ b.
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b);

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <>
__device__ __forceinline__ void wgmma_rs<8>(float (&d)[4], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs<16>(float (&d)[8], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
      "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
template <>
__device__ __forceinline__ void wgmma_rs<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
      "%12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
#else
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&)[N / 2], const uint32_t (&)[4], uint64_t) {
  __trap();  // sm_90a only: launch_skinny_wgmma is never called elsewhere
}
#endif

// BN weight rows per block; XW warps of token rows (tile of 16 XW rows: m <= 16 XW); KSUB
// 64-wide K sub-tiles per stage (one barrier per KSUB x 64 of K); ST stages.
template <int BN_, int XW_, int KSUB_, int ST_>
struct WgDecodeCfg {
  static constexpr int BN = BN_, XW = XW_, KSUB = KSUB_, ST = ST_;
  static constexpr int kThreads = 128;
  static constexpr int kXRows = 16 * XW;
  static constexpr int kWSub = BN * 128, kXSub = kXRows * 128;  // bytes of one 64-wide sub-tile
  static constexpr int kStage = KSUB * (kWSub + kXSub);        // W sub-tiles first (1024-aligned)
  static constexpr int kAhead = ST - 2;  // slices loading: one wgmma group stays in flight
  static constexpr int kSmem = ST * kStage + 1024;  // + alignment slack for the descriptor base
  static constexpr int kWChunks = KSUB * BN * 8 / kThreads;         // 16-byte weight chunks per thread
  static constexpr int kXChunks = KSUB * kXRows * 8 / kThreads;     // token chunks per thread
  static_assert(BN == 8 || BN == 16 || BN == 32, "wgmma m64n8/16/32");
  static_assert(kWChunks * kThreads == KSUB * BN * 8, "weight chunks split evenly over the threads");
  static_assert(kXChunks * kThreads == KSUB * kXRows * 8, "token chunks split evenly over the threads");
  static_assert(kWSub % 1024 == 0 && kXSub % 1024 == 0, "descriptor tiles 1024-byte aligned");
  static_assert(ST >= 3, "two slices in flight plus one loading");
};

template <class Cfg, class TOut>
__global__ void __launch_bounds__(128) skinny_wgmma_kernel(SkinnyArgs a) {
  constexpr int BN = Cfg::BN, KSUB = Cfg::KSUB, ST = Cfg::ST;
  constexpr int kSteps = KSUB * 4;  // k16 wgmma steps per slice
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const uint32_t smem0 = (ptx::smem_addr(smem_raw) + 1023u) & ~1023u;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Grid (m tiles, n blocks, batch): the m tiles of one weight block run side by side, so the
  // weight rows come from DRAM once and from L2 for the other tiles.
  const int m0 = blockIdx.x * Cfg::kXRows, n0 = blockIdx.y * BN, b = blockIdx.z;
  const int m = min(Cfg::kXRows, a.m - m0);  // token rows of this tile
  const bf16* x = static_cast<const bf16*>(a.x) + b * a.sxb + int64_t(m0) * a.sxm;  // [m, k]
  const bf16* w = static_cast<const bf16*>(a.w) + b * a.swb;  // [n, k]
  if (a.pdl) {  // the block's weight rows into L2 while the kernel before finishes, then wait
    if (blockIdx.x == 0 && tid < BN && n0 + tid < a.n) pdl::prefetch_l2(w + int64_t(n0 + tid) * a.swn, uint32_t(a.k) * 2u);
    pdl::wait();
  }

  // Each thread's chunks: chunk c -> sub-tile c / (rows * 8), row (c / 8) % rows, 16-byte chunk
  // c % 8, stored at chunk (c % 8) ^ (row % 8) of its 128-byte row (the 128-byte swizzle).
  const bf16* wsrc[Cfg::kWChunks];  // nullptr: a row past n (not loaded)
  uint32_t wdst[Cfg::kWChunks];     // offset in the stage
#pragma unroll
  for (int i = 0; i < Cfg::kWChunks; ++i) {
    const int c = tid + i * Cfg::kThreads, sub = c / (BN * 8), r = (c / 8) % BN, ch = c % 8;
    wsrc[i] = n0 + r < a.n ? w + int64_t(n0 + r) * a.swn + sub * 64 + ch * 8 : nullptr;
    wdst[i] = uint32_t(sub * Cfg::kWSub + r * 128 + ((ch ^ (r & 7)) << 4));
  }
  const bf16* xsrc[Cfg::kXChunks];  // nullptr: a token row past m (not loaded)
  uint32_t xdst[Cfg::kXChunks];
#pragma unroll
  for (int i = 0; i < Cfg::kXChunks; ++i) {
    const int c = tid + i * Cfg::kThreads, sub = c / (Cfg::kXRows * 8), r = (c / 8) % Cfg::kXRows, ch = c % 8;
    xsrc[i] = r < m ? x + int64_t(r) * a.sxm + sub * 64 + ch * 8 : nullptr;
    xdst[i] = uint32_t(KSUB * Cfg::kWSub + sub * Cfg::kXSub + r * 128 + ((ch ^ (r & 7)) << 4));
  }
  const int subs_total = a.k / 64;                 // 64-wide sub-tiles of K
  const int nk = (subs_total + KSUB - 1) / KSUB;  // slices; the last may hold fewer sub-tiles
  auto load = [&](int stage, int kt) {
    const uint32_t base = smem0 + uint32_t(stage * Cfg::kStage);
    const int64_t k0 = int64_t(kt) * KSUB * 64;
#pragma unroll
    for (int i = 0; i < Cfg::kWChunks; ++i) {
      const int sub = (tid + i * Cfg::kThreads) / (BN * 8);
      if (wsrc[i] != nullptr && kt * KSUB + sub < subs_total) ptx::cp_async_16(base + wdst[i], wsrc[i] + k0, 16);
    }
#pragma unroll
    for (int i = 0; i < Cfg::kXChunks; ++i) {
      const int sub = (tid + i * Cfg::kThreads) / (Cfg::kXRows * 8);
      if (xsrc[i] != nullptr && kt * KSUB + sub < subs_total) ptx::cp_async_16(base + xdst[i], xsrc[i] + k0, 16);
    }
  };

  uint32_t aoff[kSteps];  // ldmatrix row address of A step s in a stage: row 16 warp + lane % 16
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int xr = warp * 16 + (lane & 15), ch = 2 * (s % 4) + (lane >> 4);
    aoff[s] = uint32_t(KSUB * Cfg::kWSub + (s / 4) * Cfg::kXSub + xr * 128 + ((ch ^ (xr & 7)) << 4));
  }
  float acc[BN / 2];  // m64nBN: (token 16 warp + lane / 4 (+ 8), weight row 8 j + 2 (lane % 4) (+ 1))
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
  const bool has_tokens = warp * 16 < m;  // warps past m feed zero A rows

  // One slice: its A fragments into `af` (free: the group that read them two slices ago has
  // retired), then KSUB x 4 wgmmas committed as one group; the previous group may still run.
  // `prev` (the other slice's fragments) is touched after the wait that retires the group
  // reading it, so the compiler cannot hand its registers to anything else before.
  auto slice = [&](int kt, uint32_t (&af)[kSteps][4], uint32_t (&prev)[kSteps][4]) {
    ptx::cp_async_wait<Cfg::kAhead - 1>();
    wg::fence_proxy_async();  // the weight tile is read by wgmma (async proxy)
    __syncthreads();          // slice kt landed for all; group kt - 2 retired; its stage is free
    if (kt + Cfg::kAhead < nk) load((kt + Cfg::kAhead) % ST, kt + Cfg::kAhead);
    ptx::cp_async_commit();
    const uint32_t base = smem0 + uint32_t((kt % ST) * Cfg::kStage);
    const int subs = min(KSUB, subs_total - kt * KSUB);
    if (has_tokens) {  // warps past m keep the zeros they started with
#pragma unroll
      for (int s = 0; s < kSteps; ++s)
        if (s / 4 < subs) ptx::ldmatrix_x4(af[s], base + aoff[s]);
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s)  // every fragment written before the fence below
#pragma unroll
      for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(af[s][i])::"memory");
    wg::fence_operands(acc);
    wg::fence();
    // The descriptor's address field is (address >> 4) in its low 14 bits: stepping inside the
    // stage is a constant add that never carries out of it (shared memory < 256 KB).
    const uint64_t dstage = wg::desc_sw128(base);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s / 4 < subs)  // uniform: a short last slice skips its missing sub-tile
        wgmma_rs<BN>(acc, af[s], dstage + uint64_t(((s / 4) * Cfg::kWSub + (s % 4) * 32) >> 4));
    }
    wg::commit();
    wg::wait<1>();
    wg::fence_operands(acc);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(prev[s][i])::"memory");
  };

#pragma unroll
  for (int st = 0; st < Cfg::kAhead; ++st) {
    if (st < nk) load(st, st);
    ptx::cp_async_commit();
  }
  uint32_t af0[kSteps][4] = {}, af1[kSteps][4] = {};  // A fragments of even / odd slices
  for (int kt = 0; kt < nk; kt += 2) {
    slice(kt, af0, af1);
    if (kt + 1 < nk) slice(kt + 1, af1, af0);
  }
  wg::wait<0>();
  wg::fence_operands(acc);
  ptx::cp_async_wait<0>();

  TOut* out = static_cast<TOut*>(a.out) + b * a.sob + int64_t(m0) * a.som;  // [m, n]
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int t = warp * 16 + lane / 4 + (q / 2) * 8;
      const int n = n0 + j * 8 + (lane % 4) * 2 + (q % 2);
      if (t >= m || n >= a.n) continue;
      TOut* o = out + int64_t(t) * a.som + int64_t(n) * a.son;
      float v = a.alpha * acc[4 * j + q];
      if (a.accumulate) v = to_f32(*o) + v;
      *o = from_f32<TOut>(v);
    }
  }
}

template <class Cfg, class TOut>
cudaError_t launch_cfg(const SkinnyArgs& a, int batch, cudaStream_t stream) {
  auto* kernel = skinny_wgmma_kernel<Cfg, TOut>;
  // Per call, as for the other tiles: the attribute belongs to the current device's context.
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((a.m + Cfg::kXRows - 1) / Cfg::kXRows), unsigned((a.n + Cfg::BN - 1) / Cfg::BN),
                  unsigned(batch));
  return pdl::launch(kernel, grid, dim3(Cfg::kThreads), size_t(Cfg::kSmem), stream, a.pdl, a);
}

// Stage counts: 80 to 100 KB of shared memory per block (two blocks per SM): 28 / 40 / 48 KB of
// weight rows in flight per block for BN = 8 / 16 / 32 at m <= 16 (Dec*, used only when
// MOEX_GEMM_DECODE=wg forces this kernel for decode), 16 / 24 KB for Mid* (m > 16).
using Dec8 = WgDecodeCfg<8, 1, 2, 16>;    // 6 KB stages
using Dec16 = WgDecodeCfg<16, 1, 2, 12>;  // 8 KB
using Dec32 = WgDecodeCfg<32, 1, 2, 8>;   // 12 KB
using Mid16 = WgDecodeCfg<16, 4, 1, 10>;  // 10 KB: m > 16 (8 stages measured 20% slower at o_proj x 64)
using Mid32 = WgDecodeCfg<32, 4, 1, 8>;   // 12 KB

template <class TOut>
cudaError_t launch_bn(const SkinnyArgs& a, int batch, int bn, cudaStream_t stream) {
  if (a.m <= 16) {
    if (bn == 8) return launch_cfg<Dec8, TOut>(a, batch, stream);
    if (bn == 16) return launch_cfg<Dec16, TOut>(a, batch, stream);
    return launch_cfg<Dec32, TOut>(a, batch, stream);
  }
  if (bn <= 16) return launch_cfg<Mid16, TOut>(a, batch, stream);
  return launch_cfg<Mid32, TOut>(a, batch, stream);
}

// MOEX_GEMM_DECODE_BN=8|16|32 forces the block width (benchmarks; bits never change).
int forced_bn() {
  const char* v = std::getenv("MOEX_GEMM_DECODE_BN");
  if (v == nullptr) return 0;
  const int bn = std::atoi(v);
  return bn == 8 || bn == 16 || bn == 32 ? bn : 0;
}

// The widest block that still gives every SM a block: narrow GEMMs (k/v, q_a: 1536 rows)
// spread over the SMs, wide ones keep more weight bytes per barrier. 17..256 rows: at least 16.
int choose_bn(const SkinnyArgs& a, int batch) {
  const int forced = forced_bn();
  if (forced != 0) return a.m > 16 && forced < 16 ? 16 : forced;
  const int64_t m_tiles = (a.m + 63) / 64;
  int bn = 32;
  while (bn > 8 && (int64_t(a.n) + bn - 1) / bn * m_tiles * batch < sm_count()) bn /= 2;
  return a.m > 16 && bn < 16 ? 16 : bn;
}

}  // namespace

bool skinny_wgmma_applies(const SkinnyArgs& a) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return a.m >= 1 && a.m <= kSkinnyWgmmaMaxRows && a.k % 64 == 0 && a.k > 0 && (a.n + 7) / 8 <= 65535 &&
         aligned(a.x) && aligned(a.w) && a.sxm % 8 == 0 && a.sxb % 8 == 0 && a.swn % 8 == 0 && a.swb % 8 == 0;
}

int64_t skinny_wgmma_blocks(const SkinnyArgs& a, int batch) {
  const int bn = choose_bn(a, batch);
  return (int64_t(a.n) + bn - 1) / bn * ((a.m + 63) / 64) * batch;
}

cudaError_t launch_skinny_wgmma(const SkinnyArgs& args, int batch, bool out_f32, cudaStream_t stream) {
  if (batch > 65535 || (args.n + 7) / 8 > 65535) return cudaErrorInvalidValue;  // grid z / y
  SkinnyArgs a = args;
  a.pdl = pdl::enabled();
  const int bn = choose_bn(a, batch);
  return out_f32 ? launch_bn<float>(a, batch, bn, stream) : launch_bn<bf16>(a, batch, bn, stream);
}

}  // namespace moex::kernels::gemm
