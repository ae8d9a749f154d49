// CUDA vs CPU paged attention: GQA (prefill, decode, chunked prefill, sliding window, odd page
// sizes) and absorbed MLA (576/512, 16 and 128 heads, lse). Unused pages and the unused tail of
// each last page hold NaN, which must not reach any output. A sequence's rows must have the
// same bits alone as inside a batch.
#include <cmath>
#include <cstring>

#include "cuda_ops/cuda_ops_util.h"
#include "kernels/attention/attention.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;

struct Seq {
  int seq_len, q_len;
};

// A paged cache with random pages per sequence and NaN everywhere no token was written.
struct PagedScenario {
  HostTensor block_table, seq_lens, query_start;
  HostTensor k, v;  // v empty for MLA
  int64_t n = 0;
};

void fill_nan(HostTensor& h) {
  const int64_t n = h.t.numel();
  for (int64_t i = 0; i < n; ++i) h.set(i, NAN);
}

// cache_shape: [pages, page_size, kv_heads, d] (GQA) or [pages, page_size, d] (MLA).
PagedScenario make_scenario(Rng& rng, const std::vector<Seq>& seqs, int page_size, int kv_heads, int dk, int dv,
                            DType cache_dtype, bool mla) {
  PagedScenario s;
  int64_t pages_needed = 0, max_pages = 1;
  for (const Seq& q : seqs) {
    const int64_t p = (q.seq_len + page_size - 1) / page_size;
    pages_needed += p;
    max_pages = std::max(max_pages, p + 1);  // one spare column: tables are wider than needed
  }
  const int64_t pages = pages_needed + 3;  // 3 pages nobody uses
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  for (int64_t i = 0; i < pages; ++i) perm[size_t(i)] = int32_t(i);
  for (int64_t i = pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.uniform_int(0, int(i)))]);
  const int64_t num_seqs = int64_t(seqs.size());
  s.block_table = host_tensor(DType::kI32, {num_seqs, max_pages});
  std::vector<int32_t> lens, starts{0};
  size_t next = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t p = (seqs[size_t(i)].seq_len + page_size - 1) / page_size;
    for (int64_t j = 0; j < max_pages; ++j)
      s.block_table.i32(i * max_pages + j) = j < p ? perm[next++] : perm[size_t(pages - 1)];  // spare: an unused page
    lens.push_back(seqs[size_t(i)].seq_len);
    starts.push_back(starts.back() + seqs[size_t(i)].q_len);
  }
  s.seq_lens = host_i32(lens);
  s.query_start = host_i32(starts);
  s.n = starts.back();
  if (mla) {
    s.k = host_tensor(cache_dtype, {pages, page_size, dk});
  } else {
    s.k = host_tensor(cache_dtype, {pages, page_size, kv_heads, dk});
    s.v = host_tensor(cache_dtype, {pages, page_size, kv_heads, dv});
    fill_nan(s.v);
  }
  fill_nan(s.k);
  const int64_t krow = mla ? dk : int64_t(kv_heads) * dk, vrow = int64_t(kv_heads) * dv;
  for (int64_t i = 0; i < num_seqs; ++i) {
    for (int pos = 0; pos < seqs[size_t(i)].seq_len; ++pos) {
      const int64_t page = s.block_table.i32(i * max_pages + pos / page_size);
      const int64_t slot = page * page_size + pos % page_size;
      for (int64_t c = 0; c < krow; ++c) s.k.set(slot * krow + c, rng.uniform(-1.f, 1.f));
      if (!mla)
        for (int64_t c = 0; c < vrow; ++c) s.v.set(slot * vrow + c, rng.uniform(-1.f, 1.f));
    }
  }
  return s;
}

struct DevicePaged {
  DeviceTensor block_table, seq_lens, query_start, k, v;
};
DevicePaged upload(Backend& gpu, const PagedScenario& s) {
  DevicePaged d;
  d.block_table = to_device(gpu, s.block_table);
  d.seq_lens = to_device(gpu, s.seq_lens);
  d.query_start = to_device(gpu, s.query_start);
  d.k = to_device(gpu, s.k);
  if (!s.v.bytes.empty()) d.v = to_device(gpu, s.v);
  return d;
}

