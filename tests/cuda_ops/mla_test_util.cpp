#include "cuda_ops/mla_test_util.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace moex::test {

MlaPageTable make_mla_page_table(Rng& rng, const std::vector<MlaSeq>& seqs, int page_size, int64_t extra_cols) {
  MlaPageTable s;
  int64_t used = 0, max_pages = 1;
  for (const MlaSeq& q : seqs) {
    const int64_t p = (q.seq_len + page_size - 1) / page_size;
    used += p;
    max_pages = std::max(max_pages, p + extra_cols);
  }
  s.pages = used + 2;
  std::vector<int32_t> perm(size_t(s.pages), 0);
  for (int64_t i = 0; i < s.pages; ++i) perm[size_t(i)] = int32_t(i);
  for (int64_t i = s.pages - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.uniform_int(0, int(i)))]);
  const int64_t num_seqs = int64_t(seqs.size());
  s.block_table = host_tensor(DType::kI32, {num_seqs, max_pages});
  std::vector<int32_t> lens, starts{0};
  size_t next = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t p = (seqs[size_t(i)].seq_len + page_size - 1) / page_size;
    for (int64_t j = 0; j < max_pages; ++j)
      s.block_table.i32(i * max_pages + j) = j < p ? perm[next++] : perm[size_t(s.pages - 1)];
    for (int pos = 0; pos < seqs[size_t(i)].seq_len; ++pos)
      s.owned_slots.push_back(s.block_table.i32(i * max_pages + pos / page_size) * page_size + pos % page_size);
    lens.push_back(seqs[size_t(i)].seq_len);
    starts.push_back(starts.back() + seqs[size_t(i)].q_len);
  }
  s.seq_lens = host_i32(lens);
  s.query_start = host_i32(starts);
  s.n = starts.back();
  return s;
}

void expect_gpu_mla_matches(Backend& gpu, ops::MlaAttentionParams p, const MlaPageTable& table, int page_size,
                            int64_t heads, const HostTensor& ref, const HostTensor& ref_lse, double tolerance) {
  DeviceTensor bt = to_device(gpu, table.block_table), lens = to_device(gpu, table.seq_lens);
  DeviceTensor starts = to_device(gpu, table.query_start);
  DeviceTensor dout = device_poisoned(gpu, DType::kBF16, {table.n, heads, kMlaRank});
  DeviceTensor dlse = device_poisoned(gpu, DType::kF32, {table.n, heads});
  const Tensor q = p.q;
  p.out = dout.t;
  p.lse = dlse.t;
  p.seqs = seqs_of(bt.t, lens.t, starts.t, page_size);
  MOEX_ASSERT_OK(gpu.mla_attention(p));
  HostTensor all = to_host(gpu, dout), all_lse = to_host(gpu, dlse);
  EXPECT_LT(rel_l2(all, ref), tolerance);
  EXPECT_LT(rel_l2(all_lse, ref_lse), 1e-5);

  // Every sequence alone (same table width): the same bits for out and lse.
  const int64_t num_seqs = table.seq_lens.t.numel();
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t q0 = table.query_start.i32(i), q1 = table.query_start.i32(i + 1);
    if (q1 == q0) continue;
    DeviceTensor dst = to_device(gpu, host_i32({0, int32_t(q1 - q0)}));
    DeviceTensor dpart = device_poisoned(gpu, DType::kBF16, {q1 - q0, heads, kMlaRank});
    DeviceTensor dpl = device_poisoned(gpu, DType::kF32, {q1 - q0, heads});
    ops::MlaAttentionParams one = p;
    one.q = q.slice(0, q0, q1);
    one.out = dpart.t;
    one.lse = dpl.t;
    one.seqs = seqs_of(bt.t.slice(0, i, i + 1), lens.t.slice(0, i, i + 1), dst.t, page_size);
    MOEX_ASSERT_OK(gpu.mla_attention(one));
    HostTensor part = to_host(gpu, dpart), part_lse = to_host(gpu, dpl);
    for (int64_t r = 0; r < q1 - q0; ++r) {
      ASSERT_TRUE(rows_bit_equal(part, r, all, q0 + r)) << "sequence " << i << " row " << r << " alone vs in the batch";
      ASSERT_TRUE(rows_bit_equal(part_lse, r, all_lse, q0 + r)) << "lse of sequence " << i << " row " << r;
    }
  }
}

void check_mla_bf16_decode(Backend& cpu, Backend& gpu, Rng& rng, const std::vector<MlaSeq>& seqs, int heads,
                           int page_size, int64_t extra_cols) {
  const MlaPageTable s = make_mla_page_table(rng, seqs, page_size, extra_cols);
  HostTensor cache = host_tensor(DType::kBF16, {s.pages, page_size, kMlaDk});
  for (int64_t i = 0; i < cache.t.numel(); ++i) cache.set(i, NAN);
  for (int32_t slot : s.owned_slots)
    for (int64_t c = 0; c < kMlaDk; ++c) cache.set(int64_t(slot) * kMlaDk + c, rng.uniform(-1.f, 1.f));
  HostTensor q = host_random(DType::kBF16, {s.n, heads, kMlaDk}, rng, -1.f, 1.f);
  HostTensor ref = host_tensor(DType::kBF16, {s.n, heads, kMlaRank});
  HostTensor ref_lse = host_tensor(DType::kF32, {s.n, heads});
  ops::MlaAttentionParams p;
  p.q = q.t; p.cache = cache.t; p.out = ref.t; p.lse = ref_lse.t;
  p.seqs = seqs_of(s.block_table.t, s.seq_lens.t, s.query_start.t, page_size);
  p.kv_lora_rank = kMlaRank;
  p.scale = 1.f / std::sqrt(192.f) * rng.uniform(0.8f, 3.f);  // sharper softmaxes too
  MOEX_ASSERT_OK(cpu.mla_attention(p));

  DeviceTensor dcache = to_device(gpu, cache), dq = to_device(gpu, q);
  p.q = dq.t;
  p.cache = dcache.t;
  expect_gpu_mla_matches(gpu, p, s, page_size, heads, ref, ref_lse, 5e-3);
}

}  // namespace moex::test
