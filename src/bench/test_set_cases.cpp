// The fixed case lists of the operator test sets. Generated, not random at run time: the same
// list (names, shapes, seeds) on every machine, so a failing case can be re-run by name.
#include <algorithm>
#include <string>

#include "bench/host_tensor.h"
#include "bench/test_sets.h"

namespace moex::bench {
namespace {

std::string moe_name(const MoeTestCase& c) {
  std::string s = "E" + std::to_string(c.experts) + "k" + std::to_string(c.top_k) + "_H" + std::to_string(c.hidden) +
                  "_I" + std::to_string(c.inter) + "_n" + std::to_string(c.tokens) + "_" + routing_mode_name(c.routing);
  if (c.skew > 0) s += "_skew" + std::to_string(int(c.skew));
  if (c.shared) s += "_shared" + std::to_string(c.shared);
  if (c.weight_dtype != DType::kBF16) s += "_w" + std::string(dtype_name(c.weight_dtype));
  if (c.partial_expert_map) s += "_emap";
  return s;
}

std::string mla_name(const MlaTestCase& c, size_t index) {
  // Prefixed by the case's index: ragged lists can repeat their first lengths.
  std::string s = std::to_string(index) + "_h" + std::to_string(c.heads) + "_p" + std::to_string(c.page_size) + "_q" + std::to_string(c.q_len) + "_kv";
  for (size_t i = 0; i < c.kv_lens.size(); ++i) {
    if (i == 4) {
      s += "+" + std::to_string(c.kv_lens.size() - 4) + "more";
      break;
    }
    s += (i ? "," : "") + std::to_string(c.kv_lens[i]);
  }
  if (!c.want_lse) s += "_nolse";
  if (c.cache_dtype == DType::kF8E4M3) s += "_fp8";
  return s;
}

}  // namespace

std::vector<MoeTestCase> fused_moe_test_cases() {
  std::vector<MoeTestCase> out;
  struct Shape { int64_t e, k, h, i; };
  auto make = [](int64_t n, Shape s, RoutingMode mode = RoutingMode::kRandom, double skew = 0) {
    MoeTestCase c;
    c.tokens = n;
    c.experts = s.e;
    c.top_k = s.k;
    c.hidden = s.h;
    c.inter = s.i;
    c.routing = mode;
    c.skew = skew;
    return c;
  };
  auto add = [&](MoeTestCase c) {
    c.seed = 1000 + out.size();
    c.name = moe_name(c);
    out.push_back(c);
  };
  // Small and odd shapes (hidden or inter not a multiple of 64 or even of 16) that still route
  // like the real models: many experts, top-k 1..8.
  const Shape small[] = {{8, 2, 64, 32},  {16, 4, 128, 64}, {64, 6, 96, 48}, {128, 8, 64, 32},
                         {32, 1, 72, 40}, {60, 4, 136, 24}, {256, 8, 48, 16}};
  for (const Shape& s : small) {
    for (int64_t n : {1, 2, 5, 16, 37, 64, 128}) {
      add(make(n, s));
      add(make(n, s, RoutingMode::kRandom, 2));
      add(make(n, s, RoutingMode::kOneExpert));
      add(make(n, s, RoutingMode::kFewExperts));
    }
  }
  // top_k = E: every expert sees every token.
  for (Shape s : {Shape{4, 4, 64, 32}, Shape{6, 6, 32, 48}}) {
    for (int64_t n : {1, 3, 17, 64}) add(make(n, s, RoutingMode::kAll));
  }
  const Shape mid{16, 4, 128, 64};
  // fp32 and fp16 expert weights.
  for (DType w : {DType::kF32, DType::kF16}) {
    for (int64_t n : {1, 16, 37}) {
      MoeTestCase c = make(n, mid);
      c.weight_dtype = w;
      add(c);
    }
  }
  // Expert-parallel slice: half the experts live elsewhere (expert_map -1), their slots add nothing.
  for (int64_t n : {1, 9, 64}) {
    for (double skew : {0.0, 3.0}) {
      MoeTestCase c = make(n, mid, RoutingMode::kRandom, skew);
      c.partial_expert_map = true;
      add(c);
    }
  }
  // DeepSeek-style shared experts fused as extra always-on experts (weight 1).
  for (int64_t n : {1, 8, 33}) {
    MoeTestCase c = make(n, mid);
    c.shared = 2;
    add(c);
  }
  // Real model shapes at a few tokens: Qwen3-30B-A3B, DeepSeek-V2-Lite (+2 shared), Qwen3-235B-A22B.
  add(make(1, {128, 8, 2048, 768}));
  add(make(3, {128, 8, 2048, 768}, RoutingMode::kRandom, 1));
  MoeTestCase lite = make(1, {64, 6, 2048, 1408});
  lite.shared = 2;
  add(lite);
  add(make(1, {128, 8, 4096, 1536}));
  return out;
}

std::vector<MlaTestCase> mla_decode_test_cases() {
  std::vector<MlaTestCase> out;
  auto add = [&](std::vector<int32_t> lens, int64_t q, int64_t heads, int page, bool lse = true,
                 DType cache_dtype = DType::kBF16) {
    MlaTestCase c;
    c.cache_dtype = cache_dtype;
    for (int32_t& l : lens) l = std::max<int32_t>(l, int32_t(q));
    c.kv_lens = lens;
    c.q_len = q;
    c.heads = heads;
    c.page_size = page;
    c.want_lse = lse;
    c.seed = 5000 + out.size();
    c.name = mla_name(c, out.size());
    out.push_back(c);
  };
  Rng rng(42);
  // Lengths that land on page edges, plus occasional length-1 sequences.
  auto ragged = [&](int64_t batch, int page, int32_t max_len) {
    std::vector<int32_t> lens;
    for (int64_t b = 0; b < batch; ++b) {
      switch (rng.below(4)) {
        case 0: lens.push_back(1); break;
        case 1: lens.push_back(int32_t(page * (1 + rng.below(4)) + rng.below(3) - 1)); break;  // edge +-1
        default: lens.push_back(int32_t(1 + rng.below(max_len))); break;
      }
    }
    return lens;
  };
  for (int page : {16, 64}) {
    for (int64_t q : {1, 2}) {
      for (int32_t len : {1, 2, page - 1, page, page + 1, 2 * page - 1, 2 * page, 3 * page + 5, 257, 1000}) add({len}, q, 16, page);
      for (int64_t batch : {2, 3, 4, 5, 8, 13}) {
        for (int rep = 0; rep < 5; ++rep) add(ragged(batch, page, batch > 4 ? 300 : 700), q, 16, page, rep != 3);
      }
      for (int32_t len : {1, page, page + 1, 100}) add({len, int32_t(1 + rng.below(80))}, q, 128, page);
      for (int64_t heads : {1, 20, 64}) {
        for (int rep = 0; rep < 3; ++rep) add(ragged(3, page, 200), q, heads, page);
      }
    }
  }
  // The e4m3 latent cache (appended: the cases above keep their indices and seeds).
  constexpr DType kF8 = DType::kF8E4M3;
  for (int page : {16, 64}) {
    for (int64_t q : {1, 2}) {
      for (int32_t len : {1, page - 1, page + 1, 3 * page + 5, 1000}) add({len}, q, 16, page, true, kF8);
      for (int64_t batch : {3, 8}) {
        for (int rep = 0; rep < 3; ++rep) add(ragged(batch, page, 600), q, 16, page, rep != 1, kF8);
      }
      for (int64_t heads : {20, 64, 128}) add(ragged(3, page, 300), q, heads, page, true, kF8);
    }
  }
  return out;
}

std::vector<size_t> subset_indices(size_t total, int64_t subset) {
  std::vector<size_t> idx;
  if (subset <= 0 || size_t(subset) >= total) {
    for (size_t i = 0; i < total; ++i) idx.push_back(i);
    return idx;
  }
  for (int64_t i = 0; i < subset; ++i) idx.push_back(size_t(i) * total / size_t(subset));
  return idx;
}

}  // namespace moex::bench
