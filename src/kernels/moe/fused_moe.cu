// Steps 2-4 of fused MoE (grouped GEMMs and the slot-order combine) and the launcher.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/common/dtype.cuh"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/mma_pipeline.cuh"
#include "kernels/gemm/mma_tile.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/gemm/wgmma_pipeline.cuh"
#include "kernels/moe/moe.h"
#include "kernels/moe/moe_combine.cuh"
#include "kernels/moe/moe_decode.h"

namespace moex::kernels {
namespace {

using bf16 = __nv_bfloat16;

struct MoeGemmArgs {
  const bf16* x; int64_t sx;         // [tokens, hidden] row stride sx
  const bf16* w13; int64_t sw13_e, sw13_r;  // [local_experts, 2 * inter, hidden]
  const bf16* w2; int64_t sw2_e, sw2_r;     // [local_experts, hidden, inter]
  bf16* h;                           // [num_slots, inter] rows in sorted order
  void* part;                        // [num_slots, hidden] weighted partials by slot index (moe_combine.cuh)
  moe::PartKind part_kind;
  const float* w; int64_t s_w;       // [tokens, top_k] routing weights, row stride s_w
  int top_k, hidden, inter;
  int group;                         // raster: row tiles that share each column block (see moe_block)
  MoeAlignment al;
};

__host__ __device__ constexpr int moe_cdiv(int a, int b) { return (a + b - 1) / b; }

// Block -> (row tile, column block) of a grouped GEMM with `ncol` column blocks: groups of
// `group` consecutive row tiles, and inside a group the column block changes slowest, so the
// blocks that read one weight tile (same expert, same columns) run back to back and find it in
// L2, while the group's token rows (group x BM rows) stay in L2 across its column blocks.
// group = 1 is the plain order (all column blocks of tile 0, then tile 1, ...). Bits do not
// depend on it. Returns false for blocks past the device-side tile count.
__device__ __forceinline__ bool moe_block(const MoeGemmArgs& a, int ncol, int* tile, int* col) {
  const int per_group = a.group * ncol;
  const int g = int(blockIdx.x) / per_group, rem = int(blockIdx.x) % per_group;
  *col = rem / a.group;
  *tile = g * a.group + rem % a.group;
  return *tile < *a.al.num_tiles;
}

// Row tile `tile` of the grouped GEMMs: its expert, first sorted row and row count (<= BM).
struct MoeTile {
  int expert, row0, rows;
};
template <int BM>
__device__ MoeTile moe_tile(const MoeAlignment& al, int tile) {
  const int e = al.tile_expert[tile], row0 = al.tile_row[tile];
  return {e, row0, min(BM, al.offsets[e + 1] - row0)};
}

// GEMM 1 operand rows: the tile's token rows of x (gathered through the slot list) and, for
// the block's BN / 2 intermediate columns from i0, the gate rows then the matching up rows.
template <int BM, int BN>
__device__ void moe_rows13(const MoeGemmArgs& a, const MoeTile& t, int i0, const bf16** a_row, const bf16** b_row) {
  constexpr int kHalf = BN / 2;
  for (int r = threadIdx.x; r < BM; r += blockDim.x)
    a_row[r] = r < t.rows ? a.x + int64_t(a.al.sorted_slots[t.row0 + r] / a.top_k) * a.sx : nullptr;
  const bf16* w = a.w13 + int64_t(t.expert) * a.sw13_e;
  for (int c = threadIdx.x; c < BN; c += blockDim.x) {
    const int i = i0 + (c % kHalf);
    const int wrow = (c < kHalf) ? i : a.inter + i;
    b_row[c] = i < a.inter ? w + int64_t(wrow) * a.sw13_r : nullptr;
  }
}

// h = bf16(silu(gate) * up) from the fp32 tile C (c(r, col): gate in [0, BN/2), up after), 8
// columns per thread (one 16-byte store) where inter allows; the same expression either way.
template <int BM, int BN, class CAt>
__device__ void moe_epilogue13(const MoeGemmArgs& a, const MoeTile& t, int i0, CAt c_at) {
  constexpr int kHalf = BN / 2, kChunks = kHalf / 8;
  static_assert(kHalf % 8 == 0, "whole 8-column chunks");
  const bool vec = a.inter % 8 == 0;
  for (int idx = threadIdx.x; idx < BM * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    if (r >= t.rows) break;  // r grows with idx
    bf16* dst = a.h + int64_t(t.row0 + r) * a.inter + i0 + c;  // [8]
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float g = c_at(r, c + i), u = c_at(r, c + kHalf + i);
      v[i] = g / (1.f + expf(-g)) * u;
    }
    if (vec && i0 + c + 8 <= a.inter) {
      moe::store8<bf16>(dst, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (i0 + c + i < a.inter) dst[i] = __float2bfloat16_rn(v[i]);
    }
  }
}

// GEMM 2 operand rows: h rows of the tile (their slots and routing weights noted for the
// epilogue) and w2 rows n0...
template <int BM, int BN>
__device__ void moe_rows2(const MoeGemmArgs& a, const MoeTile& t, int n0, const bf16** a_row, const bf16** b_row,
                          int* slot, float* wt) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    a_row[r] = r < t.rows ? a.h + int64_t(t.row0 + r) * a.inter : nullptr;
    const int sl = r < t.rows ? a.al.sorted_slots[t.row0 + r] : -1;
    slot[r] = sl;
    wt[r] = sl >= 0 ? a.w[int64_t(sl / a.top_k) * a.s_w + sl % a.top_k] : 0.f;
  }
  const bf16* w = a.w2 + int64_t(t.expert) * a.sw2_e;
  for (int c = threadIdx.x; c < BN; c += blockDim.x)
    b_row[c] = n0 + c < a.hidden ? w + int64_t(n0 + c) * a.sw2_r : nullptr;
}

