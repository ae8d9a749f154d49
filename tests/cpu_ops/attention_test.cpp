#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

// Sequences laid out over randomly assigned pages of a NaN-poisoned pool.
struct Paged {
  std::vector<int> lens, queries;  // per sequence
  int page_size = 16, max_pages = 0, num_pages = 0;
  HostTensor block_table, seq_lens, query_start;
  int64_t n = 0;  // query rows

  Paged(std::vector<int> l, std::vector<int> q, int ps) : lens(std::move(l)), queries(std::move(q)), page_size(ps) {
    const int seqs = int(lens.size());
    for (int L : lens) max_pages = std::max(max_pages, (L + ps - 1) / ps);
    num_pages = seqs * max_pages + 3;  // spare pages stay NaN
    std::vector<int32_t> pool(static_cast<size_t>(num_pages));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng());
    block_table = HostTensor(DType::kI32, {seqs, max_pages});
    seq_lens = HostTensor(DType::kI32, {seqs});
    query_start = HostTensor(DType::kI32, {seqs + 1});
    size_t next = 0;
    query_start.i32()[0] = 0;
    for (int i = 0; i < seqs; ++i) {
      for (int pg = 0; pg < max_pages; ++pg) block_table.i32()[i * max_pages + pg] = pool[next++];
      seq_lens.i32()[i] = lens[size_t(i)];
      query_start.i32()[i + 1] = query_start.i32()[i] + queries[size_t(i)];
    }
    n = query_start.i32()[seqs];
  }
  int64_t slot(int seq, int64_t pos) const {
    return int64_t(block_table.t.ptr<const int32_t>()[seq * max_pages + pos / page_size]) * page_size + pos % page_size;
  }
  ops::PagedSeqs seqs() const { return {block_table.t, seq_lens.t, query_start.t, page_size}; }
};

// Fills the cache rows of every cached token with random values (others stay NaN).
void fill_cache(const Paged& pg, HostTensor* cache, int64_t row_elems) {
  cache->fill_nan();
  std::uniform_real_distribution<double> d(-1, 1);
  for (int i = 0; i < int(pg.lens.size()); ++i)
    for (int64_t s = 0; s < pg.lens[size_t(i)]; ++s) {
      const int64_t base = pg.slot(i, s) * row_elems;
      for (int64_t e = 0; e < row_elems; ++e) cache->set(base + e, d(rng()));
    }
}

// Double reference: out [n, heads, dv], lse [n, heads].
void ref_attention(const Paged& pg, const HostTensor& q, int64_t heads, int64_t d, int64_t dv, double scale,
                   int window, const std::function<double(int64_t slot, int64_t head, int64_t e)>& key,
                   const std::function<double(int64_t slot, int64_t head, int64_t e)>& val, std::vector<double>* out,
                   std::vector<double>* lse) {
  out->assign(size_t(pg.n * heads * dv), 0.0);
  lse->assign(size_t(pg.n * heads), 0.0);
  for (int i = 0; i < int(pg.lens.size()); ++i) {
    const int q0 = pg.query_start.t.ptr<const int32_t>()[i], q1 = pg.query_start.t.ptr<const int32_t>()[i + 1];
    for (int t = q0; t < q1; ++t) {
      const int64_t pos = pg.lens[size_t(i)] - (q1 - t);
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      for (int64_t h = 0; h < heads; ++h) {
        std::vector<double> sc;
        for (int64_t s = lo; s <= pos; ++s) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) dot += q.get((t * heads + h) * d + e) * key(pg.slot(i, s), h, e);
          sc.push_back(dot * scale);
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double l = 0;
        for (double& v : sc) l += (v = std::exp(v - mx));
        for (int64_t s = lo; s <= pos; ++s)
          for (int64_t e = 0; e < dv; ++e)
            (*out)[size_t((t * heads + h) * dv + e)] += sc[size_t(s - lo)] / l * val(pg.slot(i, s), h, e);
        (*lse)[size_t(t * heads + h)] = mx + std::log(l);
      }
    }
  }
}

