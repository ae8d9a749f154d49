// Shared pieces of the CUDA MLA decode tests (bf16 and e4m3 latent caches): a random paged
// layout for a ragged batch, and the GPU run that checks the batch against the CPU reference and
// every sequence alone against its rows in the batch (bit for bit).
#pragma once
#include <string>
#include <vector>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {

constexpr int kMlaDk = 576, kMlaRank = 512;

struct MlaSeq {
  int seq_len, q_len;
};

// Random distinct pages per sequence; table columns past a sequence's pages (at least extra_cols
// of them) point at the pool's last page, which nobody owns. owned_slots lists every written
// slot, sequence by sequence, position by position.
struct MlaPageTable {
  HostTensor block_table, seq_lens, query_start;  // [seqs, max_pages], [seqs], [seqs + 1] i32
  std::vector<int32_t> owned_slots;
  int64_t pages = 0, n = 0;                       // pool pages, query rows
};
MlaPageTable make_mla_page_table(Rng& rng, const std::vector<MlaSeq>& seqs, int page_size, int64_t extra_cols);

// Runs `p` (q, cache and cache_scale already device tensors; seqs, out and lse are set here from
// `table`) on `gpu`: out and lse within tolerance of ref / ref_lse, then each sequence alone gives
// the same bits as its rows in the batch.
void expect_gpu_mla_matches(Backend& gpu, ops::MlaAttentionParams p, const MlaPageTable& table, int page_size,
                            int64_t heads, const HostTensor& ref, const HostTensor& ref_lse, double tolerance);

// The bf16-cache decode check of the MLA kernels: fresh random q and cache for the ragged batch
// `seqs` (unused pages and slots past seq_len hold NaN), a random softmax scale, the CPU reference
// on `cpu`, then expect_gpu_mla_matches on `gpu` within 5e-3.
void check_mla_bf16_decode(Backend& cpu, Backend& gpu, Rng& rng, const std::vector<MlaSeq>& seqs, int heads,
                           int page_size, int64_t extra_cols = 1);

}  // namespace moex::test
