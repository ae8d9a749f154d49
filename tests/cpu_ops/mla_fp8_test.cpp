// The FP8 (e4m3) MLA latent cache on the CPU backend (contract: ops::CacheWriteParams::dst_scale
// and ops::MlaAttentionParams::cache_scale, docs/kernels/mla.md): the quantizing cache_write
// (power-of-two row scales, bytes recomputed here independently), mla_attention over an e4m3
// cache + scales against a double reference on the dequantized values, the accuracy against the
// bf16 cache the latents came from, and the argument checks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

// The scale the contract asks for, found by search in double: the smallest power of two
// 2^e with amax <= 448 * 2^e; 1 for amax 0.
double contract_scale(double amax) {
  if (amax == 0) return 1.0;
  int e = -140;
  while (amax > 448.0 * std::ldexp(1.0, e)) ++e;
  return std::ldexp(1.0, std::max(e, -126));
}

TEST(MlaFp8, CacheWriteQuantizesRowsWithPowerOfTwoScales) {
  MOEX_TRACE_SEED();
  for (DType src_dtype : {DType::kF32, DType::kBF16}) {
    const int64_t n = 7, dim = 576, slots = 12;
    HostTensor src = random_tensor(src_dtype, {n, dim});
    // Rows of very different magnitudes (1e-3 .. 1e4), one all-zero row, one row with a value
    // exactly at 448 * 2^k (must not round the scale up).
    std::uniform_real_distribution<double> mag(-3, 4);
    for (int64_t t = 0; t < n; ++t) {
      const double m = std::pow(10.0, mag(rng()));
      for (int64_t c = 0; c < dim; ++c) src.set(t * dim + c, t == 3 ? 0.0 : src.get(t * dim + c) * m);
    }
    src.set(5 * dim + 17, 448.0 * 4);
    for (int64_t c = 0; c < dim; ++c)
      if (c != 17) src.set(5 * dim + c, std::clamp(src.get(5 * dim + c), -1000.0, 1000.0));
    std::vector<int32_t> perm(static_cast<size_t>(slots));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng());
    HostTensor slot_map(DType::kI32, {n});
    for (int64_t t = 0; t < n; ++t) slot_map.i32()[t] = perm[size_t(t)];
    HostTensor dst(DType::kF8E4M3, {slots, dim}), scale(DType::kF32, {slots});
    dst.fill_nan();
    scale.fill_nan();
    ops::CacheWriteParams p{src.t, slot_map.t, dst.t};
    p.dst_scale = scale.t;
    const Status s = cpu(2)->cache_write(p);
    ASSERT_TRUE(s.is_ok()) << s.message();
    for (int64_t t = 0; t < n; ++t) {
      const int64_t slot = perm[size_t(t)];
      double amax = 0;
      for (int64_t c = 0; c < dim; ++c) amax = std::max(amax, std::fabs(src.get(t * dim + c)));
      const double want = contract_scale(amax);
      ASSERT_EQ(scale.get(slot), want) << "row " << t << " amax " << amax;
      if (t == 5) {
        EXPECT_EQ(want, 4.0);
      }
      double err2 = 0, ref2 = 0;
      for (int64_t c = 0; c < dim; ++c) {
        const float x = float(src.get(t * dim + c));
        const uint8_t got = dst.t.ptr<uint8_t>()[slot * dim + c];
        ASSERT_EQ(got, f32_to_f8e4m3(float(x / want))) << "row " << t << " col " << c;
        const double deq = double(f8e4m3_to_f32(got)) * want;
        err2 += (deq - x) * (deq - x);
        ref2 += double(x) * x;
      }
      // e4m3 keeps 3 mantissa bits: the row's relative L2 error is a few percent at most.
      if (ref2 > 0) {
        EXPECT_LT(std::sqrt(err2 / ref2), 0.04) << "row " << t;
      }
    }
    for (int64_t slot = 0; slot < slots; ++slot) {
      if (std::find(perm.begin(), perm.begin() + n, int32_t(slot)) != perm.begin() + n) continue;
      EXPECT_TRUE(std::isnan(scale.get(slot))) << "unwritten slot " << slot << " scale touched";
      EXPECT_EQ(dst.t.ptr<uint8_t>()[slot * dim], 0x7f) << "unwritten slot " << slot << " touched";
    }
  }
}

