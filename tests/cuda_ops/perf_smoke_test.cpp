// Run-to-run determinism under repetition, with timings recorded on the side (CUDA events,
// warm-up first). Asserts that 20 timed repetitions reproduce the first run's bits; the timings
// land in the gtest JSON (RecordProperty) and on stdout for docs/kernels/*.md. Not a benchmark
// protocol (no L2 flush, one shape each): a smoke check that nothing is needlessly slow.
#if defined(MOEX_WITH_CUDA)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <set>

#include "backend/cuda/cuda_backend.h"
#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

class PerfSmokeTest : public CudaOpsTest {
 protected:
  // Fills a device tensor with random bf16 values in [lo, hi] (a 4 MiB random block, tiled).
  DeviceTensor device_random(DType dtype, std::initializer_list<int64_t> shape, float lo, float hi) {
    DeviceTensor d = device_poisoned(*gpu_, dtype, shape);
    const size_t bytes = d.t.nbytes();
    HostTensor block = host_random(dtype, {int64_t((size_t(4) << 20) / dtype_size(dtype))}, rng_, lo, hi);
    for (size_t off = 0; off < bytes; off += block.t.nbytes()) {
      const size_t n = std::min(block.t.nbytes(), bytes - off);
      EXPECT_TRUE(gpu_->copy_from_host(static_cast<char*>(d.t.data) + off, block.t.data, n).is_ok());
    }
    EXPECT_TRUE(gpu_->synchronize().is_ok());
    return d;
  }

  // Runs op once for reference bits, then warm-up + 20 timed runs; returns the mean in us and
  // checks the output bits after the timed runs equal the reference.
  double time_op(const std::function<Status()>& op, const DeviceTensor& out) {
    auto* cuda = dynamic_cast<CudaBackend*>(gpu_.get());
    EXPECT_NE(cuda, nullptr);
    EXPECT_TRUE(op().is_ok());
    HostTensor first = to_host(*gpu_, out);
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(op().is_ok());
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    constexpr int kReps = 20;
    cudaEventRecord(start, cuda->stream());
    for (int i = 0; i < kReps; ++i) EXPECT_TRUE(op().is_ok());
    cudaEventRecord(stop, cuda->stream());
    EXPECT_TRUE(gpu_->synchronize().is_ok());
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    HostTensor last = to_host(*gpu_, out);
    EXPECT_EQ(std::memcmp(first.bytes.data(), last.bytes.data(), first.bytes.size()), 0) << "run-to-run bits differ";
    return 1000.0 * ms / kReps;
  }

  void report(const std::string& name, double us, double bytes, double flops) {
    char line[256];
    std::snprintf(line, sizeof line, "%s: %.1f us, %.0f GB/s, %.1f TFLOP/s", name.c_str(), us, bytes / us / 1e3,
                  flops / us / 1e6);
    std::printf("[ PERF     ] %s\n", line);
    RecordProperty(name, line);
  }
};

TEST_F(PerfSmokeTest, FusedMoeQwen3Shape) {
  const int64_t E = 128, k = 8, H = 2048, I = 768;
  DeviceTensor w13 = device_random(DType::kBF16, {E, 2 * I, H}, -0.03f, 0.03f);
  DeviceTensor w2 = device_random(DType::kBF16, {E, H, I}, -0.05f, 0.05f);
  for (const int64_t n : {1, 16, 128, 1024, 4096}) {
    HostTensor ids = host_tensor(DType::kI32, {n, k});
    std::set<int32_t> hit;
    for (int64_t t = 0; t < n; ++t) {
      std::set<int32_t> used;
      for (int64_t j = 0; j < k; ++j) {
        int32_t id;
        do id = rng_.uniform_int(0, int(E - 1)); while (used.count(id));
        used.insert(id);
        hit.insert(id);
        ids.i32(t * k + j) = id;
      }
    }
    DeviceTensor x = device_random(DType::kBF16, {n, H}, -1.f, 1.f);
    DeviceTensor d_ids = to_device(*gpu_, ids);
    DeviceTensor wts = to_device(*gpu_, host_random(DType::kF32, {n, k}, rng_, 0.05f, 1.f));
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {n, H});
    ops::FusedMoeParams p;
    p.x = x.t; p.topk_ids = d_ids.t; p.topk_weights = wts.t; p.w13 = w13.t; p.w2 = w2.t; p.out = out.t;
    const double us = time_op([&] { return gpu_->fused_moe(p); }, out);
    const double bytes = double(hit.size()) * 3.0 * H * I * 2.0;
    report("fused_moe qwen3-30b-a3b n=" + std::to_string(n), us, bytes, 2.0 * 3.0 * double(n * k) * H * I);
  }
}

