// The wgmma mainloop (kernels/gemm/wgmma_pipeline.cuh): CUDA vs CPU under each forced wgmma tile
// (dense and fused MoE), and its bits against the mma.sync mainloop (the K-order contract of
// docs/kernels/gemm.md: one fp32 accumulator per element, k16 chunks ascending). On a device
// without wgmma (not compute capability 9.0) the forced tiles fall back to mma.sync and these
// tests check that path instead.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;

constexpr const char* kWgTiles[] = {"wgmma", "wgsq"};

// Counts elements whose bits differ between two f32 [rows, n] tensors; `max_abs` gets the
// largest absolute difference.
int64_t count_bit_diffs(const HostTensor& a, const HostTensor& b, double* max_abs) {
  const int64_t total = int64_t(a.bytes.size() / 4);
  int64_t diffs = 0;
  *max_abs = 0.0;
  for (int64_t i = 0; i < total; ++i) {
    if (std::memcmp(a.bytes.data() + 4 * i, b.bytes.data() + 4 * i, 4) == 0) continue;
    ++diffs;
    *max_abs = std::max(*max_abs, std::fabs(double(a.get(i)) - double(b.get(i))));
  }
  return diffs;
}

class WgmmaTest : public CudaOpsTest {
 protected:
  // out = alpha * x @ w^T (+ out) on both backends under the current tile; x [b, m, k].
  void check(int64_t b, int64_t m, int64_t n, int64_t k, DType ot, float alpha, bool accumulate) {
    SCOPED_TRACE("b " + std::to_string(b) + " m " + std::to_string(m) + " n " + std::to_string(n) + " k " +
                 std::to_string(k) + " seed " + std::to_string(seed_));
    HostTensor x = host_random(DType::kBF16, {b, m, k}, rng_);
    HostTensor w = host_random(DType::kBF16, {b, n, k}, rng_, -0.1f, 0.1f);
    HostTensor init = host_random(ot, {b, m, n}, rng_);
    HostTensor ref = init;
    ref.t.data = ref.bytes.data();
    MOEX_ASSERT_OK(cpu_->matmul({x.t, w.t, ref.t, alpha, accumulate}));
    DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
    DeviceTensor dout = accumulate ? to_device(*gpu_, init) : device_poisoned(*gpu_, ot, {b, m, n});
    MOEX_ASSERT_OK(gpu_->matmul({dx.t, dw.t, dout.t, alpha, accumulate}));
    EXPECT_LT(rel_l2(to_host(*gpu_, dout), ref), kTolBf16);
  }

  // f32 out = x @ w^T on the GPU under MOEX_GEMM_TILE=tile.
  HostTensor run_tile(const char* tile, const DeviceTensor& dx, const DeviceTensor& dw, int64_t m, int64_t n) {
    ScopedEnv scoped("MOEX_GEMM_TILE", tile);
    DeviceTensor out = device_poisoned(*gpu_, DType::kF32, {m, n});
    const Status st = gpu_->matmul({dx.t, dw.t, out.t, 1.f, false});
    EXPECT_TRUE(st.is_ok()) << st.message();
    return to_host(*gpu_, out);
  }
};

// M, N and K off every tile size (K % 64 != 0: the zero-filled tail slice), batches, alpha,
// accumulate and f32 output.
TEST_F(WgmmaTest, DenseMatchesCpu) {
  for (const char* tile : kWgTiles) {
    SCOPED_TRACE(std::string("tile ") + tile);
    ScopedEnv scoped("MOEX_GEMM_TILE", tile);
    check(1, 333, 200, 1032, DType::kBF16, 1.f, false);
    check(1, 130, 328, 520, DType::kF32, -0.5f, true);
    check(3, 150, 130, 264, DType::kBF16, 1.f, false);
    check(1, 256, 512, 8, DType::kF32, 1.f, false);  // a single, mostly padded K slice
  }
}

