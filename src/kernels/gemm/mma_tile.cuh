// One output tile of C = A @ B^T on tensor cores (WMMA bf16 16x16x16, fp32 accumulation).
// A rows and B rows are given as pointers (row gather / expert weights / batched views all reduce
// to that); both are contiguous along K.
//
// Determinism (shared with mma_pipeline.cuh): every output element is the sum over K in BK = 32
// steps, each two k16 MMAs, in ascending K order, whatever the tile shape (BM, BN) or the rows
// sharing the tile. Row r of C
// is therefore bit-identical whether it is computed alone or inside a larger batch, and the
// small-M (GEMV-like) configuration gives the same bits as the large one.
#pragma once
#include <cuda_bf16.h>
#include <mma.h>

namespace moex::kernels::gemm {

constexpr int kBK = 32;         // K elements per main-loop step
constexpr int kPad = 8;         // bf16 padding per smem row (keeps 16-byte alignment, spreads banks)
constexpr int kThreads = 128;   // 4 warps

// Tile configurations: BM x BN, warps laid out WARPS_M x WARPS_N.
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int WTM = BM / WARPS_M / 16;  // 16x16 fragments per warp along M
  static constexpr int WTN = BN / WARPS_N / 16;  // ... along N
  static_assert(WARPS_M * WARPS_N * 32 == kThreads, "tile configs use 4 warps");
  static_assert(WTM >= 1 && WTN >= 1, "each warp owns at least one 16x16 fragment");
};
using TileLarge = TileConfig<64, 64, 2, 2>;  // many rows
using TileSmall = TileConfig<16, 64, 1, 4>;  // few rows (decode): same K order, less waste

template <class Cfg>
struct SmemTile {
  __nv_bfloat16 a[2][Cfg::BM][kBK + kPad];  // (BM, BK, stage)
  __nv_bfloat16 b[2][Cfg::BN][kBK + kPad];  // (BN, BK, stage)
  float c[Cfg::BM][Cfg::BN + 4];            // (BM, BN) accumulators for the epilogue
  const __nv_bfloat16* a_row[Cfg::BM];      // row pointers, nullptr = zero row
  const __nv_bfloat16* b_row[Cfg::BN];
};

// Stage one BK slice of `rows` row pointers into registers: 8 bf16 per chunk.
template <int ROWS, bool kVec>
struct TileLoader {
  static constexpr int kChunks = ROWS * kBK / 8;
  static constexpr int kPerThread = (kChunks + kThreads - 1) / kThreads;
  uint4 reg[kPerThread];

  __device__ void load(const __nv_bfloat16* const* row_ptr, int k0, int K) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = threadIdx.x + i * kThreads;
      reg[i] = make_uint4(0, 0, 0, 0);
      if (c >= kChunks) continue;
      const int r = c / (kBK / 8);
      const int k = k0 + (c % (kBK / 8)) * 8;
      const __nv_bfloat16* p = row_ptr[r];
      if (p == nullptr || k >= K) continue;
      if (kVec && k + 8 <= K) {
        reg[i] = __ldg(reinterpret_cast<const uint4*>(p + k));
      } else {
        __nv_bfloat16 tmp[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) tmp[j] = (k + j < K) ? p[k + j] : __float2bfloat16_rn(0.f);
        reg[i] = *reinterpret_cast<const uint4*>(tmp);
      }
    }
  }
  __device__ void store(__nv_bfloat16 (*dst)[kBK + kPad]) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if (c >= kChunks) continue;
      *reinterpret_cast<uint4*>(&dst[c / (kBK / 8)][(c % (kBK / 8)) * 8]) = reg[i];
    }
  }
};

// Computes the tile into s.c. Expects s.a_row / s.b_row filled and a __syncthreads() before.
template <class Cfg, bool kVec>
__device__ void mma_tile(SmemTile<Cfg>& s, int K) {
  using namespace nvcuda;
  const int warp = threadIdx.x / 32;
  const int wm = warp / Cfg::WARPS_N, wn = warp % Cfg::WARPS_N;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[Cfg::WTM][Cfg::WTN];
#pragma unroll
  for (int i = 0; i < Cfg::WTM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::WTN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  TileLoader<Cfg::BM, kVec> la;
  TileLoader<Cfg::BN, kVec> lb;
  const int nk = (K + kBK - 1) / kBK;
  la.load(s.a_row, 0, K);
  lb.load(s.b_row, 0, K);
  la.store(s.a[0]);
  lb.store(s.b[0]);
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int st = kt & 1;
    if (kt + 1 < nk) {
      la.load(s.a_row, (kt + 1) * kBK, K);
      lb.load(s.b_row, (kt + 1) * kBK, K);
    }
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[Cfg::WTM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[Cfg::WTN];
#pragma unroll
      for (int i = 0; i < Cfg::WTM; ++i)
        wmma::load_matrix_sync(fa[i], &s.a[st][(wm * Cfg::WTM + i) * 16][kk], kBK + kPad);
#pragma unroll
      for (int j = 0; j < Cfg::WTN; ++j)
        wmma::load_matrix_sync(fb[j], &s.b[st][(wn * Cfg::WTN + j) * 16][kk], kBK + kPad);
#pragma unroll
      for (int i = 0; i < Cfg::WTM; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::WTN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    if (kt + 1 < nk) {
      la.store(s.a[st ^ 1]);
      lb.store(s.b[st ^ 1]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < Cfg::WTM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::WTN; ++j)
      wmma::store_matrix_sync(&s.c[(wm * Cfg::WTM + i) * 16][(wn * Cfg::WTN + j) * 16], acc[i][j],
                              Cfg::BN + 4, wmma::mem_row_major);
  __syncthreads();
}

}  // namespace moex::kernels::gemm