TEST_F(PerfSmokeTest, DenseMatmul) {
  for (const int64_t m : {1, 64, 4096}) {
    const int64_t n = 4096, kk = 4096;
    DeviceTensor x = device_random(DType::kBF16, {m, kk}, -1.f, 1.f);
    DeviceTensor w = device_random(DType::kBF16, {n, kk}, -0.02f, 0.02f);
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {m, n});
    const double us = time_op([&] { return gpu_->matmul({x.t, w.t, out.t, 1.f, false}); }, out);
    report("matmul m=" + std::to_string(m) + " n=4096 k=4096", us, 2.0 * double(n * kk + m * kk + m * n),
           2.0 * double(m) * n * kk);
  }
}

TEST_F(PerfSmokeTest, AttentionDecode) {
  const int64_t batch = 32, ctx = 4096, page = 64, pages_per_seq = ctx / page;
  HostTensor bt = host_tensor(DType::kI32, {batch, pages_per_seq});
  for (int64_t i = 0; i < batch * pages_per_seq; ++i) bt.i32(i) = int32_t(i);
  std::vector<int32_t> lens(static_cast<size_t>(batch), static_cast<int32_t>(ctx)), starts(static_cast<size_t>(batch) + 1);
  for (int64_t i = 0; i <= batch; ++i) starts[size_t(i)] = int32_t(i);
  DeviceTensor d_bt = to_device(*gpu_, bt), d_lens = to_device(*gpu_, host_i32(lens)), d_starts = to_device(*gpu_, host_i32(starts));
  ops::PagedSeqs seqs;
  seqs.block_table = d_bt.t; seqs.seq_lens = d_lens.t; seqs.query_start = d_starts.t; seqs.page_size = int(page);
  {
    const int64_t qh = 32, kvh = 4, d = 128;
    DeviceTensor q = device_random(DType::kBF16, {batch, qh, d}, -1.f, 1.f);
    DeviceTensor kc = device_random(DType::kBF16, {batch * pages_per_seq, page, kvh, d}, -1.f, 1.f);
    DeviceTensor vc = device_random(DType::kBF16, {batch * pages_per_seq, page, kvh, d}, -1.f, 1.f);
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {batch, qh, d});
    ops::GqaAttentionParams p;
    p.q = q.t; p.k_cache = kc.t; p.v_cache = vc.t; p.out = out.t; p.seqs = seqs; p.scale = 0.088f;
    const double us = time_op([&] { return gpu_->gqa_attention(p); }, out);
    report("gqa decode qwen3 32/4 d128 batch 32 ctx 4096", us, double(batch * ctx * kvh * d * 2 * 2),
           4.0 * double(batch * ctx * qh * d));
  }
  {
    const int64_t heads = 128, dk = 576;
    DeviceTensor q = device_random(DType::kBF16, {batch, heads, dk}, -1.f, 1.f);
    DeviceTensor cache = device_random(DType::kBF16, {batch * pages_per_seq, page, dk}, -1.f, 1.f);
    DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {batch, heads, 512});
    ops::MlaAttentionParams p;
    p.q = q.t; p.cache = cache.t; p.out = out.t; p.seqs = seqs; p.scale = 0.072f;
    const double us = time_op([&] { return gpu_->mla_attention(p); }, out);
    report("mla decode 128 heads batch 32 ctx 4096", us, double(batch * ctx * dk * 2),
           2.0 * double(batch * ctx * heads) * (dk + 512));
  }
}

}  // namespace
}  // namespace moex::test
#endif  // MOEX_WITH_CUDA