// part[slot] = P(w * C row) (moe_combine.cuh), scattered to the rows' slot indices, 8 columns
// per thread (one 16- or 32-byte store) where hidden allows; the same expression either way.
template <int BM, int BN, class CAt>
__device__ void moe_epilogue2(const MoeGemmArgs& a, const MoeTile& t, int n0, const int* slot, const float* wt,
                              CAt c_at) {
  constexpr int kChunks = BN / 8;
  const bool vec = a.hidden % 8 == 0;
  for (int idx = threadIdx.x; idx < BM * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    if (r >= t.rows) break;  // r grows with idx
    const int64_t base = int64_t(slot[r]) * a.hidden + n0 + c;
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = moe::weighted(wt[r], c_at(r, c + i));
    if (vec && n0 + c + 8 <= a.hidden) {
      moe::store_part8(a.part, a.part_kind, base, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (n0 + c + i < a.hidden) moe::store_part(a.part, a.part_kind, base + i, v[i]);
    }
  }
}

// Grouped GEMM 1 with SwiGLU on the WMMA tile (few rows per expert, or unaligned operands): a
// block owns BN/2 gate columns and the matching BN/2 up columns, so silu(gate) * up is formed in
// the epilogue; h is rounded to bf16 once.
template <class Cfg, bool kVec>
__global__ void __launch_bounds__(gemm::kThreads) moe_gemm13_kernel(MoeGemmArgs a) {
  __shared__ __align__(128) gemm::SmemTile<Cfg> s;
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.inter, Cfg::BN / 2), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int i0 = col * (Cfg::BN / 2);
  moe_rows13<Cfg::BM, Cfg::BN>(a, t, i0, s.a_row, s.b_row);
  __syncthreads();
  gemm::mma_tile<Cfg, kVec>(s, a.hidden);
  moe_epilogue13<Cfg::BM, Cfg::BN>(a, t, i0, [&](int r, int c) { return s.c[r][c]; });
}

// Grouped GEMM 2 on the WMMA tile: y[slot] = h[row] @ w2[e]^T in fp32.
template <class Cfg, bool kVec>
__global__ void __launch_bounds__(gemm::kThreads) moe_gemm2_kernel(MoeGemmArgs a) {
  __shared__ __align__(128) gemm::SmemTile<Cfg> s;
  __shared__ int slot[Cfg::BM];
  __shared__ float wt[Cfg::BM];
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.hidden, Cfg::BN), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int n0 = col * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row, s.b_row, slot, wt);
  __syncthreads();
  gemm::mma_tile<Cfg, kVec>(s, a.inter);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, wt, [&](int r, int c) { return s.c[r][c]; });
}