class AttentionTest : public CudaOpsTest {
 protected:
  void check_gqa(const char* name, const std::vector<Seq>& seqs, int heads, int kv_heads, int dk, int dv, int page_size,
                 int window, DType act) {
    SCOPED_TRACE(std::string(name) + " seed " + std::to_string(seed_));
    PagedScenario s = make_scenario(rng_, seqs, page_size, kv_heads, dk, dv, act, false);
    HostTensor q = host_random(act, {s.n, heads, dk}, rng_, -3.f, 3.f);
    HostTensor ref = host_tensor(act, {s.n, heads, dv});
    ops::GqaAttentionParams p;
    p.q = q.t; p.k_cache = s.k.t; p.v_cache = s.v.t; p.out = ref.t;
    p.seqs = seqs_of(s.block_table.t, s.seq_lens.t, s.query_start.t, page_size);
    p.scale = 1.f / std::sqrt(float(dk));
    p.sliding_window = window;
    MOEX_ASSERT_OK(cpu_->gqa_attention(p));
    DevicePaged d = upload(*gpu_, s);
    DeviceTensor dq = to_device(*gpu_, q);
    DeviceTensor dout = device_poisoned(*gpu_, act, {s.n, heads, dv});
    p.q = dq.t; p.k_cache = d.k.t; p.v_cache = d.v.t; p.out = dout.t;
    p.seqs = seqs_of(d.block_table.t, d.seq_lens.t, d.query_start.t, page_size);
    MOEX_ASSERT_OK(gpu_->gqa_attention(p));
    HostTensor all = to_host(*gpu_, dout);
    EXPECT_LT(rel_l2(all, ref), act == DType::kF32 ? 1e-5 : kTolBf16);

    // Each sequence alone: same bits as inside the batch.
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t q0 = s.query_start.i32(int64_t(i)), q1 = s.query_start.i32(int64_t(i) + 1);
      HostTensor starts = host_i32({0, int32_t(q1 - q0)});
      DeviceTensor dstarts = to_device(*gpu_, starts);
      DeviceTensor dpart = device_poisoned(*gpu_, act, {q1 - q0, heads, dv});
      ops::GqaAttentionParams one = p;
      one.q = dq.t.slice(0, q0, q1);
      one.out = dpart.t;
      one.seqs = seqs_of(d.block_table.t.slice(0, int64_t(i), int64_t(i) + 1), d.seq_lens.t.slice(0, int64_t(i), int64_t(i) + 1),
                         dstarts.t, page_size);
      MOEX_ASSERT_OK(gpu_->gqa_attention(one));
      HostTensor part = to_host(*gpu_, dpart);
      for (int64_t r = 0; r < q1 - q0; ++r)
        ASSERT_TRUE(rows_bit_equal(part, r, all, q0 + r)) << "sequence " << i << " row " << r << " alone vs in the batch";
    }
  }

  void check_mla(const char* name, const std::vector<Seq>& seqs, int heads, int page_size, bool with_lse) {
    SCOPED_TRACE(std::string(name) + " heads " + std::to_string(heads) + " seed " + std::to_string(seed_));
    constexpr int kDk = 576, kRank = 512;
    PagedScenario s = make_scenario(rng_, seqs, page_size, 1, kDk, 0, DType::kBF16, true);
    HostTensor q = host_random(DType::kBF16, {s.n, heads, kDk}, rng_, -1.f, 1.f);
    HostTensor ref = host_tensor(DType::kBF16, {s.n, heads, kRank});
    HostTensor ref_lse = host_tensor(DType::kF32, {s.n, heads});
    ops::MlaAttentionParams p;
    p.q = q.t; p.cache = s.k.t; p.out = ref.t; p.lse = with_lse ? ref_lse.t : Tensor{};
    p.seqs = seqs_of(s.block_table.t, s.seq_lens.t, s.query_start.t, page_size);
    p.kv_lora_rank = kRank;
    p.scale = 1.f / std::sqrt(192.f);
    MOEX_ASSERT_OK(cpu_->mla_attention(p));
    DevicePaged d = upload(*gpu_, s);
    DeviceTensor dq = to_device(*gpu_, q);
    DeviceTensor dout = device_poisoned(*gpu_, DType::kBF16, {s.n, heads, kRank});
    DeviceTensor dlse = device_poisoned(*gpu_, DType::kF32, {s.n, heads});
    p.q = dq.t; p.cache = d.k.t; p.out = dout.t; p.lse = with_lse ? dlse.t : Tensor{};
    p.seqs = seqs_of(d.block_table.t, d.seq_lens.t, d.query_start.t, page_size);
    MOEX_ASSERT_OK(gpu_->mla_attention(p));
    HostTensor all = to_host(*gpu_, dout);
    EXPECT_LT(rel_l2(all, ref), kTolBf16);
    if (with_lse) {
      EXPECT_LT(rel_l2(to_host(*gpu_, dlse), ref_lse), 1e-5);
    }
    // The last sequence alone.
    const size_t i = seqs.size() - 1;
    const int64_t q0 = s.query_start.i32(int64_t(i)), q1 = s.query_start.i32(int64_t(i) + 1);
    DeviceTensor dstarts = to_device(*gpu_, host_i32({0, int32_t(q1 - q0)}));
    DeviceTensor dpart = device_poisoned(*gpu_, DType::kBF16, {q1 - q0, heads, kRank});
    ops::MlaAttentionParams one = p;
    one.q = dq.t.slice(0, q0, q1);
    one.out = dpart.t;
    one.lse = Tensor{};
    one.seqs = seqs_of(d.block_table.t.slice(0, int64_t(i), int64_t(i) + 1), d.seq_lens.t.slice(0, int64_t(i), int64_t(i) + 1),
                       dstarts.t, page_size);
    MOEX_ASSERT_OK(gpu_->mla_attention(one));
    HostTensor part = to_host(*gpu_, dpart);
    for (int64_t r = 0; r < q1 - q0; ++r)
      ASSERT_TRUE(rows_bit_equal(part, r, all, q0 + r)) << "row " << r << " alone vs in the batch";
  }
};

