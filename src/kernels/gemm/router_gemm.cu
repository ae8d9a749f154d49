// MoE router logits: out [m, n] f32 = alpha * x [m, k] @ w [n, k]^T (+ out) for n <= 256.
//
// Why its own kernel: with 128 columns a router is 8 blocks of the decode kernel, each one
// chain of K / 16 dependent MMAs (13 us for Qwen3's 128 x 2048 at m = 1 on an H100, for 0.5 MB
// of weights). The router's result is used only through softmax / top-k, and its cost at
// prefill is small, so it gets its own fixed K order that parallelizes over K:
//
//   K order (the router's bits contract): K is cut into chunks of kRouterChunk = 256. Chunk c's
//   partial p_c is a chain of m16n8k16 bf16 MMAs from zero over the chunk's k32 blocks in
//   ascending order (inside a k32 block, real k = 8 t + {0..3} feed the first MMA and
//   8 t + {4..7} the second, for t = 0..3: each lane loads 16 contiguous bytes). The output is
//   ((p_0 + p_1) + p_2) + ... in fp32, then alpha * sum (+ out).
//
// The order depends on k only; the selection (f32 out, n <= 256, k % 32 == 0, aligned rows)
// on the shape, never on m: a row gets the same bits alone or in any batch, and whichever of
// the tile shapes below computes it (tests/cuda_ops/matmul_test.cpp, RouterBits*).
//
// Layout: a block of NW warps owns 16 MT tokens x 8 NT columns; warp w computes the partials
// of chunks w, w + NW, ... straight from global memory into MMA fragments (the router's bytes
// are few and nothing is shared between warps), stores them in shared memory, and after one
// barrier every thread sums its outputs' partials in chunk order.
#include <cuda_bf16.h>

#include "kernels/common/dtype.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gemm/ptx.cuh"
#include "kernels/gemm/router_gemm.h"

namespace moex::kernels::gemm {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kBlockK = 32;  // K per pair of MMAs (one 16-byte load per lane and row)
constexpr int kSmemBudget = 96 * 1024;

// MT m16 token tiles x NT n8 column tiles per warp, NW warps, G k32 blocks per load group.
template <int MT_, int NT_, int NW_>
struct RouterCfg {
  static constexpr int MT = MT_, NT = NT_, NW = NW_;
  static constexpr int TM = 16 * MT, TN = 8 * NT;
  static constexpr int G = 4 / (MT > NT ? MT : NT);  // 2 x 48 registers of loads per lane
  static constexpr int kChunkBlocks = kRouterChunk / kBlockK;
  static_assert(kChunkBlocks % G == 0, "whole load groups per chunk");
  static constexpr int smem_bytes(int chunks) { return chunks * TM * TN * int(sizeof(float)); }
};
using RouterOne = RouterCfg<1, 1, 8>;    // m <= 16: 16 tokens x 8 columns
using RouterMid = RouterCfg<2, 2, 8>;    // 32 x 16
using RouterWide = RouterCfg<4, 4, 8>;   // 64 x 32

template <class Cfg>
__global__ void __launch_bounds__(32 * Cfg::NW) router_gemm_kernel(RouterArgs a, bool pdl_wait) {
  constexpr int MT = Cfg::MT, NT = Cfg::NT, G = Cfg::G;
  extern __shared__ float part[];  // [chunks, TM, TN] partial sums
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int b = blockIdx.z, m0 = blockIdx.y * Cfg::TM, n0 = blockIdx.x * Cfg::TN;
  const bf16* x = static_cast<const bf16*>(a.x) + b * a.sxb;  // [m, k]
  const bf16* w = static_cast<const bf16*>(a.w) + b * a.swb;  // [n, k]
  const int chunks = (a.k + kRouterChunk - 1) / kRouterChunk;

  // Row pointers of this lane (offset 8 t into each k32 block); nullptr: past m / n, zeros.
  const bf16* xrow[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = m0 + 16 * i + g + 8 * h;
      xrow[i][h] = r < a.m ? x + int64_t(r) * a.sxm + 8 * t : nullptr;
    }
  const bf16* wrow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int r = n0 + 8 * j + g;
    wrow[j] = r < a.n ? w + int64_t(r) * a.swn + 8 * t : nullptr;
  }
  if (pdl_wait) {  // the block's weight rows into L2 while the kernel before finishes, then wait
    if (blockIdx.y == 0 && tid < Cfg::TN && n0 + tid < a.n) pdl::prefetch_l2(w + int64_t(n0 + tid) * a.swn, uint32_t(a.k) * 2u);
    pdl::wait();
  }
  const auto load = [](const bf16* p, int k) {
    return p != nullptr ? __ldg(reinterpret_cast<const uint4*>(p + k)) : make_uint4(0, 0, 0, 0);
  };