// The bits question: every element of wgmma (both tiles) against mma.sync (the 128x256 and the
// 64x128 tiles) on random data, several shapes.
TEST_F(WgmmaTest, DenseBitsMatchMmaSync) {
  struct Shape { int64_t m, n, k; };
  for (const Shape s : {Shape{256, 256, 64}, Shape{300, 520, 1544}, Shape{129, 768, 2048}, Shape{512, 1024, 4096}}) {
    SCOPED_TRACE("m " + std::to_string(s.m) + " n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " seed " +
                 std::to_string(seed_));
    HostTensor x = host_random(DType::kBF16, {s.m, s.k}, rng_);
    HostTensor w = host_random(DType::kBF16, {s.n, s.k}, rng_, -0.1f, 0.1f);
    DeviceTensor dx = to_device(*gpu_, x), dw = to_device(*gpu_, w);
    const HostTensor mma_wide = run_tile("wide", dx, dw, s.m, s.n);
    const HostTensor mma_short = run_tile("short", dx, dw, s.m, s.n);
    double max_abs = 0.0;
    ASSERT_EQ(count_bit_diffs(mma_wide, mma_short, &max_abs), 0) << "mma.sync tiles disagree";
    for (const char* tile : kWgTiles) {
      const HostTensor wg = run_tile(tile, dx, dw, s.m, s.n);
      const int64_t diffs = count_bit_diffs(wg, mma_wide, &max_abs);
      std::printf("[wgmma bits] tile %s m %lld n %lld k %lld: %lld of %lld elements differ from mma.sync (max |d| %.3g)\n",
                  tile, static_cast<long long>(s.m), static_cast<long long>(s.n), static_cast<long long>(s.k),
                  static_cast<long long>(diffs), static_cast<long long>(s.m * s.n), max_abs);
      EXPECT_EQ(diffs, 0) << "tile " << tile;
    }
  }
}

// Fused MoE with many rows per expert: wgmma (forced, both tiles) vs the CPU, and its output bits
// against the mma.sync tiles.
TEST_F(WgmmaTest, FusedMoeMatchesCpuAndMmaSyncBits) {
  const int experts = 8, top_k = 2, hidden = 1024, inter = 352;
  const int64_t n = 900;
  HostTensor w13 = host_random(DType::kBF16, {experts, 2 * inter, hidden}, rng_, -0.05f, 0.05f);
  HostTensor w2 = host_random(DType::kBF16, {experts, hidden, inter}, rng_, -0.09f, 0.09f);
  HostTensor x = host_random(DType::kBF16, {n, hidden}, rng_);
  HostTensor ids = host_tensor(DType::kI32, {n, top_k});
  for (int64_t t = 0; t < n; ++t) {
    const int a = rng_.uniform_int(0, experts - 1);
    ids.i32(t * top_k) = a;
    ids.i32(t * top_k + 1) = (a + rng_.uniform_int(1, experts - 1)) % experts;  // distinct
  }
  HostTensor wts = host_random(DType::kF32, {n, top_k}, rng_, 0.05f, 1.f);
  auto params = [](const Tensor& px, const Tensor& pids, const Tensor& pw, const Tensor& p13, const Tensor& p2,
                   const Tensor& out) {
    ops::FusedMoeParams p;
    p.x = px; p.topk_ids = pids; p.topk_weights = pw; p.w13 = p13; p.w2 = p2; p.out = out;
    return p;
  };
  HostTensor ref = host_tensor(DType::kBF16, {n, hidden});
  MOEX_ASSERT_OK(cpu_->fused_moe(params(x.t, ids.t, wts.t, w13.t, w2.t, ref.t)));
  DeviceTensor dx = to_device(*gpu_, x), dids = to_device(*gpu_, ids), dwts = to_device(*gpu_, wts);
  DeviceTensor d13 = to_device(*gpu_, w13), d2 = to_device(*gpu_, w2);
  auto run = [&](const char* tile) {
    ScopedEnv scoped("MOEX_GEMM_TILE", tile);
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {n, hidden});
    const Status st = gpu_->fused_moe(params(dx.t, dids.t, dwts.t, d13.t, d2.t, out.t));
    EXPECT_TRUE(st.is_ok()) << st.message();
    return to_host(*gpu_, out);
  };
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const HostTensor mma = run("square");
  for (const char* tile : kWgTiles) {
    SCOPED_TRACE(std::string("tile ") + tile);
    const HostTensor wg = run(tile);
    EXPECT_LT(rel_l2(wg, ref), kTolBf16);
    int64_t rows_differ = 0;
    for (int64_t r = 0; r < n; ++r) rows_differ += rows_bit_equal(wg, r, mma, r) ? 0 : 1;
    std::printf("[wgmma bits] fused_moe tile %s: %lld of %lld token rows differ from mma.sync\n", tile,
                static_cast<long long>(rows_differ), static_cast<long long>(n));
    EXPECT_EQ(rows_differ, 0);
  }
}

}  // namespace
}  // namespace moex::test
