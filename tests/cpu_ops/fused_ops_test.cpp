// The fused small ops (ops/fused.h) on the CPU reference: bit for bit their defining op
// sequence, close to a double-precision reference, and one-line errors on bad shapes.
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_ops/ops_test_util.h"

namespace moex::test {
namespace {

HostTensor copy_of(const HostTensor& h) {
  HostTensor c(h.t.dtype, std::vector<int64_t>(h.t.shape, h.t.shape + h.t.ndim));
  std::memcpy(c.bytes.data(), h.bytes.data(), h.bytes.size());
  return c;
}

TEST(AddRmsNorm, EqualsAddThenRmsNormAndTheDoubleReference) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  for (DType t : {DType::kF32, DType::kBF16})
    for (int64_t dim : {1, 37, 128, 2048}) {
      const int64_t rows = random_int(1, 9);
      HostTensor res = random_tensor(t, {rows, dim}, -2, 2), br = random_tensor(t, {rows, dim}, -2, 2);
      HostTensor w = random_tensor(DType::kBF16, {dim}, 0.5, 1.5);
      HostTensor res2 = copy_of(res), out(t, {rows, dim}), out2(t, {rows, dim});
      out.fill_nan();
      out2.fill_nan();
      ASSERT_TRUE(be->add_rms_norm({.residual = res.t, .branch = br.t, .weight = w.t, .out = out.t, .eps = 1e-6f}).is_ok());
      ASSERT_TRUE(be->add({.a = res2.t, .b = br.t, .out = res2.t}).is_ok());
      ASSERT_TRUE(be->rms_norm({.x = res2.t, .weight = w.t, .out = out2.t, .eps = 1e-6f}).is_ok());
      EXPECT_TRUE(same_bytes(res.bytes.data(), res2.bytes.data(), res.bytes.size())) << "dim " << dim;
      EXPECT_TRUE(same_bytes(out.bytes.data(), out2.bytes.data(), out.bytes.size())) << "dim " << dim;
      // Against double precision from the rounded sum (the sum itself is rounded to t).
      std::vector<double> ref, got = out.values();
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += res.get(r * dim + i) * res.get(r * dim + i);
        const double inv = 1.0 / std::sqrt(ss / double(dim) + 1e-6);
        for (int64_t i = 0; i < dim; ++i) ref.push_back(res.get(r * dim + i) * inv * w.get(i));
      }
      EXPECT_LT(rel_l2(got, ref), tol_for(t)) << "dim " << dim;
    }
}

TEST(AddRmsNorm, BadShapesAreOneLineErrors) {
  auto be = cpu(1);
  HostTensor res(DType::kF32, {3, 8}), br(DType::kF32, {3, 7}), w(DType::kF32, {8}), out(DType::kF32, {3, 8});
  Status s = be->add_rms_norm({.residual = res.t, .branch = br.t, .weight = w.t, .out = out.t});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("branch"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos);
  HostTensor w7(DType::kF32, {7});
  s = be->add_rms_norm({.residual = res.t, .branch = res.t, .weight = w7.t, .out = out.t});
  EXPECT_NE(s.message().find("weight"), std::string::npos) << s.message();
}

// A q | k | v projection row buffer and the views of it the model passes.
struct Qkv {
  int64_t n, qh, kvh, d, width;
  HostTensor buf;  // [n, width] with width > (qh + 2 kvh) d: rows wider than the views
  Tensor q, k, v;
  Qkv(DType t, int64_t n_, int64_t qh_, int64_t kvh_, int64_t d_)
      : n(n_), qh(qh_), kvh(kvh_), d(d_), width((qh_ + 2 * kvh_) * d_ + 3), buf(random_tensor(t, {n_, width}, -2, 2)) {
    auto view = [&](int64_t col, int64_t heads) {
      Tensor x = Tensor::make(static_cast<char*>(buf.t.data) + col * int64_t(dtype_size(t)), t, {n, heads, d});
      x.stride[0] = width;
      return x;
    };
    q = view(1, qh);
    k = view(1 + qh * d, kvh);
    v = view(1 + (qh + kvh) * d, kvh);
  }
  Tensor rebased(const Tensor& x, const HostTensor& other) const {
    Tensor r = x;
    r.data = static_cast<char*>(other.t.data) + (static_cast<char*>(x.data) - static_cast<char*>(buf.t.data));
    return r;
  }
};

