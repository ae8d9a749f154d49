// Steps 2-4 of fused MoE (grouped GEMMs and the slot-order combine) and the launcher.
#include <algorithm>

#include "kernels/common/dtype.cuh"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/mma_pipeline.cuh"
#include "kernels/gemm/mma_tile.cuh"
#include "kernels/gemm/wgmma_pipeline.cuh"
#include "kernels/moe/moe.h"
#include "kernels/moe/moe_decode.h"

namespace moex::kernels {
namespace {

using bf16 = __nv_bfloat16;

struct MoeGemmArgs {
  const bf16* x; int64_t sx;         // [tokens, hidden] row stride sx
  const bf16* w13; int64_t sw13_e, sw13_r;  // [local_experts, 2 * inter, hidden]
  const bf16* w2; int64_t sw2_e, sw2_r;     // [local_experts, hidden, inter]
  bf16* h;                           // [num_slots, inter] rows in sorted order
  float* y;                          // [num_slots, hidden] rows by slot index
  int top_k, hidden, inter;
  MoeAlignment al;
};

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

// h = bf16(silu(gate) * up) from the fp32 tile C (c(r, col): gate in [0, BN/2), up after).
template <int BM, int BN, class CAt>
__device__ void moe_epilogue13(const MoeGemmArgs& a, const MoeTile& t, int i0, CAt c_at) {
  constexpr int kHalf = BN / 2;
  for (int idx = threadIdx.x; idx < BM * kHalf; idx += blockDim.x) {
    const int r = idx / kHalf, c = idx % kHalf;
    if (r >= t.rows || i0 + c >= a.inter) continue;
    const float g = c_at(r, c), u = c_at(r, c + kHalf);
    a.h[int64_t(t.row0 + r) * a.inter + i0 + c] = __float2bfloat16_rn(g / (1.f + expf(-g)) * u);
  }
}

// GEMM 2 operand rows: h rows of the tile (their slots noted for the scatter) and w2 rows n0...
template <int BM, int BN>
__device__ void moe_rows2(const MoeGemmArgs& a, const MoeTile& t, int n0, const bf16** a_row, const bf16** b_row,
                          int* slot) {
  for (int r = threadIdx.x; r < BM; r += blockDim.x) {
    a_row[r] = r < t.rows ? a.h + int64_t(t.row0 + r) * a.inter : nullptr;
    slot[r] = r < t.rows ? a.al.sorted_slots[t.row0 + r] : -1;
  }
  const bf16* w = a.w2 + int64_t(t.expert) * a.sw2_e;
  for (int c = threadIdx.x; c < BN; c += blockDim.x)
    b_row[c] = n0 + c < a.hidden ? w + int64_t(n0 + c) * a.sw2_r : nullptr;
}

// y[slot] = C rows in fp32, scattered to the rows' slot indices.
template <int BM, int BN, class CAt>
__device__ void moe_epilogue2(const MoeGemmArgs& a, const MoeTile& t, int n0, const int* slot, CAt c_at) {
  for (int idx = threadIdx.x; idx < BM * BN; idx += blockDim.x) {
    const int r = idx / BN, c = idx % BN;
    if (r >= t.rows || n0 + c >= a.hidden) continue;
    a.y[int64_t(slot[r]) * a.hidden + n0 + c] = c_at(r, c);
  }
}

// Grouped GEMM 1 with SwiGLU on the WMMA tile (few rows per expert, or unaligned operands): a
// block owns BN/2 gate columns and the matching BN/2 up columns, so silu(gate) * up is formed in
// the epilogue; h is rounded to bf16 once.
template <class Cfg, bool kVec>
__global__ void __launch_bounds__(gemm::kThreads) moe_gemm13_kernel(MoeGemmArgs a) {
  __shared__ __align__(128) gemm::SmemTile<Cfg> s;
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int i0 = blockIdx.x * (Cfg::BN / 2);
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
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int n0 = blockIdx.x * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row, s.b_row, slot);
  __syncthreads();
  gemm::mma_tile<Cfg, kVec>(s, a.inter);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, [&](int r, int c) { return s.c[r][c]; });
}

