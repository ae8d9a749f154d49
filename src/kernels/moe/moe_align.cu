// Step 1 of fused MoE: group routed slots by local expert, deterministically.
#include "kernels/common/dtype.cuh"
#include "kernels/moe/moe.h"

namespace moex::kernels {
namespace {

constexpr int kAlignThreads = 256;
// Above this many local experts the per-chunk histograms (8 x local ints of shared memory) do
// not fit: the per-expert kernels below run instead.
constexpr int kAlignMaxLocal = 1024;

__device__ __forceinline__ int local_expert(int id, const int32_t* map, int num_experts, int local_experts) {
  if (map) return (id >= 0 && id < num_experts) ? map[id] : -1;
  return (id >= 0 && id < local_experts) ? id : -1;
}

// One block per local expert: counts[e] = number of slots routed to e.
__global__ void moe_count_kernel(const int32_t* ids, int num_slots, const int32_t* map, int num_experts,
                                 int local_experts, int32_t* counts) {
  __shared__ int warp_counts[kAlignThreads / 32];
  const int e = blockIdx.x;
  int c = 0;
  for (int s = threadIdx.x; s < num_slots; s += blockDim.x)
    c += local_expert(ids[s], map, num_experts, local_experts) == e;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kAlignThreads / 32; ++w) total += warp_counts[w];
    counts[e] = total;
  }
}

// One thread: prefix sum and the row-tile schedule (local_experts is at most a few hundred).
__global__ void moe_plan_kernel(const int32_t* counts, int local_experts, int tile_m, int32_t* offsets,
                                int32_t* tile_expert, int32_t* tile_row, int32_t* num_tiles) {
  if (threadIdx.x != 0) return;
  int off = 0, tiles = 0;
  for (int e = 0; e < local_experts; ++e) {
    offsets[e] = off;
    for (int r = 0; r < counts[e]; r += tile_m) {
      tile_expert[tiles] = e;
      tile_row[tiles] = off + r;
      ++tiles;
    }
    off += counts[e];
  }
  offsets[local_experts] = off;
  *num_tiles = tiles;
}

// One block per local expert: write its slots in ascending slot order (block-wide stream compaction).
__global__ void moe_fill_kernel(const int32_t* ids, int num_slots, const int32_t* map, int num_experts,
                                int local_experts, const int32_t* offsets, int32_t* sorted_slots) {
  __shared__ int warp_counts[kAlignThreads / 32];
  const int e = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int base = offsets[e];
  for (int s0 = 0; s0 < num_slots; s0 += blockDim.x) {
    const int s = s0 + threadIdx.x;
    const bool hit = s < num_slots && local_expert(ids[s], map, num_experts, local_experts) == e;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kAlignThreads / 32; ++w) {
      before += (w < warp) ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    if (hit) sorted_slots[base + before + __popc(ballot & ((1u << lane) - 1u))] = s;
    base += total;
    __syncthreads();
  }
}


// The fast align (local_experts <= kAlignMaxLocal), three kernels whose output equals the
// per-expert kernels' above exactly (MoeAlignTest): the slots are cut into chunks of
// kAlignChunk, each chunk into 8 contiguous warp ranges, and a slot's place in its expert's
// list is (slots of that expert in earlier chunks) + (in earlier warp ranges of its chunk) +
// (earlier in its warp range), so the list stays ascending within each expert. Every count is
// an integer, so no order of atomics can change a result.
constexpr int kAlignChunk = 1024;                       // slots per block
constexpr int kAlignWarps = kAlignThreads / 32;         // 8
constexpr int kAlignWarpSlots = kAlignChunk / kAlignWarps;  // 128: 4 steps of 32 per warp

// Chunk `blockIdx.x`: block_base[chunk, e] = its slots of local expert e.
__global__ void __launch_bounds__(kAlignThreads) moe_chunk_count_kernel(const int32_t* ids, int num_slots,
                                                                        const int32_t* map, int num_experts,
                                                                        int local_experts, int32_t* block_base) {
  extern __shared__ int hist[];  // [local_experts]
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int s0 = blockIdx.x * kAlignChunk, s1 = min(num_slots, s0 + kAlignChunk);
  for (int s = s0 + threadIdx.x; s < s1; s += blockDim.x) {
    const int e = local_expert(ids[s], map, num_experts, local_experts);
    if (e >= 0) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x)
    block_base[int64_t(blockIdx.x) * local_experts + e] = hist[e];
}

// One block: counts, offsets, the tile plan, and block_base turned into each chunk's first
// position per expert (offsets[e] + slots of e in earlier chunks).
__global__ void __launch_bounds__(kAlignThreads) moe_chunk_plan_kernel(int chunks, int local_experts, int tile_m,
                                                                       int32_t* block_base, int32_t* counts,
                                                                       int32_t* offsets, int32_t* tile_expert,
                                                                       int32_t* tile_row, int32_t* num_tiles) {
  extern __shared__ int sh[];  // [2 * local_experts]: counts, then first tile per expert
  int* cnt = sh;
  int* first_tile = sh + local_experts;
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x) {
    int run = 0;
    for (int b = 0; b < chunks; ++b) {
      int32_t& v = block_base[int64_t(b) * local_experts + e];
      const int c = v;
      v = run;
      run += c;
    }
    cnt[e] = run;
    counts[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // local_experts <= kAlignMaxLocal: a short serial scan
    int off = 0, tiles = 0;
    for (int e = 0; e < local_experts; ++e) {
      offsets[e] = off;
      first_tile[e] = tiles;
      const int c = cnt[e];
      cnt[e] = off;  // from here on: the offset
      off += c;
      tiles += (c + tile_m - 1) / tile_m;
    }
    offsets[local_experts] = off;
    *num_tiles = tiles;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x) {
    const int off = cnt[e], c = offsets[e + 1] - off;
    for (int r = 0, t = first_tile[e]; r < c; r += tile_m, ++t) {
      tile_expert[t] = e;
      tile_row[t] = off + r;
    }
    for (int b = 0; b < chunks; ++b) block_base[int64_t(b) * local_experts + e] += off;
  }
}

