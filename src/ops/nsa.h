// Native Sparse Attention (NSA, arXiv 2502.11089): three attention branches per query, mixed by
// per-head gates. Docs: docs/kernels/nsa.md. All rules below are the contract both backends
// implement; the CPU backend is the reference.
//
// Geometry of one sequence of length L (positions 0..L-1), with GQA: query head h reads KV head
// h / (HQ / H); a "group" is the HQ / H query heads of one KV head.
//
// 1. Compressed branch. Compressed block j covers tokens [j*d, j*d + l) and exists once complete
//    (j*d + l <= L). Mean pooling: k_cmp[j] = mean of k over those tokens (v alike), computed in
//    f32. Query t sees block j iff j*d + l - 1 <= t, i.e. blocks 0..nc(t)-1 with
//    nc(t) = t >= l-1 ? (t - l + 1) / d + 1 : 0. p_cmp[t, h, :] = softmax(scale * q . k_cmp[j]) over
//    the visible blocks; o_cmp = sum_j p_cmp[j] v_cmp[j]; o_cmp = 0 when nc(t) = 0.
// 2. Selection. Selection block b covers tokens [b*l', (b+1)*l'). Query t may select blocks
//    0..t/l' (the block holding t is partly visible: causal inside it). The importance of block b
//    for KV head g is  imp[t, g, b] = sum over query heads h of group g, sum over compressed blocks
//    j visible to t whose tokens [j*d, j*d+l) overlap [b*l', (b+1)*l'), of p_cmp[t, h, j]
//    (f32). Chosen: first the forced blocks, the num_init first blocks (b < num_init) and the
//    num_local last ones (b > t/l' - num_local), then the highest-importance others until
//    select_n blocks are chosen or none is left. Ties: the lower block index wins. Selected
//    indices are written in ascending order, padded with -1.
//    o_sel = softmax attention of q over the tokens s <= t of the chosen blocks.
// 3. Sliding window. o_win = softmax attention of q over the tokens s with t - w < s <= t.
// out = gate[0] * o_cmp + gate[1] * o_sel + gate[2] * o_win (gates as given: the caller applies
// its sigmoid). Scores are scale * dot(q, k) in f32; softmax and accumulation in f32.
#pragma once
#include "core/tensor.h"
#include "ops/attention.h"

namespace moex::ops {

struct NsaConfig {
  int block_len = 64;      // l: compression block length
  int block_stride = 64;   // d: compression stride (l % d == 0)
  int select_len = 64;     // l': selection block length (l' % d == 0)
  int select_n = 16;       // n: blocks selected per query (forced ones included)
  int num_init = 1;        // forced leading blocks
  int num_local = 2;       // forced most recent blocks (the one holding t counts)
  int window = 512;        // w: sliding window; 0 turns the branch off (o_win = 0)
  float scale = 1.f;
};

// Prefill / forward over a ragged batch: sequence i owns rows [cu_seqlens[i], cu_seqlens[i+1])
// of q, k, v, gates, out, positions 0..len-1.
struct NsaForwardParams {
  Tensor q;           // [T, HQ, Dk] bf16 or f32
  Tensor k;           // [T, H, Dk]
  Tensor v;           // [T, H, Dv]
  Tensor gates;       // [T, HQ, 3] f32 or bf16
  Tensor cu_seqlens;  // [B + 1] i32
  // Optional caller-provided compressed keys/values (a learned compressor). When set they replace
  // mean pooling; sequence i owns rows [cu_cmp[i], cu_cmp[i+1]), which must number exactly
  // (len_i >= l ? (len_i - l) / d + 1 : 0).
  Tensor k_cmp;       // [Tc, H, Dk]
  Tensor v_cmp;       // [Tc, H, Dv]
  Tensor cu_cmp;      // [B + 1] i32
  NsaConfig cfg;
  Tensor out;         // [T, HQ, Dv]
  // Optional outputs (empty tensor = not wanted).
  Tensor out_cmp;     // [T, HQ, Dv] ungated branch outputs
  Tensor out_sel;     // [T, HQ, Dv]
  Tensor out_win;     // [T, HQ, Dv]
  Tensor sel_idx;     // [T, H, select_n] i32, ascending, -1 padded
};

// Decode: one new token per sequence. The raw KV lives in a paged cache (PagedSeqs; query_start
// is 0..B, seq_lens count the new token, already written); the compressed KV lives in per-sequence
// rows of k_cmp_cache / v_cmp_cache, block j of sequence i at [cmp_rows[i], j]. The op first
// completes the compressed cache: when mean pooling is on (update_cmp) and the new token closes
// block j (len >= l and (len - l) % d == 0, j = (len - l) / d), it writes that block's means. Then
// it attends exactly as the forward op does for the last position t = len - 1.
struct NsaDecodeParams {
  Tensor q;            // [B, HQ, Dk]
  Tensor gates;        // [B, HQ, 3]
  Tensor k_cache;      // [num_pages, page_size, H, Dk]
  Tensor v_cache;      // [num_pages, page_size, H, Dv]
  PagedSeqs seqs;
  Tensor k_cmp_cache;  // [num_cmp_rows, max_blocks, H, Dk]
  Tensor v_cmp_cache;  // [num_cmp_rows, max_blocks, H, Dv]
  Tensor cmp_rows;     // [B] i32: row of each sequence in the compressed caches
  bool update_cmp = true;
  NsaConfig cfg;
  Tensor out;          // [B, HQ, Dv]
  Tensor out_cmp;      // optional [B, HQ, Dv]
  Tensor out_sel;      // optional [B, HQ, Dv]
  Tensor out_win;      // optional [B, HQ, Dv]
  Tensor sel_idx;      // optional [B, H, select_n] i32
};

}  // namespace moex::ops