// The same two GEMMs on the pipelined mainloop (mma_pipeline.cuh; same K order, same bits) for
// many rows per expert with 16-byte aligned rows and K % 8 == 0.
template <class Cfg>
__global__ void __launch_bounds__(gemm::kPipeThreads, Cfg::MIN_BLOCKS) moe_gemm13_pipe_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  const gemm::PipeSmem<Cfg> s{smem};
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.inter, Cfg::BN / 2), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int i0 = col * (Cfg::BN / 2);
  moe_rows13<Cfg::BM, Cfg::BN>(a, t, i0, s.a_row(), s.b_row());
  __syncthreads();
  gemm::pipe_tile<Cfg>(s, a.hidden);
  moe_epilogue13<Cfg::BM, Cfg::BN>(a, t, i0, [&](int r, int c) { return s.c(r, c); });
}

template <class Cfg>
__global__ void __launch_bounds__(gemm::kPipeThreads, Cfg::MIN_BLOCKS) moe_gemm2_pipe_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int slot[Cfg::BM];
  __shared__ float wt[Cfg::BM];
  const gemm::PipeSmem<Cfg> s{smem};
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.hidden, Cfg::BN), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int n0 = col * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row(), s.b_row(), slot, wt);
  __syncthreads();
  gemm::pipe_tile<Cfg>(s, a.inter);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, wt, [&](int r, int c) { return s.c(r, c); });
}

// The same two GEMMs on the wgmma mainloop, 128-row tiles. kMode 1 (default) and 2:
// wg_tile with the tile's row count (skips the empty half of a tile; 2 also skips the loads of
// unused rows); 0: wg_tile over all 128 rows. MOEX_MOE_WG_MODE picks one; bits are the same.
template <class Cfg, int kMode>
__device__ __forceinline__ void moe_wg_any(const gemm::WgSmem<Cfg>& s, int K, int rows) {
  if constexpr (kMode == 0) gemm::wg_tile<Cfg>(s, K);
  else gemm::wg_tile<Cfg, kMode == 2>(s, K, rows);
}

template <class Cfg, int kMode>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) moe_gemm13_wg_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  const auto s = gemm::WgSmem<Cfg>::from(smem);
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.inter, Cfg::BN / 2), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int i0 = col * (Cfg::BN / 2);
  moe_rows13<Cfg::BM, Cfg::BN>(a, t, i0, s.a_row(), s.b_row());
  __syncthreads();
  moe_wg_any<Cfg, kMode>(s, a.hidden, t.rows);
  moe_epilogue13<Cfg::BM, Cfg::BN>(a, t, i0, [&](int r, int c) { return s.c(r, c); });
}

template <class Cfg, int kMode>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) moe_gemm2_wg_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int slot[Cfg::BM];
  __shared__ float wt[Cfg::BM];
  const auto s = gemm::WgSmem<Cfg>::from(smem);
  int tile, col;
  if (!moe_block(a, moe_cdiv(a.hidden, Cfg::BN), &tile, &col)) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, tile);
  const int n0 = col * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row(), s.b_row(), slot, wt);
  __syncthreads();
  moe_wg_any<Cfg, kMode>(s, a.inter, t.rows);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, wt, [&](int r, int c) { return s.c(r, c); });
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Optional per-step timing of one call (MOEX_MOE_PROFILE=1): events between the launches,
// one line on stderr per chunk. Never while the stream is being captured into a graph.
struct MoeProfile {
  bool on = false;
  int n = 0;
  cudaEvent_t ev[6] = {};
  const char* name[6] = {};
  MoeProfile(cudaStream_t stream) {
    const char* v = std::getenv("MOEX_MOE_PROFILE");
    if (v == nullptr || std::strcmp(v, "1") != 0) return;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return;
    on = true;
  }
  ~MoeProfile() { for (int i = 0; i < n; ++i) cudaEventDestroy(ev[i]); }
  void mark(const char* what, cudaStream_t stream) {
    if (!on || n == 6) return;
    if (cudaEventCreate(&ev[n]) != cudaSuccess) return;
    name[n] = what;
    cudaEventRecord(ev[n++], stream);
  }
  void report(int tokens, int tile_m, int group) {
    if (!on || n < 2 || cudaEventSynchronize(ev[n - 1]) != cudaSuccess) return;
    std::fprintf(stderr, "moe-profile tokens=%d tile_m=%d group=%d", tokens, tile_m, group);
    float total = 0;
    for (int i = 1; i < n; ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, ev[i - 1], ev[i]);
      total += ms;
      std::fprintf(stderr, " %s=%.1fus", name[i], ms * 1e3f);
    }
    std::fprintf(stderr, " total=%.1fus\n", total * 1e3f);
    for (int i = 0; i < n; ++i) cudaEventDestroy(ev[i]);
    n = 0;
  }
};

