// The routed-experts part of an MoE layer:
//   out[t] = sum over slots j = 0..top_k-1, in slot order, of
//            topk_weights[t, j] * down_e(silu(gate_e(x[t])) * up_e(x[t])),  e = topk_ids[t, j]
// fp32 accumulation; each slot's weighted term is rounded to out's dtype once, then the terms
// are summed in fp32 and rounded to out's dtype (src/backend/cpu/fused_moe.cpp has the exact
// expressions). The sum order is fixed (slot order), so a token's result does not depend on
// the other tokens in the batch.
#pragma once
#include "core/tensor.h"

namespace moex::ops {

struct FusedMoeParams {
  Tensor x;             // [n, hidden] activation dtype
  Tensor topk_ids;      // [n, top_k] i32 global expert ids
  Tensor topk_weights;  // [n, top_k] f32
  Tensor w13;           // [local_experts, 2 * inter, hidden]: rows [0, inter) gate, [inter, 2 inter) up
  Tensor w2;            // [local_experts, hidden, inter]
  Tensor expert_map;    // [num_experts] i32 global -> local index, -1 = not on this device;
                        // empty = identity (all experts local)
  Tensor out;           // [n, hidden] activation dtype
};

}  // namespace moex::ops