struct GqaCase {
  int64_t qh, kvh, d, dv;
  int page_size, window;
  DType q, cache, out;
};

void run_gqa(const GqaCase& c, const Paged& pg) {
  HostTensor kc = HostTensor(c.cache, {pg.num_pages, c.page_size, c.kvh, c.d});
  HostTensor vc = HostTensor(c.cache, {pg.num_pages, c.page_size, c.kvh, c.dv});
  fill_cache(pg, &kc, c.kvh * c.d);
  fill_cache(pg, &vc, c.kvh * c.dv);
  HostTensor q = random_tensor(c.q, {pg.n, c.qh, c.d});
  HostTensor out(c.out, {pg.n, c.qh, c.dv});
  out.fill_nan();
  const double scale = 1.0 / std::sqrt(double(c.d));
  ops::GqaAttentionParams p{q.t, kc.t, vc.t, pg.seqs(), out.t, float(scale), c.window};
  const Status s = cpu(2)->gqa_attention(p);
  ASSERT_TRUE(s.is_ok()) << s.message();
  const int64_t group = c.qh / c.kvh;
  std::vector<double> ref, lse;
  ref_attention(
      pg, q, c.qh, c.d, c.dv, scale, c.window,
      [&](int64_t slot, int64_t h, int64_t e) { return kc.get((slot * c.kvh + h / group) * c.d + e); },
      [&](int64_t slot, int64_t h, int64_t e) { return vc.get((slot * c.kvh + h / group) * c.dv + e); }, &ref, &lse);
  EXPECT_LT(rel_l2(out.values(), ref), tol_for(c.out, c.cache == DType::kF32 ? c.q : c.cache))
      << c.qh << "/" << c.kvh << " d " << c.d << " window " << c.window;
}

TEST(GqaAttention, PrefillDecodeAndChunkedOverPagedCache) {
  MOEX_TRACE_SEED();
  const DType f32 = DType::kF32, bf16 = DType::kBF16;
  const GqaCase cases[] = {
      {8, 2, 64, 64, 16, 0, f32, f32, f32},     // GQA 4:1
      {4, 4, 17, 17, 1, 0, f32, f32, f32},      // MHA, page size 1, odd head dim
      {6, 3, 24, 40, 7, 0, f32, f32, f32},      // head_dim_v != head_dim, odd page size
      {8, 2, 64, 64, 16, 7, f32, f32, f32},     // sliding window
      {32, 4, 128, 128, 64, 0, bf16, bf16, bf16},  // Qwen3-30B-A3B heads, bf16
      {8, 2, 64, 64, 16, 20, f32, bf16, f32},   // Mixtral-style window, bf16 cache
  };
  for (const GqaCase& c : cases) {
    // Sequences: prefill of 37, a decode step at 5, a chunk of 6 at the end of 70.
    Paged pg({37, 5, 70}, {37, 1, 6}, c.page_size);
    run_gqa(c, pg);
  }
}

TEST(GqaAttention, QueryResultIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  const int64_t qh = 8, kvh = 2, d = 64;
  // The probe: a decode query of a 53-token sequence, alone or after other sequences.
  Paged big({40, 53}, {7, 1}, 16);
  HostTensor kc(DType::kF32, {big.num_pages, 16, kvh, d}), vc(DType::kF32, {big.num_pages, 16, kvh, d});
  fill_cache(big, &kc, kvh * d);
  fill_cache(big, &vc, kvh * d);
  HostTensor q = random_tensor(DType::kF32, {big.n, qh, d});
  std::vector<float> first;
  for (int threads : {1, 2})
    for (bool alone : {true, false}) {
      Paged one = Paged({53}, {1}, 16);
      for (int pgi = 0; pgi < big.max_pages; ++pgi) one.block_table.i32()[pgi] = big.block_table.i32()[big.max_pages + pgi];
      const Paged& pg = alone ? one : big;
      Tensor qv = alone ? q.t.slice(0, big.n - 1, big.n) : q.t;
      HostTensor out(DType::kF32, {pg.n, qh, d});
      ops::GqaAttentionParams p{qv, kc.t, vc.t, pg.seqs(), out.t, 0.125f, 0};
      ASSERT_TRUE(cpu(threads)->gqa_attention(p).is_ok());
      std::vector<float> row(out.t.ptr<float>() + (pg.n - 1) * qh * d, out.t.ptr<float>() + pg.n * qh * d);
      if (first.empty()) first = row;
      else EXPECT_TRUE(same_bytes(first.data(), row.data(), row.size() * 4)) << alone << " " << threads;
    }
}

