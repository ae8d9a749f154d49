// NSA decode spread over the GPU (split-KV): four launches instead of one CTA per
// (sequence, KV head). Design and numbers: docs/kernels/nsa.md, "Decode".
//   1. cmp_split    grid (B, H, splits of kDecodeCmpChunk compressed blocks): raw scores of the
//                   split's blocks to scratch, and its softmax partial (m, l, unnormalised o);
//   2. cmp_combine  grid (B, H): merges the splits in ascending order into o_cmp, importance from
//                   the stored scores, top-n choice (select_blocks of nsa_block.cuh);
//   3. sw_split     grid (B, H, splits of kDecodeKeyChunk keys of the selected blocks, then of
//                   the window): softmax partials of the two branches;
//   4. sw_combine   grid (B, H): merges each branch's splits in ascending order, gates, outputs.
// Split sizes are constants (not derived from the batch), and splits past a sequence's end are
// never read, so a sequence's bits do not depend on the batch it is in.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/attention/nsa/nsa.h"

namespace moex::kernels::nsa {

constexpr int kDecodeCmpChunk = 64;  // compressed blocks per cmp_split CTA (2 tiles)
constexpr int kDecodeKeyChunk = 64;  // raw keys per sw_split CTA (2 tiles)

// Whether the split path takes this decode shape (decode rows, shared memory fits, not turned
// off by MOEX_NSA_DECODE_SPLIT=0); otherwise the caller takes launch_attention.
bool decode_split_supported(const Params& p);
size_t decode_split_scratch_bytes(const Params& p);
cudaError_t launch_decode_split(const Params& p, void* scratch, cudaStream_t stream);

}  // namespace moex::kernels::nsa