TEST(QkvRopeCache, EqualsTheOpSequenceWithAndWithoutNorms) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  struct Case { int64_t qh, kvh, d, rot; bool norm, interleaved; DType t; };
  for (const Case c : {Case{32, 4, 128, 128, true, false, DType::kBF16}, Case{8, 8, 64, 64, false, false, DType::kF32},
                       Case{6, 2, 40, 24, true, true, DType::kF32}, Case{3, 1, 18, 10, false, true, DType::kBF16}}) {
    const int64_t n = random_int(1, 7), slots = 3 * n + 5;
    SCOPED_TRACE("qh " + std::to_string(c.qh) + " d " + std::to_string(c.d) + " n " + std::to_string(n));
    Qkv a(c.t, n, c.qh, c.kvh, c.d);
    HostTensor b_buf = copy_of(a.buf);
    HostTensor qn = random_tensor(DType::kBF16, {c.d}, 0.5, 1.5), kn = random_tensor(DType::kBF16, {c.d}, 0.5, 1.5);
    HostTensor inv_freq(DType::kF32, {c.rot / 2});
    for (int64_t i = 0; i < c.rot / 2; ++i) inv_freq.set(i, std::pow(10000.0, -2.0 * double(i) / double(c.rot)));
    HostTensor positions(DType::kI32, {n}), slot_mapping(DType::kI32, {n});
    for (int64_t i = 0; i < n; ++i) {
      positions.i32()[i] = random_int(0, 5000);
      slot_mapping.i32()[i] = int32_t(3 * i + 1);  // scattered slots
    }
    HostTensor kc(c.t, {slots, c.kvh * c.d}), vc(c.t, {slots, c.kvh * c.d});
    kc.fill_nan();
    vc.fill_nan();
    HostTensor kc2 = copy_of(kc), vc2 = copy_of(vc);
    ops::QkvRopeCacheParams p{.q = a.q, .k = a.k, .v = a.v, .q_norm = c.norm ? qn.t : Tensor{},
                              .k_norm = c.norm ? kn.t : Tensor{}, .eps = 1e-6f, .positions = positions.t,
                              .inv_freq = inv_freq.t, .attn_scale = 1.1f, .interleaved = c.interleaved,
                              .slot_mapping = slot_mapping.t, .k_cache = kc.t, .v_cache = vc.t};
    ASSERT_TRUE(be->qkv_rope_cache(p).is_ok());
    // The sequence on a copy.
    const Tensor q2 = a.rebased(a.q, b_buf), k2 = a.rebased(a.k, b_buf), v2 = a.rebased(a.v, b_buf);
    if (c.norm) {
      ASSERT_TRUE(be->rms_norm({.x = q2, .weight = qn.t, .out = q2, .eps = 1e-6f}).is_ok());
      ASSERT_TRUE(be->rms_norm({.x = k2, .weight = kn.t, .out = k2, .eps = 1e-6f}).is_ok());
    }
    for (const Tensor& x : {q2, k2})
      ASSERT_TRUE(be->rope({.x = x, .positions = positions.t, .inv_freq = inv_freq.t, .attn_scale = 1.1f,
                            .interleaved = c.interleaved}).is_ok());
    for (const auto& [src, dst] : {std::pair{k2, kc2.t}, std::pair{v2, vc2.t}}) {
      Tensor s2 = Tensor::make(src.data, c.t, {n, c.kvh * c.d});
      s2.stride[0] = a.width;
      ASSERT_TRUE(be->cache_write({.src = s2, .slot_mapping = slot_mapping.t, .dst = dst}).is_ok());
    }
    EXPECT_TRUE(same_bytes(a.buf.bytes.data(), b_buf.bytes.data(), a.buf.bytes.size()));
    EXPECT_TRUE(same_bytes(kc.bytes.data(), kc2.bytes.data(), kc.bytes.size()));
    EXPECT_TRUE(same_bytes(vc.bytes.data(), vc2.bytes.data(), vc.bytes.size()));
    // Slots no token maps to stay poisoned; the written ones are finite.
    EXPECT_TRUE(std::isnan(kc.get(0)));
    EXPECT_TRUE(std::isfinite(kc.get(1 * c.kvh * c.d)));
    EXPECT_TRUE(std::isnan(vc.get((slots - 1) * c.kvh * c.d)));
  }
}