TEST_F(AttentionTest, GqaQwen3MixedPrefillDecode) {
  check_gqa("qwen3 32/4 d128", {{1, 1}, {700, 1}, {130, 130}, {300, 37}, {64, 1}}, 32, 4, 128, 128, 64, 0, DType::kBF16);
}

TEST_F(AttentionTest, GqaMixtralSlidingWindow) {
  check_gqa("mixtral 32/8 window 100", {{500, 1}, {257, 257}, {1030, 3}}, 32, 8, 128, 128, 16, 100, DType::kBF16);
}

TEST_F(AttentionTest, GqaOddSizesAndPageSize) {
  check_gqa("6/3 d80 dv48 page 7", {{1, 1}, {33, 5}, {100, 100}, {15, 2}}, 6, 3, 80, 48, 7, 0, DType::kBF16);
  check_gqa("f32 4/1 d64", {{77, 77}, {300, 1}}, 4, 1, 64, 64, 64, 0, DType::kF32);
  check_gqa("20/2 d256 (group of 10)", {{600, 1}, {45, 45}}, 20, 2, 256, 256, 32, 0, DType::kBF16);
}

// Shapes that take the tensor-core split kernel (gqa/gqa_split_tc.cu) unless MOEX_GQA_TC=0: group
// sizes 1 to 16, head dims 64 and 128, rows over 4096 keys (256-key splits: several 64-key tiles
// through both smem stages), odd page sizes, a sliding window, and splits whose last tile leaves
// whole warps without keys. The test above (Qwen3 shapes, page 64) and the Mixtral window test take
// it too.
TEST_F(AttentionTest, GqaTensorCoreShapes) {
  ops::GqaAttentionParams probe;
  HostTensor q = host_tensor(DType::kBF16, {1, 64, 128});
  HostTensor kv = host_tensor(DType::kBF16, {2, 16, 4, 128});
  probe.q = q.t; probe.k_cache = kv.t; probe.v_cache = kv.t;
#if defined(MOEX_WITH_CUDA)  // a kernel-library query: absent from builds without CUDA
  EXPECT_TRUE(kernels::gqa_split_tc_supported(probe)) << "Qwen3-235B-A22B shapes must take the tensor-core kernel";
#endif
  check_gqa("qwen3-235b 64/4 d128 long rows, page 16", {{5000, 1}, {4097, 2}, {300, 300}, {4160, 1}}, 64, 4, 128, 128, 16, 0,
            DType::kBF16);
  check_gqa("MHA 8/8 d128 page 7", {{129, 1}, {64, 64}, {1, 1}, {17, 3}}, 8, 8, 128, 128, 7, 0, DType::kBF16);
  check_gqa("d64 12/3 window 37", {{1000, 1}, {200, 17}, {6000, 1}}, 12, 3, 64, 64, 32, 37, DType::kBF16);
  check_gqa("d64 32/2 (group 16) window 3000 page 64", {{9000, 1}, {70, 70}}, 32, 2, 64, 64, 64, 3000, DType::kBF16);
}

TEST_F(AttentionTest, MlaDecodeAndPrefill) {
  check_mla("deepseek-v3 decode + mtp", {{1, 1}, {1500, 1}, {70, 2}}, 128, 64, true);
  check_mla("deepseek-v2-lite", {{90, 90}, {400, 1}}, 16, 64, true);
  check_mla("odd heads, page 16", {{37, 3}, {5, 5}}, 20, 16, false);
}

}  // namespace
}  // namespace moex::test
