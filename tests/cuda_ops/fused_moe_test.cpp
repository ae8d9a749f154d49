// CUDA vs CPU fused MoE over real model shapes (few tokens where big), expert maps, odd sizes,
// many rows per expert (the pipelined GEMM tiles), f32 output (f32 partials), and batch
// invariance: a token's output bits depend neither on the other tokens nor on the GEMM tile
// (MOEX_GEMM_TILE, MOEX_MOE_TILE_POLICY) nor on the block order (MOEX_MOE_RASTER).
#include <cmath>
#include <cstdio>
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

  // Random device inputs of n tokens, drawn in a fixed order from rng_.
  struct DeviceInputs {
    DeviceTensor x;    // [n, hidden] bf16
    DeviceTensor ids;  // [n, top_k] i32
    DeviceTensor wts;  // [n, top_k] f32
  };
  DeviceInputs device_inputs(const MoeShape& s, const MoeWeights& w, int64_t n) {
    HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
    HostTensor ids = make_ids(s, w, n);
    HostTensor wts = host_random(DType::kF32, {n, s.top_k}, rng_, 0.05f, 1.f);
    return {to_device(*gpu_, x), to_device(*gpu_, ids), to_device(*gpu_, wts)};
  }

  // The op on `in` (n tokens, bf16 out, no expert map) with the environment knob name=value set
  // for this call only; the output, copied to the host, into *out.
  void run_with_knob(const char* name, const char* value, const DeviceInputs& in, const MoeWeights& w, int64_t n,
                     int64_t hidden, HostTensor* out) {
    setenv(name, value, 1);
    DeviceTensor d = device_poisoned(*gpu_, DType::kBF16, {n, hidden});
    const Status st = gpu_->fused_moe(params(in.x.t, in.ids.t, in.wts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, d.t, false));
    unsetenv(name);
    MOEX_ASSERT_OK(st);
    *out = to_host(*gpu_, d);
  }

  void check(const MoeShape& s, const MoeWeights& w, int64_t n, DType out_dtype = DType::kBF16) {
    SCOPED_TRACE(std::string(s.name) + " n " + std::to_string(n) + " out " + std::string(dtype_name(out_dtype)) + " seed " +
                 std::to_string(seed_));
    const bool use_map = s.local < s.experts;
    HostTensor x = host_random(DType::kBF16, {n, s.hidden}, rng_);
    HostTensor ids = make_ids(s, w, n);
    HostTensor wts = host_random(DType::kF32, {n, s.top_k}, rng_, 0.05f, 1.f);
    HostTensor ref = host_tensor(out_dtype, {n, s.hidden});
    MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w.w13.t, w.w2.t, w.map.t, ref.t, use_map)));
    DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
    DeviceTensor dout = device_poisoned(*gpu_, out_dtype, {n, s.hidden});
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

// f32 output keeps f32 partials (moe_combine.cuh): both paths and the wgmma tiles.
TEST_F(FusedMoeTest, F32Output) {
  const MoeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128};
  const MoeWeights w = make_weights(s);
  for (const int64_t n : {3, 300}) check(s, w, n, DType::kF32);
  const MoeShape m{"8 experts, many rows", 8, 2, 1024, 352, 8};
  const MoeWeights wm = make_weights(m);
  check(m, wm, 700, DType::kF32);
}