TEST(GqaAttention, RejectsBadLayouts) {
  auto be = cpu(1);
  Paged pg({10, 4}, {2, 1}, 4);
  HostTensor kc(DType::kF32, {pg.num_pages, 4, 2, 8}), vc(DType::kF32, {pg.num_pages, 4, 2, 8});
  HostTensor q(DType::kF32, {pg.n, 4, 8}), out(DType::kF32, {pg.n, 4, 8});
  ops::GqaAttentionParams p{q.t, kc.t, vc.t, pg.seqs(), out.t, 1.f, 0};
  ASSERT_TRUE(be->gqa_attention(p).is_ok());
  pg.block_table.i32()[1] = pg.num_pages;  // page 1 of sequence 0 out of range
  Status s = be->gqa_attention(p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("block_table"), std::string::npos) << s.message();
  pg.block_table.i32()[1] = 0;
  pg.seq_lens.i32()[1] = 0;  // fewer cached tokens than queries
  EXPECT_EQ(be->gqa_attention(p).code(), StatusCode::kInvalidArgument);
  pg.seq_lens.i32()[1] = 4;
  pg.query_start.i32()[2] = 2;  // does not end at n = 3
  EXPECT_EQ(be->gqa_attention(p).code(), StatusCode::kInvalidArgument);
  pg.query_start.i32()[2] = 3;
  HostTensor q_bad(DType::kF32, {pg.n, 3, 8});  // 3 heads over 2 kv heads
  p.q = q_bad.t;
  EXPECT_EQ(be->gqa_attention(p).code(), StatusCode::kInvalidArgument);
}

TEST(MlaAttention, MatchesReferenceWithLse) {
  MOEX_TRACE_SEED();
  struct C { int64_t heads, rank, rope; int page_size; DType q, cache, out; };
  const C cases[] = {{16, 64, 16, 16, DType::kF32, DType::kF32, DType::kF32},
                     {3, 17, 5, 7, DType::kF32, DType::kF32, DType::kF32},
                     {16, 512, 64, 64, DType::kBF16, DType::kBF16, DType::kBF16}};  // DeepSeek-V2-Lite
  for (const C& c : cases) {
    const int64_t dim = c.rank + c.rope;
    Paged pg({29, 3, 66}, {29, 1, 2}, c.page_size);
    HostTensor cache(c.cache, {pg.num_pages, c.page_size, dim});
    fill_cache(pg, &cache, dim);
    HostTensor q = random_tensor(c.q, {pg.n, c.heads, dim}, -0.5, 0.5);
    HostTensor out(c.out, {pg.n, c.heads, c.rank}), lse(DType::kF32, {pg.n, c.heads});
    out.fill_nan();
    lse.fill_nan();
    const double scale = 1.0 / std::sqrt(double(dim));
    ops::MlaAttentionParams p{q.t, cache.t, pg.seqs(), out.t, lse.t, int(c.rank), float(scale)};
    const Status s = cpu(2)->mla_attention(p);
    ASSERT_TRUE(s.is_ok()) << s.message();
    std::vector<double> ref, rlse;
    ref_attention(
        pg, q, c.heads, dim, c.rank, scale, 0, [&](int64_t slot, int64_t, int64_t e) { return cache.get(slot * dim + e); },
        [&](int64_t slot, int64_t, int64_t e) { return cache.get(slot * dim + e); }, &ref, &rlse);
    EXPECT_LT(rel_l2(out.values(), ref), tol_for(c.out, c.q)) << c.heads << " " << c.rank;
    EXPECT_LT(rel_l2(lse.values(), rlse), 1e-5);
    // lse is optional.
    ops::MlaAttentionParams p2 = p;
    p2.lse = Tensor{};
    EXPECT_TRUE(cpu(1)->mla_attention(p2).is_ok());
  }
  auto be = cpu(1);
  Paged pg({4}, {1}, 4);
  HostTensor cache(DType::kF32, {pg.num_pages, 4, 24}), q(DType::kF32, {1, 2, 24}), out(DType::kF32, {1, 2, 16});
  ops::MlaAttentionParams bad{q.t, cache.t, pg.seqs(), out.t, Tensor{}, 20, 1.f};  // rank 20 != out 16
  EXPECT_EQ(be->mla_attention(bad).code(), StatusCode::kInvalidArgument);
}

