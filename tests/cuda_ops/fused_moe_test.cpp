// CUDA vs CPU fused MoE over real model shapes (few tokens where big), expert maps, odd sizes,
// many rows per expert (the pipelined GEMM tiles), and batch invariance: a token's output bits
// depend neither on the other tokens nor on the GEMM tile chosen (MOEX_GEMM_TILE).
#include <cmath>
#include <cstdlib>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;

struct MoeShape {
  const char* name;
  int experts, top_k, hidden, inter, local;  // local < experts: an expert map with -1 entries
};

struct MoeWeights {
  HostTensor w13, w2, map;
  std::vector<int32_t> local_ids;  // global ids that are local
  DeviceTensor d_w13, d_w2, d_map;
};

class FusedMoeTest : public CudaOpsTest {
 protected:
  MoeWeights make_weights(const MoeShape& s) {
    MoeWeights w;
    w.w13 = host_random(DType::kBF16, {s.local, 2 * s.inter, s.hidden}, rng_, -std::sqrt(3.f / s.hidden), std::sqrt(3.f / s.hidden));
    w.w2 = host_random(DType::kBF16, {s.local, s.hidden, s.inter}, rng_, -std::sqrt(3.f / s.inter), std::sqrt(3.f / s.inter));
    std::vector<int32_t> perm(size_t(s.experts));
    for (int i = 0; i < s.experts; ++i) perm[size_t(i)] = i;
    for (int i = s.experts - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng_.uniform_int(0, i))]);
    std::vector<int32_t> map(size_t(s.experts), -1);
    for (int l = 0; l < s.local; ++l) {
      map[size_t(perm[size_t(l)])] = l;
      w.local_ids.push_back(perm[size_t(l)]);
    }
    w.map = host_i32(map);
    w.d_w13 = to_device(*gpu_, w.w13);
    w.d_w2 = to_device(*gpu_, w.w2);
    w.d_map = to_device(*gpu_, w.map);
    return w;
  }

  // Distinct experts per token, mostly local ones when an expert map is used.
  HostTensor make_ids(const MoeShape& s, const MoeWeights& w, int64_t n) {
    HostTensor ids = host_tensor(DType::kI32, {n, s.top_k});
    for (int64_t t = 0; t < n; ++t) {
      for (int j = 0; j < s.top_k; ++j) {
        int32_t id;
        bool dup;
        do {
          id = (s.local < s.experts && rng_.uniform_int(0, 3) != 0) ? w.local_ids[size_t(rng_.uniform_int(0, s.local - 1))]
                                                                   : rng_.uniform_int(0, s.experts - 1);
          dup = false;
          for (int i = 0; i < j; ++i) dup |= ids.i32(t * s.top_k + i) == id;
        } while (dup);
        ids.i32(t * s.top_k + j) = id;
      }
    }
    return ids;
  }

  ops::FusedMoeParams params(const Tensor& x, const Tensor& ids, const Tensor& wts, const Tensor& w13, const Tensor& w2,
                             const Tensor& map, const Tensor& out, bool use_map) {
    ops::FusedMoeParams p;
    p.x = x; p.topk_ids = ids; p.topk_weights = wts; p.w13 = w13; p.w2 = w2;
    p.expert_map = use_map ? map : Tensor{};
    p.out = out;
    return p;
  }

  void check(const MoeShape& s, const MoeWeights& w, int64_t n) {
    SCOPED_TRACE(std::string(s.name) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
    const bool use_map = s.local < s.experts;
    HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
    HostTensor ids = make_ids(s, w, n);
    HostTensor wts = host_random(DType::kF32, {n, s.top_k}, rng_, 0.05f, 1.f);
    HostTensor ref = host_tensor(DType::kBF16, {n, s.hidden});
    MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w.w13.t, w.w2.t, w.map.t, ref.t, use_map)));
    DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
    DeviceTensor dout = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, dout.t, use_map)));
    EXPECT_LT(rel_l2(to_host(*gpu_, dout), ref), kTolBf16);
  }
};

TEST_F(FusedMoeTest, Qwen3_30B_A3B) {
  const MoeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {1, 5, 64, 300}) check(s, w, n);
}

TEST_F(FusedMoeTest, DeepSeekV3WithExpertMap) {
  const MoeShape s{"deepseek-v3 (8 of 256 local)", 256, 8, 7168, 2048, 8};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {1, 3}) check(s, w, n);
}

TEST_F(FusedMoeTest, DeepSeekV2Lite) {
  const MoeShape s{"deepseek-v2-lite (32 of 64 local)", 64, 6, 2048, 1408, 32};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {2, 40}) check(s, w, n);
}

