// The FP8 (e4m3) MLA latent cache on CUDA vs the CPU backend (docs/kernels/mla.md "FP8 latent
// cache"): the quantizing cache_write writes the same bytes and scales as the CPU; the
// tensor-core decode kernel over an e4m3 cache + per-token scales matches the CPU on the same
// cache (heads 16/20/64/128, q_len 1/2, page 16/64, ragged batches, wide tables), each
// sequence gives the same bits alone and in the batch; unowned slots hold NaN bytes and NaN
// scales (never read).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_ops/mla_test_util.h"

namespace moex::test {
namespace {

constexpr int kDk = kMlaDk, kRank = kMlaRank;
constexpr double kTolBf16 = 5e-3;
using Seq = MlaSeq;

class MlaFp8Test : public CudaOpsTest {
 protected:
  // The latent rows of every owned slot (bf16, per-token magnitudes 0.1 .. 10, the rope part 4x
  // larger) quantized into an e4m3 pool by both backends' cache_write; checks they agree.
  struct Pool {
    MlaPageTable table;
    HostTensor f8, scale;  // [pages, page, 576] e4m3, [pages, page] f32
    DeviceTensor d_f8, d_scale;
  };
  Pool make_pool(const std::vector<Seq>& seqs, int page_size, int64_t extra_cols) {
    Pool s;
    s.table = make_mla_page_table(rng_, seqs, page_size, extra_cols);
    const std::vector<int32_t>& owned = s.table.owned_slots;
    const int64_t pages = s.table.pages, slots = pages * page_size;
    const int64_t rows = int64_t(owned.size());
    HostTensor src = host_tensor(DType::kBF16, {rows, kDk});
    for (int64_t r = 0; r < rows; ++r) {
      const float m = std::pow(10.f, rng_.uniform(-1.f, 1.f));
      for (int64_t c = 0; c < kDk; ++c) src.set(r * kDk + c, rng_.uniform(-1.f, 1.f) * m * (c < kRank ? 1.f : 4.f));
    }
    HostTensor map = host_i32(owned);
    s.f8 = host_tensor(DType::kF8E4M3, {pages, page_size, kDk});
    s.scale = host_tensor(DType::kF32, {pages, page_size});
    for (int64_t i = 0; i < s.f8.t.numel(); ++i) s.f8.set(i, NAN);
    for (int64_t i = 0; i < s.scale.t.numel(); ++i) s.scale.set(i, NAN);
    ops::CacheWriteParams w;
    w.src = src.t;
    w.slot_mapping = map.t;
    w.dst = s.f8.t.reshape({slots, kDk});
    w.dst_scale = s.scale.t.reshape({slots});
    EXPECT_TRUE(cpu_->cache_write(w).is_ok());

    DeviceTensor d_src = to_device(*gpu_, src), d_map = to_device(*gpu_, map);
    s.d_f8 = device_poisoned(*gpu_, DType::kF8E4M3, {pages, page_size, kDk});
    s.d_scale = device_poisoned(*gpu_, DType::kF32, {pages, page_size});
    w.src = d_src.t;
    w.slot_mapping = d_map.t;
    w.dst = s.d_f8.t.reshape({slots, kDk});
    w.dst_scale = s.d_scale.t.reshape({slots});
    const Status st = gpu_->cache_write(w);
    EXPECT_TRUE(st.is_ok()) << st.message();
    HostTensor got = to_host(*gpu_, s.d_f8), got_scale = to_host(*gpu_, s.d_scale);
    for (int32_t slot : owned) {
      EXPECT_EQ(std::memcmp(got.bytes.data() + int64_t(slot) * kDk, s.f8.bytes.data() + int64_t(slot) * kDk, kDk), 0)
          << "e4m3 bytes of slot " << slot;
      EXPECT_EQ(std::memcmp(got_scale.bytes.data() + int64_t(slot) * 4, s.scale.bytes.data() + int64_t(slot) * 4, 4), 0)
          << "scale of slot " << slot;
    }
    return s;
  }