TEST(MlaAttention, QueryResultIndependentOfBatchAndThreads) {
  MOEX_TRACE_SEED();
  const int64_t heads = 16, rank = 64, dim = 80;
  Paged big({40, 53}, {17, 1}, 16);
  HostTensor cache(DType::kF32, {big.num_pages, 16, dim});
  fill_cache(big, &cache, dim);
  HostTensor q = random_tensor(DType::kF32, {big.n, heads, dim});
  std::vector<float> first, first_lse;
  for (int threads : {1, 2})
    for (bool alone : {true, false}) {
      Paged one = Paged({53}, {1}, 16);
      for (int pgi = 0; pgi < big.max_pages; ++pgi) one.block_table.i32()[pgi] = big.block_table.i32()[big.max_pages + pgi];
      const Paged& pg = alone ? one : big;
      Tensor qv = alone ? q.t.slice(0, big.n - 1, big.n) : q.t;
      HostTensor out(DType::kF32, {pg.n, heads, rank}), lse(DType::kF32, {pg.n, heads});
      ops::MlaAttentionParams p{qv, cache.t, pg.seqs(), out.t, lse.t, int(rank), 0.1f};
      ASSERT_TRUE(cpu(threads)->mla_attention(p).is_ok());
      std::vector<float> row(out.t.ptr<float>() + (pg.n - 1) * heads * rank, out.t.ptr<float>() + pg.n * heads * rank);
      std::vector<float> lrow(lse.t.ptr<float>() + (pg.n - 1) * heads, lse.t.ptr<float>() + pg.n * heads);
      if (first.empty()) {
        first = row;
        first_lse = lrow;
      } else {
        EXPECT_TRUE(same_bytes(first.data(), row.data(), row.size() * 4)) << alone << " " << threads;
        EXPECT_TRUE(same_bytes(first_lse.data(), lrow.data(), lrow.size() * 4)) << alone << " " << threads;
      }
    }
}

TEST(CacheWrite, ScattersRowsWithCast) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const int64_t slots = 97, dim = 24, n = 17;
    HostTensor cache(dt, {slots, dim});
    cache.fill_nan();
    HostTensor src = random_tensor(DType::kF32, {n, dim + 3});
    Tensor sv = src.t.slice(1, 0, dim);  // strided rows
    std::vector<int32_t> perm(slots);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng());
    HostTensor map(DType::kI32, {n});
    for (int64_t t = 0; t < n; ++t) map.i32()[t] = perm[size_t(t)];
    ASSERT_TRUE(be->cache_write({sv, map.t, cache.t}).is_ok());
    for (int64_t t = 0; t < n; ++t)
      for (int64_t e = 0; e < dim; ++e) {
        const double want = dt == DType::kBF16 ? round_to_bf16(float(view_get(sv, t * dim + e))) : view_get(sv, t * dim + e);
        ASSERT_EQ(cache.get(map.i32()[t] * dim + e), want);
      }
    EXPECT_TRUE(std::isnan(cache.get(perm[size_t(n)] * dim)));  // an unwritten slot
    map.i32()[3] = int32_t(slots);
    EXPECT_EQ(be->cache_write({sv, map.t, cache.t}).code(), StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace moex::test