// Blocks of one grouped GEMM: whole groups of row tiles times its column blocks (moe_block).
dim3 moe_grid(int max_tiles, int group, int ncol) {
  return dim3(unsigned(int64_t(ceil_div(max_tiles, group)) * group * ncol));
}

template <class Cfg>
void launch_gemms(const MoeGemmArgs& a, int max_tiles, bool vec13, bool vec2, MoeProfile& prof, cudaStream_t stream) {
  const dim3 g13 = moe_grid(max_tiles, a.group, ceil_div(a.inter, Cfg::BN / 2));
  const dim3 g2 = moe_grid(max_tiles, a.group, ceil_div(a.hidden, Cfg::BN));
  if (vec13) moe_gemm13_kernel<Cfg, true><<<g13, gemm::kThreads, 0, stream>>>(a);
  else moe_gemm13_kernel<Cfg, false><<<g13, gemm::kThreads, 0, stream>>>(a);
  prof.mark("gemm13", stream);
  if (vec2) moe_gemm2_kernel<Cfg, true><<<g2, gemm::kThreads, 0, stream>>>(a);
  else moe_gemm2_kernel<Cfg, false><<<g2, gemm::kThreads, 0, stream>>>(a);
  prof.mark("gemm2", stream);
}

template <class Cfg>
cudaError_t launch_pipe_gemms(const MoeGemmArgs& a, int max_tiles, MoeProfile& prof, cudaStream_t stream) {
  auto* k13 = moe_gemm13_pipe_kernel<Cfg>;
  auto* k2 = moe_gemm2_pipe_kernel<Cfg>;
  cudaError_t e = gemm::pipe_prepare<Cfg>(k13);
  if (e == cudaSuccess) e = gemm::pipe_prepare<Cfg>(k2);
  if (e != cudaSuccess) return e;
  k13<<<moe_grid(max_tiles, a.group, ceil_div(a.inter, Cfg::BN / 2)), gemm::kPipeThreads, Cfg::kSmemBytes, stream>>>(a);
  prof.mark("gemm13", stream);
  k2<<<moe_grid(max_tiles, a.group, ceil_div(a.hidden, Cfg::BN)), gemm::kPipeThreads, Cfg::kSmemBytes, stream>>>(a);
  prof.mark("gemm2", stream);
  return cudaGetLastError();
}

// GEMM 1 on the C1 tile, GEMM 2 on C2 (both 128 rows, so one tile plan serves both).
template <class C1, class C2, int kMode>
cudaError_t launch_wg_gemms_mode(const MoeGemmArgs& a, int max_tiles, MoeProfile& prof, cudaStream_t stream) {
  static_assert(C1::BM == C2::BM, "one row-tile plan for both GEMMs");
  auto* k13 = moe_gemm13_wg_kernel<C1, kMode>;
  auto* k2 = moe_gemm2_wg_kernel<C2, kMode>;
  cudaError_t e = gemm::wg_prepare<C1>(k13);
  if (e == cudaSuccess) e = gemm::wg_prepare<C2>(k2);
  if (e != cudaSuccess) return e;
  k13<<<moe_grid(max_tiles, a.group, ceil_div(a.inter, C1::BN / 2)), C1::kThreads, C1::kSmemBytes, stream>>>(a);
  prof.mark("gemm13", stream);
  k2<<<moe_grid(max_tiles, a.group, ceil_div(a.hidden, C2::BN)), C2::kThreads, C2::kSmemBytes, stream>>>(a);
  prof.mark("gemm2", stream);
  return cudaGetLastError();
}