TEST(MlaFp8, RejectsScalesWithoutAnFp8Cache) {
  auto be = cpu(1);
  HostTensor src(DType::kF32, {2, 8}), slots(DType::kI32, {2}), bf(DType::kBF16, {4, 8}), f8(DType::kF8E4M3, {4, 8});
  HostTensor sc(DType::kF32, {4}), sc_short(DType::kF32, {3}), sc_i32(DType::kI32, {4});
  slots.i32()[0] = 0;
  slots.i32()[1] = 3;
  ops::CacheWriteParams p{src.t, slots.t, bf.t};
  p.dst_scale = sc.t;
  EXPECT_EQ(be->cache_write(p).code(), StatusCode::kInvalidArgument);  // bf16 dst
  p.dst = f8.t;
  p.dst_scale = sc_short.t;
  EXPECT_EQ(be->cache_write(p).code(), StatusCode::kInvalidArgument);  // 3 scales for 4 slots
  p.dst_scale = sc_i32.t;
  EXPECT_EQ(be->cache_write(p).code(), StatusCode::kInvalidArgument);  // i32 scales
  p.dst_scale = sc.t;
  EXPECT_TRUE(be->cache_write(p).is_ok());

  HostTensor bt(DType::kI32, {1, 1}), lens(DType::kI32, {1}), qs(DType::kI32, {2});
  bt.i32()[0] = 0;
  lens.i32()[0] = 3;
  qs.i32()[0] = 0;
  qs.i32()[1] = 1;
  HostTensor q(DType::kF32, {1, 2, 24}), out(DType::kF32, {1, 2, 16});
  HostTensor cache_bf(DType::kBF16, {2, 4, 24}), cache_f8(DType::kF8E4M3, {2, 4, 24});
  HostTensor cs(DType::kF32, {2, 4}), cs_bad(DType::kF32, {2, 3});
  ops::MlaAttentionParams m{q.t, cache_bf.t, {bt.t, lens.t, qs.t, 4}, out.t, Tensor{}, 16, 1.f};
  m.cache_scale = cs.t;
  EXPECT_EQ(be->mla_attention(m).code(), StatusCode::kInvalidArgument);  // bf16 cache with scales
  m.cache = cache_f8.t;
  m.cache_scale = cs_bad.t;
  EXPECT_EQ(be->mla_attention(m).code(), StatusCode::kInvalidArgument);  // [2, 3] scales for [2, 4] slots
  m.cache_scale = cs.t;
  EXPECT_TRUE(be->mla_attention(m).is_ok());
}

