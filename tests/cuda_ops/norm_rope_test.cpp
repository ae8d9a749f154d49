// CUDA vs CPU: rms_norm (strided rows, in place, per-head views) and rope (both styles).
#include <cmath>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;
constexpr double kTolF32 = 1e-5;

class NormRopeTest : public CudaOpsTest {};

TEST_F(NormRopeTest, RmsNormStridedRowsInPlace) {
  struct Case { int64_t dim; DType dtype; };
  for (const Case c : {Case{2048, DType::kBF16}, Case{7168, DType::kBF16}, Case{37, DType::kBF16}, Case{512, DType::kF32},
                       Case{4096, DType::kF32}}) {
    const int64_t rows = rng_.uniform_int(1, 70);
    SCOPED_TRACE("dim " + std::to_string(c.dim) + " rows " + std::to_string(rows) + " seed " + std::to_string(seed_));
    HostTensor full = host_random(c.dtype, {rows, c.dim + 16}, rng_, -3.f, 3.f);  // rows of a wider buffer
    HostTensor w = host_random(DType::kBF16, {c.dim}, rng_, 0.5f, 1.5f);
    Tensor x = full.t.slice(1, 5, 5 + c.dim);
    HostTensor ref = host_tensor(c.dtype, {rows, c.dim});
    MOEX_ASSERT_OK(cpu_->rms_norm({x, w.t, ref.t, 1e-6f}));
    DeviceTensor d_full = to_device(*gpu_, full), d_w = to_device(*gpu_, w);
    Tensor dx = rebase(x, full.t.data, d_full.t.data, DeviceType::kCuda);
    MOEX_ASSERT_OK(gpu_->rms_norm({dx, d_w.t, dx, 1e-6f}));  // in place
    HostTensor got_full = to_host(*gpu_, d_full);
    HostTensor got = host_tensor(c.dtype, {rows, c.dim});
    MOEX_ASSERT_OK(cpu_->copy({rebase(x, full.t.data, got_full.t.data, DeviceType::kCpu), got.t}));
    EXPECT_LT(rel_l2(got, ref), c.dtype == DType::kF32 ? kTolF32 : kTolBf16);
    // Columns outside the view are untouched.
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(got_full.get(r * (c.dim + 16)), full.get(r * (c.dim + 16)));
  }
}

TEST_F(NormRopeTest, RmsNormPerHeadViewOfQkv) {
  // Qwen3 q-norm: q heads inside a fused qkv row [t, (32 + 2 * 4) * 128], normed per head.
  const int64_t t = 19, qh = 32, kvh = 4, d = 128, width = (qh + 2 * kvh) * d;
  HostTensor qkv = host_random(DType::kBF16, {t, width}, rng_, -2.f, 2.f);
  HostTensor w = host_random(DType::kBF16, {d}, rng_, 0.5f, 1.5f);
  Tensor q = Tensor::make(qkv.t.data, DType::kBF16, {t, qh, d});
  q.stride[0] = width;
  HostTensor ref = host_tensor(DType::kBF16, {t, qh, d});
  for (int64_t i = 0; i < t; ++i) {  // the CPU reference takes 2-D views: one token at a time
    Tensor xi = Tensor::make(q.at({i}), DType::kBF16, {qh, d});
    Tensor oi = Tensor::make(ref.t.at({i}), DType::kBF16, {qh, d});
    MOEX_ASSERT_OK(cpu_->rms_norm({xi, w.t, oi, 1e-6f}));
  }
  DeviceTensor d_qkv = to_device(*gpu_, qkv), d_w = to_device(*gpu_, w);
  Tensor dq = rebase(q, qkv.t.data, d_qkv.t.data, DeviceType::kCuda);
  MOEX_ASSERT_OK(gpu_->rms_norm({dq, d_w.t, dq, 1e-6f}));
  HostTensor got_qkv = to_host(*gpu_, d_qkv);
  HostTensor got = host_tensor(DType::kBF16, {t, qh, d});
  MOEX_ASSERT_OK(cpu_->copy({rebase(q, qkv.t.data, got_qkv.t.data, DeviceType::kCpu), got.t}));
  EXPECT_LT(rel_l2(got, ref), kTolBf16);
  // k and v heads untouched.
  for (int64_t i = 0; i < t; ++i)
    for (int64_t c = qh * d; c < width; c += 61) EXPECT_EQ(got_qkv.get(i * width + c), qkv.get(i * width + c));
}

TEST_F(NormRopeTest, RopeBothStylesPartialRotaryStrided) {
  struct Case { int64_t heads, head_dim, rot; bool interleaved; float attn_scale; DType dtype; };
  for (const Case c : {Case{32, 128, 128, false, 1.f, DType::kBF16}, Case{128, 192, 64, true, 1.3f, DType::kBF16},
                       Case{1, 64, 64, true, 1.f, DType::kF32}, Case{5, 80, 40, false, 1.f, DType::kF32}}) {
    const int64_t n = rng_.uniform_int(1, 40);
    SCOPED_TRACE("heads " + std::to_string(c.heads) + " rot " + std::to_string(c.rot) + " seed " + std::to_string(seed_));
    // x is a view with a wider token stride (e.g. inside a fused projection).
    HostTensor full = host_random(c.dtype, {n, c.heads * c.head_dim + 24}, rng_);
    Tensor x = Tensor::make(static_cast<char*>(full.t.data) + 8 * dtype_size(c.dtype), c.dtype, {n, c.heads, c.head_dim});
    x.stride[0] = c.heads * c.head_dim + 24;
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (auto& p : pos) p = rng_.uniform_int(0, 70000);
    HostTensor positions = host_i32(pos);
    HostTensor inv_freq = host_tensor(DType::kF32, {c.rot / 2});
    for (int64_t i = 0; i < c.rot / 2; ++i) inv_freq.set(i, std::pow(10000.f, -2.f * float(i) / float(c.rot)));
    HostTensor ref_full = full;
    ref_full.t.data = ref_full.bytes.data();
    Tensor xr = rebase(x, full.t.data, ref_full.t.data, DeviceType::kCpu);
    MOEX_ASSERT_OK(cpu_->rope({xr, positions.t, inv_freq.t, c.attn_scale, c.interleaved}));
    DeviceTensor d_full = to_device(*gpu_, full), d_pos = to_device(*gpu_, positions), d_if = to_device(*gpu_, inv_freq);
    MOEX_ASSERT_OK(gpu_->rope({rebase(x, full.t.data, d_full.t.data, DeviceType::kCuda), d_pos.t, d_if.t, c.attn_scale,
                               c.interleaved}));
    HostTensor got = to_host(*gpu_, d_full);
    // Positions up to 70000 make cos/sin arguments large: fp32 ulp differences are expected.
    EXPECT_LT(rel_l2(got, ref_full), c.dtype == DType::kF32 ? 1e-4 : kTolBf16);
  }
}

}  // namespace
}  // namespace moex::test