// The same two GEMMs on the pipelined mainloop (mma_pipeline.cuh; same K order, same bits) for
// many rows per expert with 16-byte aligned rows and K % 8 == 0.
template <class Cfg>
__global__ void __launch_bounds__(gemm::kPipeThreads, Cfg::MIN_BLOCKS) moe_gemm13_pipe_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  const gemm::PipeSmem<Cfg> s{smem};
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int i0 = blockIdx.x * (Cfg::BN / 2);
  moe_rows13<Cfg::BM, Cfg::BN>(a, t, i0, s.a_row(), s.b_row());
  __syncthreads();
  gemm::pipe_tile<Cfg>(s, a.hidden);
  moe_epilogue13<Cfg::BM, Cfg::BN>(a, t, i0, [&](int r, int c) { return s.c(r, c); });
}

template <class Cfg>
__global__ void __launch_bounds__(gemm::kPipeThreads, Cfg::MIN_BLOCKS) moe_gemm2_pipe_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int slot[Cfg::BM];
  const gemm::PipeSmem<Cfg> s{smem};
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int n0 = blockIdx.x * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row(), s.b_row(), slot);
  __syncthreads();
  gemm::pipe_tile<Cfg>(s, a.inter);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, [&](int r, int c) { return s.c(r, c); });
}

// The same two GEMMs on the wgmma mainloop (wgmma_pipeline.cuh, sm_90a): 128-row tiles.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) moe_gemm13_wg_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  const auto s = gemm::WgSmem<Cfg>::from(smem);
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int i0 = blockIdx.x * (Cfg::BN / 2);
  moe_rows13<Cfg::BM, Cfg::BN>(a, t, i0, s.a_row(), s.b_row());
  __syncthreads();
  gemm::wg_tile<Cfg>(s, a.hidden);
  moe_epilogue13<Cfg::BM, Cfg::BN>(a, t, i0, [&](int r, int c) { return s.c(r, c); });
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) moe_gemm2_wg_kernel(MoeGemmArgs a) {
  extern __shared__ __align__(128) char smem[];
  __shared__ int slot[Cfg::BM];
  const auto s = gemm::WgSmem<Cfg>::from(smem);
  if (int(blockIdx.y) >= *a.al.num_tiles) return;
  const MoeTile t = moe_tile<Cfg::BM>(a.al, blockIdx.y);
  const int n0 = blockIdx.x * Cfg::BN;
  moe_rows2<Cfg::BM, Cfg::BN>(a, t, n0, s.a_row(), s.b_row(), slot);
  __syncthreads();
  gemm::wg_tile<Cfg>(s, a.inter);
  moe_epilogue2<Cfg::BM, Cfg::BN>(a, t, n0, slot, [&](int r, int c) { return s.c(r, c); });
}

// out[t, :] = sum over local slots j in order of w[t, j] * y[t * top_k + j, :], one rounding.
template <class TOut>
__global__ void moe_combine_kernel(const float* y, const int32_t* ids, int64_t s_ids, const float* weights,
                                   int64_t s_w, const int32_t* map, int num_experts, int local_experts,
                                   int top_k, int hidden, TOut* out, int64_t s_out) {
  const int t = blockIdx.x;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < top_k; ++j) {
      const int id = ids[int64_t(t) * s_ids + j];
      const int e = map ? ((id >= 0 && id < num_experts) ? map[id] : -1) : ((id >= 0 && id < local_experts) ? id : -1);
      if (e < 0) continue;
      acc += weights[int64_t(t) * s_w + j] * y[(int64_t(t) * top_k + j) * hidden + c];
    }
    out[int64_t(t) * s_out + c] = from_f32<TOut>(acc);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <class Cfg>
void launch_gemms(const MoeGemmArgs& a, int max_tiles, bool vec13, bool vec2, cudaStream_t stream) {
  const dim3 g13(ceil_div(a.inter, Cfg::BN / 2), max_tiles);
  const dim3 g2(ceil_div(a.hidden, Cfg::BN), max_tiles);
  if (vec13) moe_gemm13_kernel<Cfg, true><<<g13, gemm::kThreads, 0, stream>>>(a);
  else moe_gemm13_kernel<Cfg, false><<<g13, gemm::kThreads, 0, stream>>>(a);
  if (vec2) moe_gemm2_kernel<Cfg, true><<<g2, gemm::kThreads, 0, stream>>>(a);
  else moe_gemm2_kernel<Cfg, false><<<g2, gemm::kThreads, 0, stream>>>(a);
}