int env_int(const char* name, int fallback);
template <class C1, class C2>
cudaError_t launch_wg_gemms_pair(const MoeGemmArgs& a, int max_tiles, MoeProfile& prof, cudaStream_t stream) {
  switch (env_int("MOEX_MOE_WG_MODE", 1)) {
    case 0: return launch_wg_gemms_mode<C1, C2, 0>(a, max_tiles, prof, stream);
    case 2: return launch_wg_gemms_mode<C1, C2, 2>(a, max_tiles, prof, stream);
    default: return launch_wg_gemms_mode<C1, C2, 1>(a, max_tiles, prof, stream);
  }
}
// `wide`: the policy's choice for both GEMMs; MOEX_MOE_WG13 / MOEX_MOE_WG2 = wide|square
// override one GEMM's tile (benchmarks).
bool env_wide(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v != nullptr && std::strcmp(v, "wide") == 0) return true;
  if (v != nullptr && std::strcmp(v, "square") == 0) return false;
  return fallback;
}
cudaError_t launch_wg_gemms(bool wide, const MoeGemmArgs& a, int max_tiles, MoeProfile& prof, cudaStream_t stream) {
  const bool w13 = env_wide("MOEX_MOE_WG13", wide), w2 = env_wide("MOEX_MOE_WG2", wide);
  using Sq = gemm::WgSquare;
  using Wi = gemm::WgWide;
  if (w13) return w2 ? launch_wg_gemms_pair<Wi, Wi>(a, max_tiles, prof, stream) : launch_wg_gemms_pair<Wi, Sq>(a, max_tiles, prof, stream);
  return w2 ? launch_wg_gemms_pair<Sq, Wi>(a, max_tiles, prof, stream) : launch_wg_gemms_pair<Sq, Sq>(a, max_tiles, prof, stream);
}

// Launch knobs, read at every launch so that tests and benchmarks can switch in one process;
// none changes a bit of the result except MOEX_MOE_PARTIAL=f32 (fp32 partials for bf16 out,
// for timing the old byte count).
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != 0 ? std::atoi(v) : fallback;
}
// MOEX_MOE_RASTER: row tiles per raster group (moe_block); 1 = the plain order.
constexpr int kDefaultRasterGroup = 8;
int raster_group() { return std::max(1, env_int("MOEX_MOE_RASTER", kDefaultRasterGroup)); }
// MOEX_MOE_TILE_POLICY=1: the tile choice of commit 3b3c0b7 (WMMA 16-row up to 16 rows per
// expert, mma.sync 64x128 up to 64), for comparison.
bool old_tile_policy() { return env_int("MOEX_MOE_TILE_POLICY", 2) == 1; }