TEST_F(FusedMoeTest, MixtralFewTokens) {
  const MoeShape s{"mixtral-8x7b (2 of 8 local)", 8, 2, 4096, 14336, 2};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {1, 4}) check(s, w, n);
}

TEST_F(FusedMoeTest, OddSizesUnalignedRows) {
  const MoeShape s{"odd", 10, 3, 203, 97, 10};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {1, 37, 129}) check(s, w, n);
}

// Hundreds of rows per expert: the pipelined tiles (64 / 128 rows, 128 / 256 columns), with an
// intermediate size off every column block and an expert map, under each forced tile.
TEST_F(FusedMoeTest, ManyRowsPerExpertPipelinedTiles) {
  const MoeShape all_local{"8 experts, many rows", 8, 2, 1024, 352, 8};
  const MoeShape mapped{"16 experts, 6 local", 16, 2, 512, 200, 6};
  const MoeWeights w1 = make_weights(all_local), w2 = make_weights(mapped);
  for (const char* tile : {"wide", "square", "short", static_cast<const char*>(nullptr)}) {
    SCOPED_TRACE(std::string("tile ") + (tile ? tile : "auto"));
    if (tile != nullptr) setenv("MOEX_GEMM_TILE", tile, 1);
    check(all_local, w1, 700);
    check(mapped, w2, 900);
    unsetenv("MOEX_GEMM_TILE");
  }
}

TEST_F(FusedMoeTest, TokenBitsDoNotDependOnTile) {
  const MoeShape s{"8 experts, many rows", 8, 2, 1024, 352, 8};
  const MoeWeights w = make_weights(s);
  const int64_t n = 600;
  HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
  HostTensor ids = make_ids(s, w, n);
  HostTensor wts = host_random(DType::kF32, {n, s.top_k}, rng_, 0.05f, 1.f);
  DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
  unsetenv("MOEX_GEMM_TILE");
  DeviceTensor dall = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, dall.t, false)));
  HostTensor all = to_host(*gpu_, dall);
  for (const char* tile : {"wide", "square", "short"}) {
    setenv("MOEX_GEMM_TILE", tile, 1);
    DeviceTensor d = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
    const Status st = gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, d.t, false));
    unsetenv("MOEX_GEMM_TILE");
    MOEX_ASSERT_OK(st);
    HostTensor got = to_host(*gpu_, d);
    for (int64_t r = 0; r < n; ++r) ASSERT_TRUE(rows_bit_equal(got, r, all, r)) << "token " << r << " tile " << tile;
  }
  for (const int64_t batch : {1, 50, 200, 300}) {  // 16-row WMMA, 64-row and 128-row tiles by count
    const int64_t t0 = rng_.uniform_int(0, int(n - batch));
    DeviceTensor dpart = device_poisoned(*gpu_, DType::kBF16, {batch, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t.slice(0, t0, t0 + batch), dids.t.slice(0, t0, t0 + batch),
                                          dwts.t.slice(0, t0, t0 + batch), w.d_w13.t, w.d_w2.t, w.d_map.t, dpart.t, false)));
    HostTensor part = to_host(*gpu_, dpart);
    for (int64_t r = 0; r < batch; ++r)
      ASSERT_TRUE(rows_bit_equal(part, r, all, t0 + r)) << "token " << t0 + r << " in a batch of " << batch;
  }
}

TEST_F(FusedMoeTest, TokenBitsDoNotDependOnBatch) {
  const MoeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128};
  const MoeWeights w = make_weights(s);
  const int64_t n = 300;
  HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
  HostTensor ids = make_ids(s, w, n);
  HostTensor wts = host_random(DType::kF32, {n, s.top_k}, rng_, 0.05f, 1.f);
  DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
  DeviceTensor dall = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, dall.t, false)));
  HostTensor all = to_host(*gpu_, dall);
  for (const int64_t batch : {1, 3, 16, 100}) {
    const int64_t t0 = rng_.uniform_int(0, int(n - batch));
    DeviceTensor dpart = device_poisoned(*gpu_, DType::kBF16, {batch, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t.slice(0, t0, t0 + batch), dids.t.slice(0, t0, t0 + batch),
                                          dwts.t.slice(0, t0, t0 + batch), w.d_w13.t, w.d_w2.t, w.d_map.t, dpart.t, false)));
    HostTensor part = to_host(*gpu_, dpart);
    for (int64_t r = 0; r < batch; ++r)
      ASSERT_TRUE(rows_bit_equal(part, r, all, t0 + r)) << "token " << t0 + r << " in a batch of " << batch;
  }
}

}  // namespace
}  // namespace moex::test
