// The fused-MoE decode path (moe_decode.cu): for at most kMoeDecodeMaxTokens tokens, the
// launcher in fused_moe.cu hands the op here. It gives the same bits as the prefill path
// (same MMA step, operand roles, K order and epilogue expressions), so the choice may depend on
// the batch size. See docs/kernels/fused_moe.md, "Decode path".
#pragma once
#include <cuda_runtime.h>

#include "kernels/common/scratch.h"
#include "ops/fused_moe.h"

namespace moex::kernels {

// Largest token count sent to the decode path: faster than the prefill path on every bench shape
// up to 64 tokens; at 128 it loses on Mixtral (docs/kernels/fused_moe.md, "Decode path").
constexpr int kMoeDecodeMaxTokens = 64;

// The threshold in use: kMoeDecodeMaxTokens, or MOEX_MOE_DECODE_MAX_TOKENS when set (0: off).
int moe_decode_max_tokens();

// True when p (already validated by the backend) fits the decode path: few tokens, K and row
// counts that are multiples of 64, 16-byte aligned rows, at most 512 local experts.
bool moe_decode_applies(const ops::FusedMoeParams& p);

// One launch for few tokens (moe_decode_fused.h), else three stream-ordered launches (gate/up,
// down, combine); no align step, no host sync either way.
cudaError_t launch_moe_decode(const ops::FusedMoeParams& p, Scratch& scratch, cudaStream_t stream);

}  // namespace moex::kernels