// Row-tile choice for the grouped GEMMs from the mean rows per active expert. Every choice
// gives the same bits (mma_pipeline.cuh); `pipe` = operands fit the pipelined tiles.
enum class MoeTileKind { kSmall, kLarge, kShort, kSquare, kWide, kWide4, kWgSquare, kWgWide };
MoeTileKind moe_tile_kind(int slots, int active, int inter, bool pipe) {
  const gemm::PipeTile forced = gemm::pipe_tile_override();
  // With wgmma the 128-row tile runs at any row count: its empty half issues no MMA and loads
  // nothing (gemm::wg_tile with `rows`), and one tile per expert reads the expert's weights once, which is
  // what 1-64 rows per expert need (measured: docs/kernels/fused_moe.md, "Prefill path").
  const bool wg_any_rows = pipe && forced == gemm::PipeTile::kAuto && gemm::wgmma_enabled() && !old_tile_policy();
  if (!wg_any_rows && slots <= 16 * active) return MoeTileKind::kSmall;
  if (!pipe || forced == gemm::PipeTile::kWmma) return MoeTileKind::kLarge;
  switch (forced) {
    case gemm::PipeTile::kWide: return MoeTileKind::kWide;
    case gemm::PipeTile::kWide4: return MoeTileKind::kWide4;
    case gemm::PipeTile::kSquare: return MoeTileKind::kSquare;
    case gemm::PipeTile::kShort: return MoeTileKind::kShort;
    default: break;
  }
  if (gemm::wgmma_available()) {
    switch (forced) {
      case gemm::PipeTile::kWgWide: return MoeTileKind::kWgWide;
      case gemm::PipeTile::kWgSquare: return MoeTileKind::kWgSquare;
      default: break;
    }
  } else if (gemm::pipe_equivalent(forced) != forced) {
    return gemm::pipe_equivalent(forced) == gemm::PipeTile::kWide ? MoeTileKind::kWide : MoeTileKind::kSquare;
  }
  // Measured on an H100 (docs/kernels/fused_moe.md): 128x128, whose two blocks per SM overlap
  // one's epilogue with the other's mainloop (it beat 128x256 by 5-8% on Qwen3-30B-A3B, inter
  // 768, up to 16384 tokens); 128x256 only for long rows on both GEMMs (Mixtral-like inter),
  // where it behaves like the dense GEMM (gemm.md). Without wgmma (or with the old policy),
  // the mma.sync 64x128 tile up to 64 rows per expert.
  const bool wide = slots > 256 * active && inter >= 4096;
  if (gemm::wgmma_enabled() && (wg_any_rows || slots > 64 * active))
    return wide ? MoeTileKind::kWgWide : MoeTileKind::kWgSquare;
  if (slots <= 64 * active) return MoeTileKind::kShort;
  return wide ? MoeTileKind::kWide : MoeTileKind::kSquare;
}
int moe_tile_rows(MoeTileKind k) {
  switch (k) {
    case MoeTileKind::kSmall: return gemm::TileSmall::BM;
    case MoeTileKind::kLarge: return gemm::TileLarge::BM;
    case MoeTileKind::kShort: return gemm::PipeShort::BM;
    case MoeTileKind::kSquare: return gemm::PipeSquare::BM;
    case MoeTileKind::kWgSquare: return gemm::WgSquare::BM;
    case MoeTileKind::kWgWide: return gemm::WgWide::BM;
    default: return gemm::PipeWide::BM;
  }
}
cudaError_t launch_moe_gemms(MoeTileKind k, const MoeGemmArgs& a, int max_tiles, bool vec13, bool vec2,
                             MoeProfile& prof, cudaStream_t stream) {
  switch (k) {
    case MoeTileKind::kSmall: launch_gemms<gemm::TileSmall>(a, max_tiles, vec13, vec2, prof, stream); return cudaGetLastError();
    case MoeTileKind::kLarge: launch_gemms<gemm::TileLarge>(a, max_tiles, vec13, vec2, prof, stream); return cudaGetLastError();
    case MoeTileKind::kShort: return launch_pipe_gemms<gemm::PipeShort>(a, max_tiles, prof, stream);
    case MoeTileKind::kSquare: return launch_pipe_gemms<gemm::PipeSquare>(a, max_tiles, prof, stream);
    case MoeTileKind::kWide4: return launch_pipe_gemms<gemm::PipeWide4>(a, max_tiles, prof, stream);
    case MoeTileKind::kWgSquare: return launch_wg_gemms(false, a, max_tiles, prof, stream);
    case MoeTileKind::kWgWide: return launch_wg_gemms(true, a, max_tiles, prof, stream);
    default: return launch_pipe_gemms<gemm::PipeWide>(a, max_tiles, prof, stream);
  }
}

