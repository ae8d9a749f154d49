// CUDA wgmma MLA decode (src/kernels/attention/mla/mla_decode_wg.cu, MOEX_MLA_WG=1) vs the CPU
// backend: heads 64 and 128 (64-row tiles), q_len 1 and 2, page sizes 16 / 48 / 64 / 128, ragged
// lengths (1, non-multiples of the 64-key tile, split boundaries), wide tables (many splits,
// scratch chunking), a 64-key split. Unused pages and slots hold NaN, outputs start NaN-poisoned,
// and every sequence alone must give the same bits as in the batch (expect_gpu_mla_matches).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_ops/mla_test_util.h"

namespace moex::test {
namespace {

using Seq = MlaSeq;

class MlaDecodeWgTest : public CudaOpsTest {
 protected:
  void check(const std::string& name, const std::vector<Seq>& seqs, int heads, int page_size, int64_t extra_cols = 1) {
    SCOPED_TRACE(name + " heads " + std::to_string(heads) + " page " + std::to_string(page_size) + " seed " +
                 std::to_string(seed_));
    check_mla_bf16_decode(*cpu_, *gpu_, rng_, seqs, heads, page_size, extra_cols);
  }
  ScopedEnv wg_{"MOEX_MLA_WG", "1"};
};

TEST_F(MlaDecodeWgTest, MlaWgSingleSequenceLengths) {
  for (int heads : {64, 128})
    for (int kv : {1, 2, 63, 64, 65, 127, 1000, 1024, 1025})
      for (int q_len : {1, 2}) {
        if (q_len > kv) continue;
        check("kv " + std::to_string(kv) + " q_len " + std::to_string(q_len), {{kv, q_len}}, heads, 64);
      }
}

TEST_F(MlaDecodeWgTest, MlaWgRaggedBatchesPages) {
  const std::vector<Seq> decode = {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {2049, 1}, {4097, 1}};
  const std::vector<Seq> mtp = {{2, 2}, {63, 2}, {65, 2}, {1000, 2}, {1025, 2}, {3001, 2}};
  const std::vector<Seq> mixed = {{65, 1}, {1000, 2}, {33, 1}, {4097, 2}, {2, 2}, {1, 1}};
  for (int page : {16, 64}) {
    check("ragged decode", decode, 128, page);
    check("ragged mtp pairs", mtp, 64, page);
    check("mixed q_len", mixed, 128, page);
  }
  // Pages of 128 slots (a tile is one half of a page) and of 48 (not a power of two).
  check("page 128", mixed, 64, 128);
  check("page 48", mixed, 128, 48);
}

TEST_F(MlaDecodeWgTest, MlaWgRandomRaggedBatch) {
  std::vector<Seq> seqs;
  for (int i = 0; i < 20; ++i) {
    const int len = rng_.uniform_int(1, 2500);
    seqs.push_back({len, std::min(len, rng_.uniform_int(1, 2))});
  }
  check("random 20 sequences", seqs, 128, 64);
  check("random 20 sequences page 16", seqs, 64, 16);
}

// A table wide enough for 64K keys: 64 splits of 1024, most of them empty, and per-token
// partials of 128 heads x 64 splits push the launcher into several token chunks.
TEST_F(MlaDecodeWgTest, MlaWgWideTableManySplitsAndChunks) {
  std::vector<Seq> seqs;
  for (int i = 0; i < 11; ++i) seqs.push_back({rng_.uniform_int(2, 3000), 2});
  check("wide table", seqs, 128, 64, 1024);
}

// The split-size knob at its smallest (one tile per split) and an odd one.
TEST_F(MlaDecodeWgTest, MlaWgSplitSizes) {
  const std::vector<Seq> seqs = {{1, 1}, {64, 1}, {65, 2}, {700, 1}, {1500, 2}};
  for (const char* split : {"64", "256", "4096"}) {
    ScopedEnv env("MOEX_MLA_WG_SPLIT", split);
    check(std::string("split ") + split, seqs, 128, 64);
  }
}

}  // namespace
}  // namespace moex::test