template <class Cfg>
cudaError_t launch_pipe_gemms(const MoeGemmArgs& a, int max_tiles, cudaStream_t stream) {
  auto* k13 = moe_gemm13_pipe_kernel<Cfg>;
  auto* k2 = moe_gemm2_pipe_kernel<Cfg>;
  cudaError_t e = gemm::pipe_prepare<Cfg>(k13);
  if (e == cudaSuccess) e = gemm::pipe_prepare<Cfg>(k2);
  if (e != cudaSuccess) return e;
  k13<<<dim3(ceil_div(a.inter, Cfg::BN / 2), max_tiles), gemm::kPipeThreads, Cfg::kSmemBytes, stream>>>(a);
  k2<<<dim3(ceil_div(a.hidden, Cfg::BN), max_tiles), gemm::kPipeThreads, Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <class Cfg>
cudaError_t launch_wg_gemms(const MoeGemmArgs& a, int max_tiles, cudaStream_t stream) {
  auto* k13 = moe_gemm13_wg_kernel<Cfg>;
  auto* k2 = moe_gemm2_wg_kernel<Cfg>;
  cudaError_t e = gemm::wg_prepare<Cfg>(k13);
  if (e == cudaSuccess) e = gemm::wg_prepare<Cfg>(k2);
  if (e != cudaSuccess) return e;
  k13<<<dim3(ceil_div(a.inter, Cfg::BN / 2), max_tiles), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(a);
  k2<<<dim3(ceil_div(a.hidden, Cfg::BN), max_tiles), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

// Row-tile choice for the grouped GEMMs from the mean rows per active expert. Every choice
// gives the same bits (mma_pipeline.cuh); `pipe` = operands fit the pipelined tiles.
enum class MoeTileKind { kSmall, kLarge, kShort, kSquare, kWide, kWide4, kWgSquare, kWgWide };
MoeTileKind moe_tile_kind(int slots, int active, int inter, bool pipe) {
  if (slots <= 16 * active) return MoeTileKind::kSmall;
  const gemm::PipeTile forced = gemm::pipe_tile_override();
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
  // Measured on an H100 (docs/kernels/fused_moe.md): 64x128 up to 64 rows per expert; then
  // 128x128, whose two blocks per SM overlap one's epilogue with the other's mainloop (it beat
  // 128x256 by 5-8% on Qwen3-30B-A3B, inter 768, up to 16384 tokens); 128x256 only for long
  // rows on both GEMMs (Mixtral-like inter), where it behaves like the dense GEMM (gemm.md).
  // The same split on the wgmma mainloop where available (same bits: tests/cuda_ops/wgmma_test.cpp).
  if (slots <= 64 * active) return MoeTileKind::kShort;
  if (gemm::wgmma_enabled())
    return (slots > 256 * active && inter >= 4096) ? MoeTileKind::kWgWide : MoeTileKind::kWgSquare;
  return (slots > 256 * active && inter >= 4096) ? MoeTileKind::kWide : MoeTileKind::kSquare;
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
                             cudaStream_t stream) {
  switch (k) {
    case MoeTileKind::kSmall: launch_gemms<gemm::TileSmall>(a, max_tiles, vec13, vec2, stream); return cudaGetLastError();
    case MoeTileKind::kLarge: launch_gemms<gemm::TileLarge>(a, max_tiles, vec13, vec2, stream); return cudaGetLastError();
    case MoeTileKind::kShort: return launch_pipe_gemms<gemm::PipeShort>(a, max_tiles, stream);
    case MoeTileKind::kSquare: return launch_pipe_gemms<gemm::PipeSquare>(a, max_tiles, stream);
    case MoeTileKind::kWide4: return launch_pipe_gemms<gemm::PipeWide4>(a, max_tiles, stream);
    case MoeTileKind::kWgSquare: return launch_wg_gemms<gemm::WgSquare>(a, max_tiles, stream);
    case MoeTileKind::kWgWide: return launch_wg_gemms<gemm::WgWide>(a, max_tiles, stream);
    default: return launch_pipe_gemms<gemm::PipeWide>(a, max_tiles, stream);
  }
}

// Bound on the scratch block per chunk; a chunk holds at least one token.
constexpr size_t kMaxChunkBytes = size_t(512) << 20;

}  // namespace

cudaError_t launch_fused_moe(const ops::FusedMoeParams& p, Scratch& scratch, cudaStream_t stream) {
  const int n = int(p.x.shape[0]), hidden = int(p.x.shape[1]);
  const int top_k = int(p.topk_ids.shape[1]);
  const int local_experts = int(p.w13.shape[0]), inter = int(p.w2.shape[2]);
  const int num_experts = p.expert_map.empty() ? local_experts : int(p.expert_map.shape[0]);
  const int32_t* map = p.expert_map.empty() ? nullptr : p.expert_map.ptr<int32_t>();
  if (n == 0) return cudaSuccess;
  // Few tokens: stream each active expert once, no align step (moe_decode.cu; same bits).
  if (moe_decode_applies(p)) return launch_moe_decode(p, scratch, stream);

  const size_t per_token = size_t(top_k) * (sizeof(float) * hidden + sizeof(bf16) * inter + 3 * sizeof(int32_t));
  // Also keep the tile count (grid.y) far below 65535: at most 2^19 slots per chunk.
  const size_t max_chunk = std::min<size_t>(kMaxChunkBytes / per_token, (size_t(1) << 19) / size_t(top_k));
  const int chunk = int(std::max<size_t>(1, std::min<size_t>(n, max_chunk)));
  const int max_slots = chunk * top_k;
  const int tile_m_bound = gemm::TileSmall::BM;  // the smaller tile needs the most tiles
  const int max_tiles_bound = moe_max_tiles(max_slots, local_experts, tile_m_bound);
  using C = ScratchCarver;
  const size_t bytes = C::bytes_for<int32_t>(local_experts) + C::bytes_for<int32_t>(local_experts + 1) +
                       C::bytes_for<int32_t>(max_slots) + 2 * C::bytes_for<int32_t>(max_tiles_bound) +
                       C::bytes_for<int32_t>(1) + C::bytes_for<bf16>(size_t(max_slots) * inter) +
                       C::bytes_for<float>(size_t(max_slots) * hidden);
  C carver{static_cast<char*>(scratch.get(bytes))};
  if (carver.base == nullptr) return cudaErrorMemoryAllocation;

  MoeGemmArgs a{};
  a.al.counts = carver.carve<int32_t>(local_experts);
  a.al.offsets = carver.carve<int32_t>(local_experts + 1);
  a.al.sorted_slots = carver.carve<int32_t>(max_slots);
  a.al.tile_expert = carver.carve<int32_t>(max_tiles_bound);
  a.al.tile_row = carver.carve<int32_t>(max_tiles_bound);
  a.al.num_tiles = carver.carve<int32_t>(1);
  a.h = carver.carve<bf16>(size_t(max_slots) * inter);
  a.y = carver.carve<float>(size_t(max_slots) * hidden);
  a.sx = p.x.stride[0];
  a.w13 = p.w13.ptr<bf16>(); a.sw13_e = p.w13.stride[0]; a.sw13_r = p.w13.stride[1];
  a.w2 = p.w2.ptr<bf16>(); a.sw2_e = p.w2.stride[0]; a.sw2_r = p.w2.stride[1];
  a.top_k = top_k; a.hidden = hidden; a.inter = inter;
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
    // ids must be contiguous per chunk for the align kernels: topk_ids rows are [n, top_k].
    cudaError_t err = launch_moe_align(ids, slots, map, num_experts, local_experts, tile_m, a.al, stream);
    if (err != cudaSuccess) return err;
    a.x = p.x.ptr<bf16>() + int64_t(t0) * a.sx;
    err = launch_moe_gemms(kind, a, max_tiles, vec13, vec2, stream);
    if (err != cudaSuccess) return err;
    const float* w = p.topk_weights.ptr<float>() + int64_t(t0) * p.topk_weights.stride[0];
    const int threads = 256;
    const bool ok = dispatch_act(p.out.dtype, [&](auto to) {
      using TO = decltype(to);
      TO* out = p.out.ptr<TO>() + int64_t(t0) * p.out.stride[0];
      moe_combine_kernel<TO><<<tokens, threads, 0, stream>>>(a.y, ids, p.topk_ids.stride[0], w, p.topk_weights.stride[0],
                                                             map, num_experts, local_experts, top_k, hidden, out,
                                                             p.out.stride[0]);
    });
    if (!ok) return cudaErrorInvalidValue;
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace moex::kernels
