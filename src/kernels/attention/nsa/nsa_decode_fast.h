// NSA decode on tensor cores in two launches (design and numbers: docs/kernels/nsa.md, "Decode,
// tensor-core path"). Taken for bf16 q and caches (16-byte aligned rows), G = 16 or 32 query
// heads per KV head, Dk a multiple of 16 up to 256, Dv a multiple of 16 up to 128, l <= 64:
//   1. stage1  grid (B, H, sc + s_win): CTA z < sc covers compressed blocks
//              [z C, z C + C) (C = tiles x 64 keys, MOEX_NSA_DECODE_TILES, default 4), writing
//              raw scores and a softmax partial, and closes the compressed block the new token
//              completes (mean pooling, when its chunk holds it); CTA z >= sc covers C keys of
//              the sliding window. The last compressed
//              CTA of a (sequence, KV head) to finish (an atomic ticket) merges the partials'
//              max and sum, sums the importances in the contract's order and picks the blocks
//              (threshold search on the importance bits: exact, ties to the lower index).
//   2. stage2  grid (B, H, s_sel): C keys of the selected blocks each; the last CTA of a
//              (sequence, KV head) merges every branch's partials in ascending order, gates and
//              writes the outputs.
// A CTA's work and every merge order depend only on its own sequence (C is a constant), so a
// sequence's bits do not depend on the batch, its order or the block-table width.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/attention/nsa/nsa.h"

namespace moex::kernels::nsa {

constexpr int kFastThreads = 128;          // 4 warps; about 45 KB of smem, 4 CTAs per SM
constexpr int kFastTile = 64;              // keys per smem tile: 16 per warp for the scores
constexpr int kFastMaxHeads = 1 << 16;     // B x H bound of the ticket counters

// Whether the tensor-core path takes this decode shape (and MOEX_NSA_DECODE_FAST is not "0").
bool decode_fast_supported(const Params& p);
size_t decode_fast_scratch_bytes(const Params& p);
// update_cmp: write the compressed block the new token closes (the separate compress launch
// is not needed on this path).
// counters: [2 * kFastMaxHeads] zero-initialised arrival counters of the calling backend
// (Scratch::counters), left at zero.
cudaError_t launch_decode_fast(const Params& p, bool update_cmp, void* scratch, unsigned int* counters,
                               cudaStream_t stream);

}  // namespace moex::kernels::nsa
