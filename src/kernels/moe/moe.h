// Fused MoE on the GPU (ops/fused_moe.h), in four stream-ordered steps, none of which syncs
// with the host:
//   1. align: per local expert the count, offset and the list of (token * top_k + slot) indices
//      routed to it, in ascending order (so the layout is a pure function of topk_ids), plus a
//      tile schedule for the grouped GEMMs;
//   2. grouped GEMM over w13 with SwiGLU in the epilogue -> h [rows, inter] bf16;
//   3. grouped GEMM over w2 with the routing weight in the epilogue -> the weighted partials
//      part [token * top_k + slot, hidden] in out's dtype (moe_combine.cuh);
//   4. combine: out[t] = round(sum over slots j = 0..top_k-1 of part[t, j]) in slot order, fp32.
// Tokens are processed in chunks so that the partials fit a bounded scratch block; chunking
// never changes a token's bits. See docs/kernels/fused_moe.md.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/common/scratch.h"
#include "ops/fused_moe.h"

namespace moex::kernels {

namespace moe {
enum class PartKind : int;  // moe_combine.cuh
struct CombineArgs;
}  // namespace moe

// Output of the align step for `num_slots` = n * top_k routed slots.
struct MoeAlignment {
  int32_t* counts = nullptr;        // [local_experts]
  int32_t* offsets = nullptr;       // [local_experts + 1] exclusive prefix sum of counts
  int32_t* sorted_slots = nullptr;  // [num_slots] slot indices grouped by expert, ascending within
  int32_t* tile_expert = nullptr;   // [max_tiles] local expert of each row tile
  int32_t* tile_row = nullptr;      // [max_tiles] first row (index into sorted_slots) of the tile
  int32_t* num_tiles = nullptr;     // [1]
  int32_t* block_base = nullptr;    // [moe_align_scratch(num_slots, local_experts)] working space
};

// Ints of MoeAlignment::block_base the align step needs (0: none).
int moe_align_scratch(int num_slots, int local_experts);

// Upper bound on the number of row tiles of `tile_m` rows for the grouped GEMMs.
int moe_max_tiles(int num_slots, int local_experts, int tile_m);

// topk_ids [num_slots] i32 global ids; expert_map [num_experts] i32 or nullptr (identity).
cudaError_t launch_moe_align(const int32_t* topk_ids, int num_slots, const int32_t* expert_map,
                             int num_experts, int local_experts, int tile_m, const MoeAlignment& out,
                             cudaStream_t stream);

// The partials' dtype for an output dtype (out's, or f32 when MOEX_MOE_PARTIAL=f32).
moe::PartKind moe_part_kind(DType out);
// Step 4 for `tokens` tokens, one block each; `pdl_wait`: launched with programmatic dependent
// launch, waits for the previous kernel's partials.
cudaError_t launch_moe_combine(const moe::CombineArgs& c, moe::PartKind kind, DType out, int tokens, bool pdl_wait,
                               cudaStream_t stream);

cudaError_t launch_fused_moe(const ops::FusedMoeParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