// Bound on the scratch block per chunk; a chunk holds at least one token.
// 2 GiB: every chunk streams all the experts' weights once more (DeepSeek-V3: 22.5 GB, 7.5 ms),
// so the chunk should hold the whole batch where the device can afford it: DeepSeek-V3 holds
// ~12k tokens per chunk (166 KB per token), Qwen3-30B-A3B ~47k.
constexpr size_t kMaxChunkBytes = size_t(2) << 30;

}  // namespace

// Partials in out's dtype (bf16 or f32), or f32 when MOEX_MOE_PARTIAL=f32.
moe::PartKind moe_part_kind(DType out) {
  const char* v = std::getenv("MOEX_MOE_PARTIAL");
  if (v != nullptr && std::strcmp(v, "f32") == 0) return moe::PartKind::kF32;
  return out == DType::kBF16 ? moe::PartKind::kBF16 : moe::PartKind::kF32;
}

cudaError_t launch_moe_combine(const moe::CombineArgs& c, moe::PartKind kind, DType out, int tokens, bool pdl_wait,
                               cudaStream_t stream) {
  const dim3 grid{unsigned(tokens)}, block{unsigned(moe::kCombineThreads)};
  cudaError_t err = cudaErrorInvalidValue;
  dispatch_act(out, [&](auto to) {
    using TO = decltype(to);
    if (kind == moe::PartKind::kBF16) {
      err = pdl_wait ? pdl::launch(moe::combine_kernel<TO, bf16, true>, grid, block, 0, stream, true, c)
                     : pdl::launch(moe::combine_kernel<TO, bf16, false>, grid, block, 0, stream, false, c);
    } else {
      err = pdl_wait ? pdl::launch(moe::combine_kernel<TO, float, true>, grid, block, 0, stream, true, c)
                     : pdl::launch(moe::combine_kernel<TO, float, false>, grid, block, 0, stream, false, c);
    }
  });
  return err;
}

