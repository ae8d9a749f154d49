// The single-launch plan of the fused-MoE decode path (moe_decode_fused.cu): gate/up, down and
// the slot-order combine in one grid, for few tokens. launch_moe_decode (moe_decode.cu) takes it
// when moe_decode_fused_fits(); it gives the same bits as the three-kernel plan.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/moe/moe_decode_tile.cuh"

namespace moex::kernels {

// Largest token count of the single-launch plan (MOEX_MOE_DECODE_FUSED overrides per call; 0:
// never), its cp.async ring depth (MOEX_MOE_DECODE_FUSED_STAGES: 4, 6 or 8) and the slots
// (n * top_k) its shared memory holds. 4: at 8 and 16 tokens the three-kernel plan was faster
// on Qwen3-30B-A3B and DeepSeek-V2-Lite (docs/kernels/fused_moe.md, "Decode path, one launch").
constexpr int kMoeDecodeFusedMaxTokens = 4;
constexpr int kMoeDecodeFusedStages = 6;
constexpr int kFusedMaxSlots = 128;

int moe_decode_fused_max_tokens();
int moe_decode_fused_stages();
bool moe_decode_fused_fits(int n, int slots, int hidden, int local_experts);

// a: the decode arguments with h and part carved; out [n, hidden] bf16 or f32, row stride s_out.
cudaError_t launch_moe_decode_fused(const moe_decode::DecodeArgs& a, int n, void* out, int64_t s_out, bool out_f32,
                                    cudaStream_t stream);

}  // namespace moex::kernels
