// Native Sparse Attention kernels (contract: src/ops/nsa.h; design: docs/kernels/nsa.md).
// Three launches per op, all on one stream, no host sync:
//   1. compress   mean pooling of k/v into f32 scratch (forward), or completion of the block the
//                 new token closes in the compressed cache (decode);
//   2. cmp_select compressed attention (o_cmp into f32 scratch), importance per selection block,
//                 top-n choice with forced blocks (indices into i32 scratch);
//   3. sel_win    selected-block and sliding-window attention, gating, outputs.
// Every kernel finds its sequence inside the kernel (binary search on cu_seqlens) and reduces in
// a fixed order, so a row's bits do not depend on the other sequences of the batch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/scratch.h"

namespace moex::kernels::nsa {

constexpr int kThreads = 128;  // every NSA kernel: 4 warps

// A float tensor the kernels read or write: f32 or bf16, element offsets in elements.
struct FloatRef {
  void* p = nullptr;
  bool bf16 = false;
};

// Where the raw (uncompressed) keys and values of a (sequence, position, kv head) live.
struct RawKv {
  FloatRef k, v;
  // Contiguous (forward): row = seq_start + pos; offset = row * s_t + head * s_h.
  int64_t k_st = 0, k_sh = 0, v_st = 0, v_sh = 0;
  // Paged (decode): slot (page, off) = (block_table[seq, pos / page_size], pos % page_size);
  // offset = page * s_p + off * s_t + head * s_h (s_t above is the slot stride then).
  const int32_t* block_table = nullptr;  // [num_seqs, max_pages] or nullptr (contiguous)
  int64_t s_bt = 0;
  int page_size = 0;
  int64_t k_sp = 0, v_sp = 0;
};

// Where the compressed keys and values of (sequence, block j, kv head) live:
// offset = row_base(seq) + j * s_j + head * s_h, with row_base from cu_cmp (forward rows
// [cu_cmp[i], ...) of a [Tc, H, D] tensor) or cmp_rows (decode: a [rows, max_blocks, H, D] cache).
struct CmpKv {
  FloatRef k, v;
  int64_t k_sj = 0, k_sh = 0, v_sj = 0, v_sh = 0;
  const int32_t* cu_cmp = nullptr;    // [B + 1] (forward) or nullptr
  const int32_t* cmp_rows = nullptr;  // [B] (decode) or nullptr
  int64_t k_srow = 0, v_srow = 0;     // decode: stride of a cache row
};

struct Geometry {
  int block_len, block_stride, select_len, select_n, num_init, num_local, window;
  float scale;
};

// Query rows: forward rows t of a ragged batch (seq by binary search on cu_seqlens, position
// t - cu_seqlens[seq]) or decode rows b (seq b, position seq_lens[b] - 1).
struct Rows {
  int rows = 0, num_seqs = 0;
  const int32_t* cu_seqlens = nullptr;  // forward [B + 1]
  const int32_t* seq_lens = nullptr;    // decode [B]
};

struct Params {
  Rows rows;
  int hq = 0, h = 0, dk = 0, dv = 0;
  Geometry g{};
  FloatRef q;      // [rows, HQ, Dk] (rows strided by q_st, heads by q_sh)
  int64_t q_st = 0, q_sh = 0;
  FloatRef gates;  // [rows, HQ, 3]
  int64_t gate_st = 0, gate_sh = 0, gate_sc = 0;
  RawKv raw;
  CmpKv cmp;
  // Outputs [rows, HQ, Dv]; out_cmp/out_sel/out_win optional (p == nullptr).
  FloatRef out, out_cmp, out_sel, out_win;
  int64_t out_st = 0, out_sh = 0, cmp_st = 0, cmp_sh = 0, sel_st = 0, sel_sh = 0, win_st = 0, win_sh = 0;
  int32_t* sel_idx = nullptr;  // optional [rows, H, n]
  int64_t sel_idx_st = 0, sel_idx_sh = 0;
  int max_len = 0;             // upper bound of any sequence length (sizes shared memory)
};

// Forward mean pooling: k/v [T, H, D] -> f32 [tc_bound, H, D] rows per cu_cmp (computed here from
// cu_seqlens). tc_bound = sum over sequences of blocks, bounded by T / d + B.
struct CompressForward {
  Rows rows;  // cu_seqlens, num_seqs
  int h = 0, dk = 0, dv = 0, block_len = 0, block_stride = 0, tc_bound = 0;
  FloatRef k, v;
  int64_t k_st = 0, k_sh = 0, v_st = 0, v_sh = 0;
  int32_t* cu_cmp = nullptr;  // [B + 1] written
  float* k_cmp = nullptr;     // [tc_bound, H, Dk]
  float* v_cmp = nullptr;     // [tc_bound, H, Dv]
};
cudaError_t launch_compress_forward(const CompressForward& c, cudaStream_t stream);

// Decode: writes the block the new token closes (if any) into the compressed caches.
struct CompressDecode {
  Rows rows;  // seq_lens, num_seqs
  int h = 0, dk = 0, dv = 0, block_len = 0, block_stride = 0;
  RawKv raw;  // paged
  CmpKv cmp;  // cmp_rows
};
cudaError_t launch_compress_decode(const CompressDecode& c, cudaStream_t stream);

// Launches cmp_select then sel_win. Scratch: o_cmp f32 [rows, HQ, Dv], indices [rows, H, n].
size_t scratch_bytes(const Params& p);
cudaError_t launch_attention(const Params& p, void* scratch, cudaStream_t stream);
// The shared memory the two kernels need, for the host to refuse shapes that do not fit.
size_t cmp_select_smem(const Params& p);
size_t sel_win_smem(const Params& p);
constexpr size_t kMaxSmem = 227 * 1024;

}  // namespace moex::kernels::nsa