  void check(const std::string& name, const std::vector<Seq>& seqs, int heads, int page_size, int64_t extra_cols = 1) {
    SCOPED_TRACE(name + " heads " + std::to_string(heads) + " page " + std::to_string(page_size) + " seed " +
                 std::to_string(seed_));
    Pool pool = make_pool(seqs, page_size, extra_cols);
    const MlaPageTable& s = pool.table;
    HostTensor q = host_random(DType::kBF16, {s.n, heads, kDk}, rng_, -1.f, 1.f);
    HostTensor ref = host_tensor(DType::kBF16, {s.n, heads, kRank});
    HostTensor ref_lse = host_tensor(DType::kF32, {s.n, heads});
    ops::MlaAttentionParams p;
    p.q = q.t; p.cache = pool.f8.t; p.cache_scale = pool.scale.t; p.out = ref.t; p.lse = ref_lse.t;
    p.seqs = seqs_of(s.block_table.t, s.seq_lens.t, s.query_start.t, page_size);
    p.kv_lora_rank = kRank;
    p.scale = 1.f / std::sqrt(192.f) * rng_.uniform(0.3f, 1.f);
    MOEX_ASSERT_OK(cpu_->mla_attention(p));

    DeviceTensor dq = to_device(*gpu_, q);
    p.q = dq.t;
    p.cache = pool.d_f8.t;
    p.cache_scale = pool.d_scale.t;
    expect_gpu_mla_matches(*gpu_, p, s, page_size, heads, ref, ref_lse, kTolBf16);
  }
};

TEST_F(MlaFp8Test, MlaFp8SingleSequenceLengths) {
  for (int heads : {16, 128})
    for (int kv : {1, 31, 64, 65, 97, 1000})
      for (int q_len : {1, 2}) {
        if (q_len > kv) continue;
        check("kv " + std::to_string(kv) + " q_len " + std::to_string(q_len), {{kv, q_len}}, heads, 64);
      }
}

TEST_F(MlaFp8Test, MlaFp8RaggedBatches) {
  check("ragged decode page 16", {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {4097, 1}}, 16, 16);
  check("ragged mtp pairs", {{2, 2}, {63, 2}, {65, 2}, {1000, 2}, {4097, 2}}, 20, 16);
  check("mixed q_len 64 heads", {{65, 1}, {1000, 2}, {33, 1}, {4097, 2}, {2, 2}}, 64, 64);
  std::vector<Seq> seqs;
  for (int i = 0; i < 20; ++i) {
    const int len = rng_.uniform_int(1, 1500);
    seqs.push_back({len, std::min(len, rng_.uniform_int(1, 2))});
  }
  check("random 20 sequences", seqs, 16, 64);
}

// 64K-key table: many empty splits, 128-head partials in several token chunks.
TEST_F(MlaFp8Test, MlaFp8WideTable) {
  std::vector<Seq> seqs;
  for (int i = 0; i < 9; ++i) seqs.push_back({rng_.uniform_int(2, 3000), 2});
  check("wide table", seqs, 128, 64, 1024);
}

// Without cache_scale an e4m3 cache reads with scale 1; f32 q cannot take an e4m3 cache.
TEST_F(MlaFp8Test, MlaFp8UnscaledCacheAndRejections) {
  const int page = 64, len = 300, heads = 16;
  HostTensor cache = host_tensor(DType::kF8E4M3, {5, page, kDk});
  for (int64_t i = 0; i < cache.t.numel(); ++i) cache.set(i, rng_.uniform(-2.f, 2.f));
  HostTensor bt = host_i32({3, 0, 4, 1, 2}), lens = host_i32({len}), starts = host_i32({0, 1});
  bt.t = bt.t.reshape({1, 5});
  HostTensor q = host_random(DType::kBF16, {1, heads, kDk}, rng_, -1.f, 1.f);
  HostTensor ref = host_tensor(DType::kF32, {1, heads, kRank});
  ops::MlaAttentionParams p;
  p.q = q.t; p.cache = cache.t; p.out = ref.t;
  p.seqs = seqs_of(bt.t, lens.t, starts.t, page);
  p.scale = 0.05f;
  MOEX_ASSERT_OK(cpu_->mla_attention(p));
  DeviceTensor dbt = to_device(*gpu_, bt), dlens = to_device(*gpu_, lens), dst = to_device(*gpu_, starts);
  DeviceTensor dc = to_device(*gpu_, cache), dq = to_device(*gpu_, q);
  DeviceTensor dout = device_poisoned(*gpu_, DType::kF32, {1, heads, kRank});
  p.q = dq.t; p.cache = dc.t; p.out = dout.t;
  p.seqs = seqs_of(dbt.t, dlens.t, dst.t, page);
  MOEX_ASSERT_OK(gpu_->mla_attention(p));
  EXPECT_LT(rel_l2(to_host(*gpu_, dout), ref), kTolBf16);

  DeviceTensor dq32 = device_poisoned(*gpu_, DType::kF32, {1, heads, kDk});
  ops::MlaAttentionParams bad = p;
  bad.q = dq32.t;
  EXPECT_EQ(gpu_->mla_attention(bad).code(), StatusCode::kInvalidArgument);  // f32 q with an e4m3 cache
  DeviceTensor dsc = device_poisoned(*gpu_, DType::kF32, {5, page - 1});
  bad = p;
  bad.cache_scale = dsc.t;
  EXPECT_EQ(gpu_->mla_attention(bad).code(), StatusCode::kInvalidArgument);  // scales [5, 63] for [5, 64] slots
}

}  // namespace
}  // namespace moex::test
