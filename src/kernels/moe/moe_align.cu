// Step 1 of fused MoE: group routed slots by local expert, deterministically.
#include "kernels/common/dtype.cuh"
#include "kernels/moe/moe.h"

namespace moex::kernels {
namespace {

constexpr int kAlignThreads = 256;

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

}  // namespace

int moe_max_tiles(int num_slots, int local_experts, int tile_m) {
  const int active = num_slots < local_experts ? num_slots : local_experts;
  return num_slots / tile_m + active + 1;
}

cudaError_t launch_moe_align(const int32_t* topk_ids, int num_slots, const int32_t* expert_map,
                             int num_experts, int local_experts, int tile_m, const MoeAlignment& out,
                             cudaStream_t stream) {
  moe_count_kernel<<<local_experts, kAlignThreads, 0, stream>>>(topk_ids, num_slots, expert_map, num_experts,
                                                                local_experts, out.counts);
  moe_plan_kernel<<<1, 32, 0, stream>>>(out.counts, local_experts, tile_m, out.offsets, out.tile_expert,
                                        out.tile_row, out.num_tiles);
  moe_fill_kernel<<<local_experts, kAlignThreads, 0, stream>>>(topk_ids, num_slots, expert_map, num_experts,
                                                               local_experts, out.offsets, out.sorted_slots);
  return cudaGetLastError();
}

}  // namespace moex::kernels