// mla_attention over an e4m3 cache written by cache_write: equal to the double reference on
// e4m3 * scale, and close to the result on the bf16 latents it was quantized from.
TEST(MlaFp8, AttentionMatchesDequantizedReferenceAndBf16) {
  MOEX_TRACE_SEED();
  struct C { int64_t heads, rank, rope; int page; std::vector<int> lens, queries; DType out; };
  const C cases[] = {{16, 512, 64, 64, {300, 1, 65, 129}, {1, 1, 2, 1}, DType::kF32},
                     {4, 40, 8, 16, {33, 70}, {2, 1}, DType::kF32},
                     {16, 512, 64, 16, {200, 17}, {1, 2}, DType::kBF16}};
  for (const C& c : cases) {
    const int64_t dim = c.rank + c.rope, seqs = int64_t(c.lens.size());
    int64_t max_pages = 0, n = 0;
    for (int L : c.lens) max_pages = std::max<int64_t>(max_pages, (L + c.page - 1) / c.page);
    for (int q : c.queries) n += q;
    const int64_t pages = seqs * max_pages + 2, slots = pages * c.page;
    HostTensor bt(DType::kI32, {seqs, max_pages}), lens(DType::kI32, {seqs}), qs(DType::kI32, {seqs + 1});
    std::vector<int32_t> pool(static_cast<size_t>(pages));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng());
    qs.i32()[0] = 0;
    for (int64_t i = 0; i < seqs; ++i) {
      for (int64_t pg = 0; pg < max_pages; ++pg) bt.i32()[i * max_pages + pg] = pool[size_t(i * max_pages + pg)];
      lens.i32()[i] = c.lens[size_t(i)];
      qs.i32()[i + 1] = qs.i32()[i] + c.queries[size_t(i)];
    }
    // bf16 latents: the first rank features ~ U(-1, 1), the rope part 4x larger (k_pe is not
    // normalized); every token its own magnitude. Slots nobody owns stay NaN.
    HostTensor lat(DType::kBF16, {pages, c.page, dim});
    lat.fill_nan();
    std::uniform_real_distribution<double> u(-1, 1), mag(-1, 1);
    std::vector<int32_t> owned;
    for (int64_t i = 0; i < seqs; ++i)
      for (int64_t s = 0; s < c.lens[size_t(i)]; ++s) {
        const int64_t slot = int64_t(bt.i32()[i * max_pages + s / c.page]) * c.page + s % c.page;
        owned.push_back(int32_t(slot));
        const double m = std::pow(10.0, mag(rng()));
        for (int64_t e = 0; e < dim; ++e) lat.set(slot * dim + e, u(rng()) * m * (e < c.rank ? 1.0 : 4.0));
      }
    HostTensor f8(DType::kF8E4M3, {pages, c.page, dim}), scale(DType::kF32, {pages, c.page});
    f8.fill_nan();
    scale.fill_nan();
    HostTensor map(DType::kI32, {int64_t(owned.size())});
    std::copy(owned.begin(), owned.end(), map.i32());
    HostTensor gathered(DType::kBF16, {int64_t(owned.size()), dim});  // the owned rows, in write order
    for (size_t r = 0; r < owned.size(); ++r)
      for (int64_t e = 0; e < dim; ++e) gathered.set(int64_t(r) * dim + e, lat.get(int64_t(owned[r]) * dim + e));
    ops::CacheWriteParams w{gathered.t, map.t, f8.t.reshape({slots, dim})};
    w.dst_scale = scale.t.reshape({slots});
    ASSERT_TRUE(cpu(2)->cache_write(w).is_ok());

    HostTensor q = random_tensor(DType::kBF16, {n, c.heads, dim});
    const float sm = float(0.3 / std::sqrt(double(dim)));
    HostTensor out(c.out, {n, c.heads, c.rank}), lse(DType::kF32, {n, c.heads});
    HostTensor out_bf(c.out, {n, c.heads, c.rank});
    ops::PagedSeqs ps{bt.t, lens.t, qs.t, c.page};
    ops::MlaAttentionParams p{q.t, f8.t, ps, out.t, lse.t, int(c.rank), sm};
    p.cache_scale = scale.t;
    const Status st = cpu(2)->mla_attention(p);
    ASSERT_TRUE(st.is_ok()) << st.message();
    ops::MlaAttentionParams pb{q.t, lat.t, ps, out_bf.t, Tensor{}, int(c.rank), sm};
    ASSERT_TRUE(cpu(2)->mla_attention(pb).is_ok());

    // Double reference on the dequantized cache.
    std::vector<double> ref(static_cast<size_t>(n * c.heads * c.rank), 0.0), rlse;
    for (int64_t i = 0; i < seqs; ++i)
      for (int64_t t = qs.i32()[i]; t < qs.i32()[i + 1]; ++t) {
        const int64_t pos = c.lens[size_t(i)] - (qs.i32()[i + 1] - t);
        for (int64_t h = 0; h < c.heads; ++h) {
          std::vector<double> sc(static_cast<size_t>(pos + 1));
          double mx = -INFINITY;
          auto val = [&](int64_t s, int64_t e) {
            const int64_t slot = int64_t(bt.i32()[i * max_pages + s / c.page]) * c.page + s % c.page;
            return f8.get(slot * dim + e) * scale.get(slot);
          };
          for (int64_t s = 0; s <= pos; ++s) {
            double d = 0;
            for (int64_t e = 0; e < dim; ++e) d += q.get((t * c.heads + h) * dim + e) * val(s, e);
            sc[size_t(s)] = d * sm;
            mx = std::max(mx, sc[size_t(s)]);
          }
          double l = 0;
          for (double& v : sc) l += (v = std::exp(v - mx));
          for (int64_t s = 0; s <= pos; ++s)
            for (int64_t e = 0; e < c.rank; ++e) ref[size_t((t * c.heads + h) * c.rank + e)] += sc[size_t(s)] / l * val(s, e);
          rlse.push_back(mx + std::log(l));
        }
      }
    EXPECT_LT(rel_l2(out.values(), ref), tol_for(c.out, DType::kBF16)) << "rank " << c.rank;
    EXPECT_LT(rel_l2(lse.values(), rlse), 1e-5);
    const double vs_bf16 = rel_l2(out.values(), out_bf.values());
    std::printf("[ fp8 vs bf16 cache ] heads %lld rank %lld page %d out %s: rel L2 %.3e\n", (long long)c.heads,
                (long long)c.rank, c.page, std::string(dtype_name(c.out)).c_str(), vs_bf16);
    EXPECT_LT(vs_bf16, 0.1);  // e4m3 rounds each value by up to 2^-4 (rms ~3%)
    EXPECT_GT(vs_bf16, 0.0);  // the quantization did change the cache
  }
}

}  // namespace
}  // namespace moex::test
