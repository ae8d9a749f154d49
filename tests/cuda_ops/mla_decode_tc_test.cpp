// CUDA tensor-core MLA decode (src/kernels/attention/mla/mla_decode_tc.cu) vs the CPU backend:
// bf16 q [n, heads, 576] over a bf16 paged latent cache, heads 16/20/64/128, q_len 1 and 2
// (causal inside the pair), KV lengths around the 32-key tile and the split boundaries, page
// sizes 16 and 64, ragged batches, wide block tables (many splits, scratch chunking). Unused
// pages and slots past seq_len hold NaN. Every sequence must give the same bits alone as in
// the batch.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_ops/mla_test_util.h"

namespace moex::test {
namespace {

using Seq = MlaSeq;

class MlaDecodeTcTest : public CudaOpsTest {
 protected:
  // Unused pages and slots past seq_len hold NaN.
  void check(const std::string& name, const std::vector<Seq>& seqs, int heads, int page_size, int64_t extra_cols = 1) {
    SCOPED_TRACE(name + " heads " + std::to_string(heads) + " page " + std::to_string(page_size) + " seed " +
                 std::to_string(seed_));
    check_mla_bf16_decode(*cpu_, *gpu_, rng_, seqs, heads, page_size, extra_cols);
  }
};

TEST_F(MlaDecodeTcTest, MlaTcSingleSequenceLengths) {
  for (int heads : {16, 128})
    for (int kv : {1, 63, 64, 65, 1000})
      for (int q_len : {1, 2}) {
        if (q_len > kv) continue;
        check("kv " + std::to_string(kv) + " q_len " + std::to_string(q_len), {{kv, q_len}}, heads, 64);
      }
}

TEST_F(MlaDecodeTcTest, MlaTcRaggedBatchesPage16) {
  check("ragged decode", {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {4097, 1}}, 16, 16);
  check("ragged mtp pairs", {{2, 2}, {63, 2}, {65, 2}, {1000, 2}, {4097, 2}}, 20, 16);
  check("mixed q_len", {{65, 1}, {1000, 2}, {33, 1}, {4097, 2}, {2, 2}}, 64, 16);
}

TEST_F(MlaDecodeTcTest, MlaTcOddHeadsAndLongerQueries) {
  check("20 heads decode", {{300, 1}, {77, 1}, {1000, 1}}, 20, 64);
  check("q_len 3 and 5 mixed with decode", {{37, 3}, {5, 5}, {500, 1}, {129, 2}}, 20, 16);
  check("128 heads mtp", {{4097, 2}, {1, 1}, {700, 2}}, 128, 64);
}

TEST_F(MlaDecodeTcTest, MlaTcRandomRaggedBatch) {
  std::vector<Seq> seqs;
  for (int i = 0; i < 24; ++i) {
    const int len = rng_.uniform_int(1, 1500);
    seqs.push_back({len, std::min(len, rng_.uniform_int(1, 2))});
  }
  check("random 24 sequences", seqs, 16, 64);
}

// The bf16 K-tile ring depth follows the launch (docs/kernels/mla.md): 16 heads x 2 query
// tokens is kRG = 2 (4-tile ring); 160 sequences of 16 heads give more CTAs than SMs (2-tile
// ring, two CTAs per SM) while each sequence alone runs the 5-tile ring: same bits required.
TEST_F(MlaDecodeTcTest, MlaTcRingDepthsGiveTheSameBits) {
  check("16 heads mtp pairs", {{700, 2}, {2, 2}, {1500, 2}, {65, 2}}, 16, 64);
  std::vector<Seq> seqs;
  for (int i = 0; i < 160; ++i) seqs.push_back({rng_.uniform_int(513, 1400), 1});
  check("160 sequences", seqs, 16, 64);
}

// A table wide enough for 64K keys: 64 splits of 1024, most of them empty, and per-token
// partials of 128 heads x 64 splits push the launcher into several token chunks that cut
// q_len-2 groups.
TEST_F(MlaDecodeTcTest, MlaTcWideTableManySplitsAndChunks) {
  std::vector<Seq> seqs;
  for (int i = 0; i < 11; ++i) seqs.push_back({rng_.uniform_int(2, 3000), 2});
  check("wide table", seqs, 128, 64, 1024);
}

}  // namespace
}  // namespace moex::test