TEST_F(FusedMoeTest, TokenBitsDoNotDependOnTile) {
  const MoeShape s{"8 experts, many rows", 8, 2, 1024, 352, 8};
  const MoeWeights w = make_weights(s);
  const int64_t n = 600;
  const DeviceInputs in = device_inputs(s, w, n);
  const DeviceTensor &dx = in.x, &dids = in.ids, &dwts = in.wts;
  unsetenv("MOEX_GEMM_TILE");
  DeviceTensor dall = device_poisoned(*gpu_, DType::kBF16, {n, s.hidden});
  MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t, dids.t, dwts.t, w.d_w13.t, w.d_w2.t, w.d_map.t, dall.t, false)));
  HostTensor all = to_host(*gpu_, dall);
  // Each forced tile (wgmma ones where the device has them), the old tile policy, block orders
  // with 1, 3 and 64 row tiles per raster group, a 128x256 tile on one GEMM only, and the three
  // wgmma mainloop variants.
  const std::pair<const char*, const char*> knobs[] = {
      {"MOEX_GEMM_TILE", "wide"},        {"MOEX_GEMM_TILE", "square"}, {"MOEX_GEMM_TILE", "short"},
      {"MOEX_GEMM_TILE", "wmma"},        {"MOEX_GEMM_TILE", "wgmma"},  {"MOEX_GEMM_TILE", "wgsq"},
      {"MOEX_MOE_TILE_POLICY", "1"},     {"MOEX_MOE_RASTER", "1"},     {"MOEX_MOE_RASTER", "3"},
      {"MOEX_MOE_RASTER", "64"},         {"MOEX_MOE_WG13", "wide"},    {"MOEX_MOE_WG2", "wide"},
      {"MOEX_MOE_WG_MODE", "0"},         {"MOEX_MOE_WG_MODE", "2"}};
  for (const auto& [name, value] : knobs) {
    HostTensor got;
    ASSERT_NO_FATAL_FAILURE(run_with_knob(name, value, in, w, n, s.hidden, &got));
    for (int64_t r = 0; r < n; ++r)
      ASSERT_TRUE(rows_bit_equal(got, r, all, r)) << "token " << r << " " << name << "=" << value;
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

// Few rows per expert (160 tokens of Qwen3-30B-A3B: ~10 per expert) run the wgmma tile with its
// empty half skipped; a token alone runs the decode path (mma.sync). Every wgmma variant and
// the old tile policy must give each token the bits of the decode path. Counts are printed
// before the check so that a failure says which variant differs.
TEST_F(FusedMoeTest, FewRowsPerExpertBitsMatchTheDecodePath) {
  const MoeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128};
  const MoeWeights w = make_weights(s);
  const int64_t n = 160;
  const DeviceInputs in = device_inputs(s, w, n);
  const DeviceTensor &dx = in.x, &dids = in.ids, &dwts = in.wts;
  std::vector<int64_t> probe;
  for (int i = 0; i < 12; ++i) probe.push_back(rng_.uniform_int(0, int(n - 1)));
  std::vector<HostTensor> alone;
  for (const int64_t t : probe) {
    DeviceTensor d = device_poisoned(*gpu_, DType::kBF16, {1, s.hidden});
    MOEX_ASSERT_OK(gpu_->fused_moe(params(dx.t.slice(0, t, t + 1), dids.t.slice(0, t, t + 1), dwts.t.slice(0, t, t + 1),
                                          w.d_w13.t, w.d_w2.t, w.d_map.t, d.t, false)));
    alone.push_back(to_host(*gpu_, d));
  }
  const std::pair<const char*, const char*> knobs[] = {{"MOEX_MOE_WG_MODE", "1"},
                                                        {"MOEX_MOE_WG_MODE", "0"},
                                                        {"MOEX_MOE_WG_MODE", "2"},
                                                        {"MOEX_MOE_TILE_POLICY", "1"}};
  std::vector<int> differing;
  for (const auto& [name, value] : knobs) {
    HostTensor all;
    ASSERT_NO_FATAL_FAILURE(run_with_knob(name, value, in, w, n, s.hidden, &all));
    int rows = 0;
    for (size_t i = 0; i < probe.size(); ++i) rows += rows_bit_equal(alone[i], 0, all, probe[i]) ? 0 : 1;
    std::printf("[ BITS     ] %s=%s: %d of %zu probed tokens differ from the decode path\n", name, value, rows,
                probe.size());
    differing.push_back(rows);
  }
  for (size_t k = 0; k < differing.size(); ++k)
    EXPECT_EQ(differing[k], 0) << knobs[k].first << "=" << knobs[k].second;
}

TEST_F(FusedMoeTest, TokenBitsDoNotDependOnBatch) {
  const MoeShape s{"qwen3-30b-a3b", 128, 8, 2048, 768, 128};
  const MoeWeights w = make_weights(s);
  const int64_t n = 300;
  const DeviceInputs in = device_inputs(s, w, n);
  const DeviceTensor &dx = in.x, &dids = in.ids, &dwts = in.wts;
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