  // The warp's k32 blocks in groups of G (a group never spans two chunks), double-buffered:
  // the loads of group i + 1 are in flight while group i's MMAs run.
  constexpr int kGroupsPerChunk = Cfg::kChunkBlocks / G;
  const int my_chunks = warp < chunks ? (chunks - warp + Cfg::NW - 1) / Cfg::NW : 0;
  const int groups = my_chunks * kGroupsPerChunk;
  using XBuf = uint4[G][MT][2];
  using WBuf = uint4[G][NT];
  const auto fetch = [&](int gi, XBuf& xv, WBuf& wv) {
    const int c = warp + (gi / kGroupsPerChunk) * Cfg::NW, kb0 = (gi % kGroupsPerChunk) * G;
    const int kc = c * kRouterChunk;
#pragma unroll
    for (int q = 0; q < G; ++q) {
      const int k = kc + (kb0 + q) * kBlockK;
      const bool in = gi < groups && k < a.k;
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) xv[q][i][h] = load(in ? xrow[i][h] : nullptr, k);
#pragma unroll
      for (int j = 0; j < NT; ++j) wv[q][j] = load(in ? wrow[j] : nullptr, k);
    }
  };
  float acc[MT][NT][4] = {};
  const auto compute = [&](int gi, const XBuf& xv, const WBuf& wv) {
    if (gi >= groups) return;
    const int c = warp + (gi / kGroupsPerChunk) * Cfg::NW, kb0 = (gi % kGroupsPerChunk) * G;
    const int kc = c * kRouterChunk;
#pragma unroll
    for (int q = 0; q < G; ++q) {
      if (kc + (kb0 + q) * kBlockK >= a.k) break;  // uniform: the last chunk may be short
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint32_t a0[4] = {xv[q][i][0].x, xv[q][i][1].x, xv[q][i][0].y, xv[q][i][1].y};  // k 8t + 0..3
        const uint32_t a1[4] = {xv[q][i][0].z, xv[q][i][1].z, xv[q][i][0].w, xv[q][i][1].w};  // k 8t + 4..7
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          ptx::mma_bf16_16816(acc[i][j], a0, wv[q][j].x, wv[q][j].y);
          ptx::mma_bf16_16816(acc[i][j], a1, wv[q][j].z, wv[q][j].w);
        }
      }
    }
    if (gi % kGroupsPerChunk == kGroupsPerChunk - 1) {  // the chunk's last group (a short chunk's are empty)
      float* p = part + size_t(c) * Cfg::TM * Cfg::TN;  // [TM, TN]
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            p[(16 * i + g + 8 * (q / 2)) * Cfg::TN + 8 * j + 2 * t + (q % 2)] = acc[i][j][q];
            acc[i][j][q] = 0.f;
          }
    }
  };
  XBuf xa, xb;
  WBuf wa, wb;
  fetch(0, xa, wa);
  for (int gi = 0; gi < groups; gi += 2) {
    fetch(gi + 1, xb, wb);
    compute(gi, xa, wa);
    fetch(gi + 2, xa, wa);
    compute(gi + 1, xb, wb);
  }
  __syncthreads();

  float* out = a.out + b * a.sob;  // [m, n]
  for (int e = tid; e < Cfg::TM * Cfg::TN; e += blockDim.x) {
    const int r = e / Cfg::TN, col = e % Cfg::TN;
    if (m0 + r >= a.m || n0 + col >= a.n) continue;
    float s = part[e];
    for (int c = 1; c < chunks; ++c) s += part[size_t(c) * Cfg::TM * Cfg::TN + e];  // chunk order
    float* o = out + int64_t(m0 + r) * a.som + int64_t(n0 + col) * a.son;
    const float v = a.alpha * s;
    *o = a.accumulate ? *o + v : v;
  }
}

template <class Cfg>
cudaError_t launch_cfg(const RouterArgs& a, int batch, cudaStream_t stream) {
  const int chunks = (a.k + kRouterChunk - 1) / kRouterChunk;
  const int smem = Cfg::smem_bytes(chunks);
  auto* kernel = router_gemm_kernel<Cfg>;
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(unsigned((a.n + Cfg::TN - 1) / Cfg::TN), unsigned((a.m + Cfg::TM - 1) / Cfg::TM), unsigned(batch));
  const bool pdl = pdl::enabled();  // read once: the attribute and the kernel's wait must agree
  return pdl::launch(kernel, grid, dim3(32 * Cfg::NW), size_t(smem), stream, pdl, a, pdl);
}

}  // namespace

bool router_gemm_applies(const RouterArgs& a) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return a.n >= 1 && a.n <= kRouterMaxCols && a.k > 0 && a.k % kBlockK == 0 && a.k <= kRouterMaxK &&
         aligned(a.x) && aligned(a.w) && a.sxm % 8 == 0 && a.sxb % 8 == 0 && a.swn % 8 == 0 && a.swb % 8 == 0;
}

cudaError_t launch_router_gemm(const RouterArgs& a, int batch, cudaStream_t stream) {
  if (batch > 65535 || (a.m + 15) / 16 > 65535) return cudaErrorInvalidValue;
  // The tile only decides which warp computes which partial: never the bits.
  const int chunks = (a.k + kRouterChunk - 1) / kRouterChunk;
  if (a.m > 32 && RouterWide::smem_bytes(chunks) <= kSmemBudget) return launch_cfg<RouterWide>(a, batch, stream);
  if (a.m > 16 && RouterMid::smem_bytes(chunks) <= kSmemBudget) return launch_cfg<RouterMid>(a, batch, stream);
  return launch_cfg<RouterOne>(a, batch, stream);
}

}  // namespace moex::kernels::gemm
