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

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr int kDk = 576, kRank = 512;
constexpr double kTolBf16 = 5e-3;

struct Seq {
  int seq_len, q_len;
};

struct Paged {
  HostTensor block_table, seq_lens, query_start, cache;
  int64_t n = 0;
};

// Random distinct pages per sequence; table columns past a sequence's pages (at least
// extra_cols of them) point at a NaN page; every slot nobody wrote is NaN.
Paged make_paged(Rng& rng, const std::vector<Seq>& seqs, int page_size, int64_t extra_cols) {
  Paged s;
  int64_t used = 0, max_pages = 1;
  for (const Seq& q : seqs) {
    const int64_t p = (q.seq_len + page_size - 1) / page_size;
    used += p;
    max_pages = std::max(max_pages, p + extra_cols);
  }
  const int64_t pages = used + 2;
  std::vector<int32_t> perm(size_t(pages), 0);
  for (int64_t i = 0; i < pages; ++i) perm[size_t(i)] = int32_t(i);
  for (int64_t i = pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.uniform_int(0, int(i)))]);
  const int64_t num_seqs = int64_t(seqs.size());
  s.block_table = host_tensor(DType::kI32, {num_seqs, max_pages});
  std::vector<int32_t> lens, starts{0};
  size_t next = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t p = (seqs[size_t(i)].seq_len + page_size - 1) / page_size;
    for (int64_t j = 0; j < max_pages; ++j)
      s.block_table.i32(i * max_pages + j) = j < p ? perm[next++] : perm[size_t(pages - 1)];
    lens.push_back(seqs[size_t(i)].seq_len);
    starts.push_back(starts.back() + seqs[size_t(i)].q_len);
  }
  s.seq_lens = host_i32(lens);
  s.query_start = host_i32(starts);
  s.n = starts.back();
  s.cache = host_tensor(DType::kBF16, {pages, page_size, kDk});
  for (int64_t i = 0; i < s.cache.t.numel(); ++i) s.cache.set(i, NAN);
  for (int64_t i = 0; i < num_seqs; ++i)
    for (int pos = 0; pos < seqs[size_t(i)].seq_len; ++pos) {
      const int64_t slot = int64_t(s.block_table.i32(i * max_pages + pos / page_size)) * page_size + pos % page_size;
      for (int64_t c = 0; c < kDk; ++c) s.cache.set(slot * kDk + c, rng.uniform(-1.f, 1.f));
    }
  return s;
}

class MlaDecodeTcTest : public CudaOpsTest {
 protected:
  void check(const std::string& name, const std::vector<Seq>& seqs, int heads, int page_size, int64_t extra_cols = 1) {
    SCOPED_TRACE(name + " heads " + std::to_string(heads) + " page " + std::to_string(page_size) + " seed " +
                 std::to_string(seed_));
    Paged s = make_paged(rng_, seqs, page_size, extra_cols);
    HostTensor q = host_random(DType::kBF16, {s.n, heads, kDk}, rng_, -1.f, 1.f);
    HostTensor ref = host_tensor(DType::kBF16, {s.n, heads, kRank});
    HostTensor ref_lse = host_tensor(DType::kF32, {s.n, heads});
    ops::MlaAttentionParams p;
    p.q = q.t; p.cache = s.cache.t; p.out = ref.t; p.lse = ref_lse.t;
    p.seqs = seqs_of(s.block_table.t, s.seq_lens.t, s.query_start.t, page_size);
    p.kv_lora_rank = kRank;
    p.scale = 1.f / std::sqrt(192.f) * rng_.uniform(0.8f, 3.f);  // sharper softmaxes too
    MOEX_ASSERT_OK(cpu_->mla_attention(p));

    DeviceTensor bt = to_device(*gpu_, s.block_table), lens = to_device(*gpu_, s.seq_lens);
    DeviceTensor starts = to_device(*gpu_, s.query_start), cache = to_device(*gpu_, s.cache);
    DeviceTensor dq = to_device(*gpu_, q);
    DeviceTensor dout = device_poisoned(*gpu_, DType::kBF16, {s.n, heads, kRank});
    DeviceTensor dlse = device_poisoned(*gpu_, DType::kF32, {s.n, heads});
    p.q = dq.t; p.cache = cache.t; p.out = dout.t; p.lse = dlse.t;
    p.seqs = seqs_of(bt.t, lens.t, starts.t, page_size);
    MOEX_ASSERT_OK(gpu_->mla_attention(p));
    HostTensor all = to_host(*gpu_, dout);
    HostTensor all_lse = to_host(*gpu_, dlse);
    EXPECT_LT(rel_l2(all, ref), kTolBf16);
    EXPECT_LT(rel_l2(all_lse, ref_lse), 1e-5);

    // Every sequence alone (same table width): the same bits for out and lse.
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t q0 = s.query_start.i32(int64_t(i)), q1 = s.query_start.i32(int64_t(i) + 1);
      if (q1 == q0) continue;
      DeviceTensor dst = to_device(*gpu_, host_i32({0, int32_t(q1 - q0)}));
      DeviceTensor dpart = device_poisoned(*gpu_, DType::kBF16, {q1 - q0, heads, kRank});
      DeviceTensor dpl = device_poisoned(*gpu_, DType::kF32, {q1 - q0, heads});
      ops::MlaAttentionParams one = p;
      one.q = dq.t.slice(0, q0, q1);
      one.out = dpart.t;
      one.lse = dpl.t;
      one.seqs = seqs_of(bt.t.slice(0, int64_t(i), int64_t(i) + 1), lens.t.slice(0, int64_t(i), int64_t(i) + 1), dst.t,
                         page_size);
      MOEX_ASSERT_OK(gpu_->mla_attention(one));
      HostTensor part = to_host(*gpu_, dpart), part_lse = to_host(*gpu_, dpl);
      for (int64_t r = 0; r < q1 - q0; ++r) {
        ASSERT_TRUE(rows_bit_equal(part, r, all, q0 + r)) << "sequence " << i << " row " << r << " alone vs in the batch";
        ASSERT_TRUE(rows_bit_equal(part_lse, r, all_lse, q0 + r)) << "lse of sequence " << i << " row " << r;
      }
    }
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