TEST(QkvRopeCache, BadShapesAreOneLineErrors) {
  auto be = cpu(1);
  Qkv a(DType::kF32, 2, 4, 2, 16);
  HostTensor inv_freq(DType::kF32, {8}), positions(DType::kI32, {2}), slots(DType::kI32, {2});
  HostTensor kc(DType::kF32, {8, 32}), vc(DType::kF32, {8, 32}), qn(DType::kF32, {16}), bad_cache(DType::kF32, {8, 31});
  ops::QkvRopeCacheParams p{.q = a.q, .k = a.k, .v = a.v, .q_norm = {}, .k_norm = {}, .eps = 1e-6f,
                            .positions = positions.t, .inv_freq = inv_freq.t, .attn_scale = 1.f, .interleaved = false,
                            .slot_mapping = slots.t, .k_cache = kc.t, .v_cache = vc.t};
  auto expect_error = [&](const ops::QkvRopeCacheParams& bad, const char* names) {
    const Status s = be->qkv_rope_cache(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(names), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find('\n'), std::string::npos);
  };
  ops::QkvRopeCacheParams bad = p;
  bad.q_norm = qn.t;  // k_norm missing
  expect_error(bad, "k_norm");
  bad = p;
  bad.k_cache = bad_cache.t;
  expect_error(bad, "k_cache");
  bad = p;
  bad.v = a.q;  // 4 heads, k has 2
  expect_error(bad, "v ");
  HostTensor long_freq(DType::kF32, {9});
  bad = p;
  bad.inv_freq = long_freq.t;
  expect_error(bad, "inv_freq");
  HostTensor pos3(DType::kI32, {3});
  bad = p;
  bad.positions = pos3.t;
  expect_error(bad, "positions");
  EXPECT_TRUE(be->qkv_rope_cache(p).is_ok());  // the valid params (zero positions and slots) pass
}