// Chunk `blockIdx.x`: places its slots. Warp w owns slots [w * 128, (w + 1) * 128) of the chunk.
__global__ void __launch_bounds__(kAlignThreads) moe_chunk_fill_kernel(const int32_t* ids, int num_slots,
                                                                       const int32_t* map, int num_experts,
                                                                       int local_experts, const int32_t* block_base,
                                                                       int32_t* sorted_slots) {
  extern __shared__ int wcnt[];  // [kAlignWarps, local_experts]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int* mine = wcnt + warp * local_experts;  // [local_experts] this warp's counters
  for (int i = threadIdx.x; i < kAlignWarps * local_experts; i += blockDim.x) wcnt[i] = 0;
  __syncthreads();
  const int w0 = blockIdx.x * kAlignChunk + warp * kAlignWarpSlots;
  const unsigned lt = (1u << lane) - 1u;
  // Pass 1: slots per expert in this warp's range.
  for (int step = 0; step < kAlignWarpSlots; step += 32) {
    const int s = w0 + step + lane;
    const int e = s < num_slots ? local_expert(ids[s], map, num_experts, local_experts) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0 && (peers & lt) == 0) mine[e] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();
  // Each warp range's first position per expert: the chunk's base plus the earlier ranges.
  for (int e = threadIdx.x; e < local_experts; e += blockDim.x) {
    int run = block_base[int64_t(blockIdx.x) * local_experts + e];
    for (int w = 0; w < kAlignWarps; ++w) {
      const int c = wcnt[w * local_experts + e];
      wcnt[w * local_experts + e] = run;
      run += c;
    }
  }
  __syncthreads();
  // Pass 2: place the slots in ascending order.
  for (int step = 0; step < kAlignWarpSlots; step += 32) {
    const int s = w0 + step + lane;
    const int e = s < num_slots ? local_expert(ids[s], map, num_experts, local_experts) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    if (e >= 0) sorted_slots[mine[e] + __popc(peers & lt)] = s;
    __syncwarp();
    if (e >= 0 && (peers & lt) == 0) mine[e] += __popc(peers);
    __syncwarp();
  }
}

}  // namespace

int moe_max_tiles(int num_slots, int local_experts, int tile_m) {
  const int active = num_slots < local_experts ? num_slots : local_experts;
  return num_slots / tile_m + active + 1;
}

int moe_align_scratch(int num_slots, int local_experts) {
  return local_experts <= kAlignMaxLocal ? ((num_slots + kAlignChunk - 1) / kAlignChunk) * local_experts : 0;
}

cudaError_t launch_moe_align(const int32_t* topk_ids, int num_slots, const int32_t* expert_map,
                             int num_experts, int local_experts, int tile_m, const MoeAlignment& out,
                             cudaStream_t stream) {
  if (local_experts <= kAlignMaxLocal && out.block_base != nullptr) {
    const int chunks = (num_slots + kAlignChunk - 1) / kAlignChunk;
    const size_t e4 = size_t(local_experts) * sizeof(int);
    moe_chunk_count_kernel<<<chunks, kAlignThreads, e4, stream>>>(topk_ids, num_slots, expert_map, num_experts,
                                                                  local_experts, out.block_base);
    moe_chunk_plan_kernel<<<1, kAlignThreads, 2 * e4, stream>>>(chunks, local_experts, tile_m, out.block_base,
                                                                out.counts, out.offsets, out.tile_expert,
                                                                out.tile_row, out.num_tiles);
    moe_chunk_fill_kernel<<<chunks, kAlignThreads, kAlignWarps * e4, stream>>>(
        topk_ids, num_slots, expert_map, num_experts, local_experts, out.block_base, out.sorted_slots);
    return cudaGetLastError();
  }
  // Many local experts: one block per expert (the histograms above would not fit in shared memory).
  moe_count_kernel<<<local_experts, kAlignThreads, 0, stream>>>(topk_ids, num_slots, expert_map, num_experts,
                                                                local_experts, out.counts);
  moe_plan_kernel<<<1, 32, 0, stream>>>(out.counts, local_experts, tile_m, out.offsets, out.tile_expert,
                                        out.tile_row, out.num_tiles);
  moe_fill_kernel<<<local_experts, kAlignThreads, 0, stream>>>(topk_ids, num_slots, expert_map, num_experts,
                                                               local_experts, out.offsets, out.sorted_slots);
  return cudaGetLastError();
}

}  // namespace moex::kernels