cudaError_t launch_fused_moe(const ops::FusedMoeParams& p, Scratch& scratch, cudaStream_t stream) {
  const int n = int(p.x.shape[0]), hidden = int(p.x.shape[1]);
  const int top_k = int(p.topk_ids.shape[1]);
  const int local_experts = int(p.w13.shape[0]), inter = int(p.w2.shape[2]);
  const int num_experts = p.expert_map.empty() ? local_experts : int(p.expert_map.shape[0]);
  const int32_t* map = p.expert_map.empty() ? nullptr : p.expert_map.ptr<int32_t>();
  if (n == 0) return cudaSuccess;
  if (p.out.dtype != DType::kBF16 && p.out.dtype != DType::kF32) return cudaErrorInvalidValue;
  // Few tokens: stream each active expert once, no align step (moe_decode.cu; same bits).
  if (moe_decode_applies(p)) return launch_moe_decode(p, scratch, stream);

  const moe::PartKind part_kind = moe_part_kind(p.out.dtype);
  const size_t part_size = part_kind == moe::PartKind::kBF16 ? sizeof(bf16) : sizeof(float);
  const size_t per_token = size_t(top_k) * (part_size * hidden + sizeof(bf16) * inter + 3 * sizeof(int32_t));
  // Also keep the tile count far below the grid limits: at most 2^19 slots per chunk.
  const size_t max_chunk = std::min<size_t>(kMaxChunkBytes / per_token, (size_t(1) << 19) / size_t(top_k));
  const int chunk = int(std::max<size_t>(1, std::min<size_t>(n, max_chunk)));
  const int max_slots = chunk * top_k;
  const int tile_m_bound = gemm::TileSmall::BM;  // the smaller tile needs the most tiles
  const int max_tiles_bound = moe_max_tiles(max_slots, local_experts, tile_m_bound);
  using C = ScratchCarver;
  const size_t bytes = C::bytes_for<int32_t>(local_experts) + C::bytes_for<int32_t>(local_experts + 1) +
                       C::bytes_for<int32_t>(max_slots) + 2 * C::bytes_for<int32_t>(max_tiles_bound) +
                       C::bytes_for<int32_t>(1) + C::bytes_for<int32_t>(moe_align_scratch(max_slots, local_experts)) +
                       C::bytes_for<bf16>(size_t(max_slots) * inter) +
                       C::bytes_for<char>(size_t(max_slots) * hidden * part_size);
  C carver{static_cast<char*>(scratch.get(bytes))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;

  MoeGemmArgs a{};
  a.al.counts = carver.carve<int32_t>(local_experts);
  a.al.offsets = carver.carve<int32_t>(local_experts + 1);
  a.al.sorted_slots = carver.carve<int32_t>(max_slots);
  a.al.tile_expert = carver.carve<int32_t>(max_tiles_bound);
  a.al.tile_row = carver.carve<int32_t>(max_tiles_bound);
  a.al.num_tiles = carver.carve<int32_t>(1);
  a.al.block_base = carver.carve<int32_t>(moe_align_scratch(max_slots, local_experts));
  a.h = carver.carve<bf16>(size_t(max_slots) * inter);
  a.part = carver.carve<char>(size_t(max_slots) * hidden * part_size);
  a.part_kind = part_kind;
  a.sx = p.x.stride[0];
  a.w13 = p.w13.ptr<bf16>(); a.sw13_e = p.w13.stride[0]; a.sw13_r = p.w13.stride[1];
  a.w2 = p.w2.ptr<bf16>(); a.sw2_e = p.w2.stride[0]; a.sw2_r = p.w2.stride[1];
  a.s_w = p.topk_weights.stride[0];
  a.top_k = top_k; a.hidden = hidden; a.inter = inter;
  a.group = raster_group();
  const bool vec13 = aligned16(p.x.data) && a.sx % 8 == 0 && aligned16(a.w13) && a.sw13_e % 8 == 0 && a.sw13_r % 8 == 0;
  const bool vec2 = inter % 8 == 0 && aligned16(a.w2) && a.sw2_e % 8 == 0 && a.sw2_r % 8 == 0;
  const bool pipe = vec13 && vec2 && hidden % 8 == 0;  // cp.async needs whole 16-byte chunks

  for (int t0 = 0; t0 < n; t0 += chunk) {
    const int tokens = std::min(chunk, n - t0);
    const int slots = tokens * top_k;
    const int32_t* ids = p.topk_ids.ptr<int32_t>() + int64_t(t0) * p.topk_ids.stride[0];
    // Rows per active expert decide the tile; all tiles give the same bits (mma_pipeline.cuh).
    const int active = std::min(slots, local_experts);
    const MoeTileKind kind = moe_tile_kind(slots, active, inter, pipe);
    const int tile_m = moe_tile_rows(kind);
    const int max_tiles = moe_max_tiles(slots, local_experts, tile_m);
    MoeProfile prof(stream);
    prof.mark("start", stream);
    // ids must be contiguous per chunk for the align kernels: topk_ids rows are [n, top_k].
    cudaError_t err = launch_moe_align(ids, slots, map, num_experts, local_experts, tile_m, a.al, stream);
    if (err != cudaSuccess) return err;
    prof.mark("align", stream);
    a.x = p.x.ptr<bf16>() + int64_t(t0) * a.sx;
    a.w = p.topk_weights.ptr<float>() + int64_t(t0) * p.topk_weights.stride[0];
    err = launch_moe_gemms(kind, a, max_tiles, vec13, vec2, prof, stream);
    if (err != cudaSuccess) return err;
    moe::CombineArgs c{};
    c.part = a.part;
    c.ids = ids; c.s_ids = p.topk_ids.stride[0];
    c.map = map; c.num_experts = num_experts; c.local_experts = local_experts;
    c.top_k = top_k; c.hidden = hidden;
    c.out = static_cast<char*>(p.out.data) + int64_t(t0) * p.out.stride[0] * int64_t(dtype_size(p.out.dtype));
    c.s_out = p.out.stride[0];
    c.vec = moe::combine_vec_ok(c.out, c.s_out, hidden);
    err = launch_moe_combine(c, part_kind, p.out.dtype, tokens, false, stream);
    if (err != cudaSuccess) return err;
    prof.mark("combine", stream);
    prof.report(tokens, tile_m, a.group);
  }
  return cudaSuccess;
}

}  // namespace moex::kernels