TEST(MlaRopeCache, EqualsTheOpSequence) {
  MOEX_TRACE_SEED();
  auto be = cpu(2);
  struct Case { int64_t heads, rank, rope; bool interleaved, copy; DType t; };
  for (const Case c : {Case{16, 512, 64, true, true, DType::kBF16}, Case{3, 40, 8, false, false, DType::kF32},
                       Case{5, 17, 6, true, true, DType::kF32}}) {
    const int64_t n = random_int(1, 6), latent = c.rank + c.rope, slots = 2 * n + 3, qk = 7 + c.rope;
    SCOPED_TRACE("heads " + std::to_string(c.heads) + " rank " + std::to_string(c.rank) + " n " + std::to_string(n));
    HostTensor kv = random_tensor(c.t, {n, latent + 2}, -2, 2), q = random_tensor(c.t, {n, c.heads, qk}, -2, 2);
    HostTensor kv2 = copy_of(kv), q2 = copy_of(q);
    HostTensor w = random_tensor(DType::kBF16, {c.rank}, 0.5, 1.5), inv_freq(DType::kF32, {c.rope / 2});
    for (int64_t i = 0; i < c.rope / 2; ++i) inv_freq.set(i, std::pow(10000.0, -2.0 * double(i) / double(c.rope)));
    HostTensor positions(DType::kI32, {n}), slot_mapping(DType::kI32, {n});
    for (int64_t i = 0; i < n; ++i) {
      positions.i32()[i] = random_int(0, 3000);
      slot_mapping.i32()[i] = int32_t(2 * i + 1);
    }
    HostTensor cache(c.t, {slots, latent}), cache2(c.t, {slots, latent}), out(c.t, {n, c.heads, c.rope}), out2(c.t, {n, c.heads, c.rope});
    for (HostTensor* h : {&cache, &cache2, &out, &out2}) h->fill_nan();
    auto views = [&](HostTensor& kvh, HostTensor& qh) {
      Tensor kv_a = kvh.t;  // [n, latent] of rows latent + 2 wide
      kv_a.shape[1] = latent;
      Tensor q_rope = qh.t;  // [n, heads, rope] at column 7 of each head
      q_rope.data = static_cast<char*>(qh.t.data) + 7 * int64_t(dtype_size(c.t));
      q_rope.shape[2] = c.rope;
      return std::pair{kv_a, q_rope};
    };
    const auto [kv_a, q_rope] = views(kv, q);
    ASSERT_TRUE(be->mla_rope_cache({.kv_a = kv_a, .kv_norm = w.t, .eps = 1e-6f, .q_rope = q_rope,
                                    .q_rope_out = c.copy ? out.t : Tensor{}, .positions = positions.t,
                                    .inv_freq = inv_freq.t, .attn_scale = 1.05f, .interleaved = c.interleaved,
                                    .slot_mapping = slot_mapping.t, .cache = cache.t}).is_ok());
    const auto [kv_b, q_b] = views(kv2, q2);
    Tensor latent_b = kv_b;
    latent_b.shape[1] = c.rank;
    Tensor key_b = Tensor::make(static_cast<char*>(kv_b.data) + c.rank * int64_t(dtype_size(c.t)), c.t, {n, 1, c.rope});
    key_b.stride[0] = kv_b.stride[0];
    ASSERT_TRUE(be->rms_norm({.x = latent_b, .weight = w.t, .out = latent_b, .eps = 1e-6f}).is_ok());
    for (const Tensor& x : {key_b, q_b})
      ASSERT_TRUE(be->rope({.x = x, .positions = positions.t, .inv_freq = inv_freq.t, .attn_scale = 1.05f,
                            .interleaved = c.interleaved}).is_ok());
    ASSERT_TRUE(be->cache_write({.src = kv_b, .slot_mapping = slot_mapping.t, .dst = cache2.t}).is_ok());
    if (c.copy) {
      ASSERT_TRUE(be->copy({.src = q_b, .dst = out2.t}).is_ok());
    }
    EXPECT_TRUE(same_bytes(kv.bytes.data(), kv2.bytes.data(), kv.bytes.size()));
    EXPECT_TRUE(same_bytes(q.bytes.data(), q2.bytes.data(), q.bytes.size()));
    EXPECT_TRUE(same_bytes(cache.bytes.data(), cache2.bytes.data(), cache.bytes.size()));
    EXPECT_TRUE(same_bytes(out.bytes.data(), out2.bytes.data(), out.bytes.size()));
    EXPECT_TRUE(std::isnan(cache.get(0)));
    EXPECT_EQ(std::isnan(out.get(0)), !c.copy);
  }
  // Bad shapes: one line naming the tensor.
  HostTensor kv(DType::kF32, {2, 24}), w(DType::kF32, {15}), q(DType::kF32, {2, 3, 8}), inv_freq(DType::kF32, {4});
  HostTensor positions(DType::kI32, {2}), slot_mapping(DType::kI32, {2}), cache(DType::kF32, {4, 24});
  const Status s = be->mla_rope_cache({.kv_a = kv.t, .kv_norm = w.t, .eps = 1e-6f, .q_rope = q.t, .q_rope_out = {},
                                       .positions = positions.t, .inv_freq = inv_freq.t, .attn_scale = 1.f,
                                       .interleaved = true, .slot_mapping = slot_mapping.t, .cache = cache.t});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("kv_norm"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace moex::test
