// CUDA vs CPU: embedding, copy (casts, strided views), add, silu_mul, cache_write.
#include <algorithm>
#include <cstring>

#include "cuda_ops/cuda_ops_util.h"

namespace moex::test {
namespace {

constexpr double kTolBf16 = 5e-3;
constexpr double kTolF32 = 1e-5;

class ElementwiseTest : public CudaOpsTest {};

TEST_F(ElementwiseTest, EmbeddingMatchesCpu) {
  struct Case { int64_t vocab, hidden, n; DType table, out; };
  for (const Case c : {Case{1000, 2048, 7, DType::kBF16, DType::kBF16}, Case{151, 7168, 3, DType::kBF16, DType::kBF16},
                       Case{97, 33, 50, DType::kF32, DType::kF32}, Case{64, 130, 9, DType::kF16, DType::kBF16}}) {
    SCOPED_TRACE("vocab " + std::to_string(c.vocab) + " hidden " + std::to_string(c.hidden) + " seed " + std::to_string(seed_));
    HostTensor table = host_random(c.table, {c.vocab, c.hidden}, rng_);
    std::vector<int32_t> ids_v(static_cast<size_t>(c.n));
    for (auto& id : ids_v) id = rng_.uniform_int(0, int(c.vocab - 1));
    HostTensor ids = host_i32(ids_v);
    HostTensor ref = host_tensor(c.out, {c.n, c.hidden});
    MOEX_ASSERT_OK(cpu_->embedding({ids.t, table.t, ref.t}));
    DeviceTensor d_table = to_device(*gpu_, table), d_ids = to_device(*gpu_, ids);
    DeviceTensor d_out = device_poisoned(*gpu_, c.out, {c.n, c.hidden});
    MOEX_ASSERT_OK(gpu_->embedding({d_ids.t, d_table.t, d_out.t}));
    HostTensor got = to_host(*gpu_, d_out);
    EXPECT_EQ(rel_l2(got, ref), 0.0);  // a lookup and one rounding: exact
  }
}

TEST_F(ElementwiseTest, CopyCastsAndStridedViews) {
  // src [a, b, c] viewed transposed as [c, b, a]-ordered strides, copied into a contiguous dst.
  struct Case { int64_t a, b, c; DType src, dst; bool transpose; };
  for (const Case cs : {Case{5, 7, 9, DType::kBF16, DType::kF32, false}, Case{3, 130, 17, DType::kF32, DType::kBF16, true},
                        Case{2, 64, 128, DType::kF32, DType::kF8E4M3, false}, Case{4, 33, 8, DType::kF16, DType::kBF16, true},
                        Case{1, 1000, 3, DType::kBF16, DType::kBF16, true}}) {
    SCOPED_TRACE("copy " + std::string(dtype_name(cs.src)) + "->" + std::string(dtype_name(cs.dst)) + " seed " + std::to_string(seed_));
    HostTensor src = host_random(cs.src, {cs.a, cs.b, cs.c}, rng_, -4.f, 4.f);
    Tensor sv = src.t;
    if (cs.transpose) {  // view [c, b, a]
      sv.shape[0] = cs.c; sv.shape[2] = cs.a;
      std::swap(sv.stride[0], sv.stride[2]);
    }
    HostTensor ref = host_tensor(cs.dst, {sv.shape[0], sv.shape[1], sv.shape[2]});
    MOEX_ASSERT_OK(cpu_->copy({sv, ref.t}));
    DeviceTensor d_src = to_device(*gpu_, src);
    DeviceTensor d_dst = device_poisoned(*gpu_, cs.dst, {sv.shape[0], sv.shape[1], sv.shape[2]});
    MOEX_ASSERT_OK(gpu_->copy({rebase(sv, src.t.data, d_src.t.data, DeviceType::kCuda), d_dst.t}));
    HostTensor got = to_host(*gpu_, d_dst);
    EXPECT_EQ(rel_l2(got, ref), 0.0);  // casts round identically on both sides
  }
}

TEST_F(ElementwiseTest, AddWithScaleStridesAndAliasing) {
  for (const int64_t dim : {2048, 7168, 37}) {
    const int64_t rows = rng_.uniform_int(1, 40);
    SCOPED_TRACE("dim " + std::to_string(dim) + " rows " + std::to_string(rows) + " seed " + std::to_string(seed_));
    // a is a strided view: rows of a wider buffer.
    HostTensor a_full = host_random(DType::kBF16, {rows, dim + 8}, rng_);
    HostTensor b = host_random(DType::kBF16, {rows, dim}, rng_);
    Tensor a = a_full.t.slice(1, 3, 3 + dim);
    const float scale = rng_.uniform(-2.f, 2.f);
    HostTensor ref = host_tensor(DType::kBF16, {rows, dim});
    MOEX_ASSERT_OK(cpu_->add({a, b.t, ref.t, scale}));
    DeviceTensor d_a = to_device(*gpu_, a_full), d_b = to_device(*gpu_, b);
    Tensor da = rebase(a, a_full.t.data, d_a.t.data, DeviceType::kCuda);
    MOEX_ASSERT_OK(gpu_->add({da, d_b.t, da, scale}));  // out aliases a
    HostTensor got_full = to_host(*gpu_, d_a);
    HostTensor got = host_tensor(DType::kBF16, {rows, dim});
    MOEX_ASSERT_OK(cpu_->copy({rebase(a, a_full.t.data, got_full.t.data, DeviceType::kCpu), got.t}));
    EXPECT_EQ(rel_l2(got, ref), 0.0);  // fp32 a + s * b, one rounding
  }
}

TEST_F(ElementwiseTest, SiluMulMatchesCpu) {
  for (const int64_t inter : {768, 1408, 14336, 45}) {
    const int64_t rows = rng_.uniform_int(1, 20);
    SCOPED_TRACE("inter " + std::to_string(inter) + " seed " + std::to_string(seed_));
    HostTensor x = host_random(DType::kBF16, {rows, 2 * inter}, rng_, -6.f, 6.f);
    HostTensor ref = host_tensor(DType::kBF16, {rows, inter});
    MOEX_ASSERT_OK(cpu_->silu_mul({x.t, ref.t}));
    DeviceTensor d_x = to_device(*gpu_, x);
    DeviceTensor d_out = device_poisoned(*gpu_, DType::kBF16, {rows, inter});
    MOEX_ASSERT_OK(gpu_->silu_mul({d_x.t, d_out.t}));
    EXPECT_LT(rel_l2(to_host(*gpu_, d_out), ref), kTolBf16);
  }
}

TEST_F(ElementwiseTest, CacheWriteScattersRows) {
  for (const int64_t dim : {576, 128, 19}) {
    const int64_t slots = 300, n = rng_.uniform_int(1, 64);
    SCOPED_TRACE("dim " + std::to_string(dim) + " seed " + std::to_string(seed_));
    HostTensor src = host_random(DType::kF32, {n, dim}, rng_);
    std::vector<int32_t> perm(slots);
    for (int i = 0; i < slots; ++i) perm[size_t(i)] = i;
    for (int i = slots - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng_.uniform_int(0, i))]);
    perm.resize(size_t(n));
    HostTensor map = host_i32(perm);
    HostTensor ref = host_tensor(DType::kBF16, {slots, dim});
    for (int64_t i = 0; i < ref.t.numel(); ++i) ref.set(i, 0.5f);
    MOEX_ASSERT_OK(cpu_->cache_write({src.t, map.t, ref.t}));
    DeviceTensor d_src = to_device(*gpu_, src), d_map = to_device(*gpu_, map);
    HostTensor init = host_tensor(DType::kBF16, {slots, dim});
    for (int64_t i = 0; i < init.t.numel(); ++i) init.set(i, 0.5f);
    DeviceTensor d_dst = to_device(*gpu_, init);
    MOEX_ASSERT_OK(gpu_->cache_write({d_src.t, d_map.t, d_dst.t}));
    EXPECT_EQ(rel_l2(to_host(*gpu_, d_dst), ref), 0.0);
  }
}

// Random weights generated on the device equal the CPU's bit for bit (the GPU's weight dtypes,
// odd lengths, streams with the top bit set), and every value lies in [-half_width, half_width];
// other dtypes are refused with a message.
TEST_F(ElementwiseTest, RandomUniformEqualsCpuBits) {
  {
    DeviceTensor f16 = device_poisoned(*gpu_, DType::kF16, {8});
    const Status st = gpu_->random_uniform({.out = f16.t, .stream = 1, .half_width = 0.5f});
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("random_uniform"), std::string::npos) << st.message();
  }
  for (const DType dt : {DType::kBF16, DType::kF32}) {
    for (const int64_t n : {int64_t(1), int64_t(1000003)}) {
      const uint64_t stream = rng_.next() | (uint64_t(1) << 63);
      SCOPED_TRACE(std::string(dtype_name(dt)) + " n " + std::to_string(n) + " seed " + std::to_string(seed_));
      HostTensor ref = host_tensor(dt, {n});
      MOEX_ASSERT_OK(cpu_->random_uniform({.out = ref.t, .stream = stream, .half_width = 0.0346f}));
      DeviceTensor got = device_poisoned(*gpu_, dt, {n});
      MOEX_ASSERT_OK(gpu_->random_uniform({.out = got.t, .stream = stream, .half_width = 0.0346f}));
      HostTensor h = to_host(*gpu_, got);
      ASSERT_EQ(0, std::memcmp(h.t.data, ref.t.data, size_t(n) * dtype_size(dt)));  // bytes carry padding
      double lo = 1, hi = -1;
      for (int64_t i = 0; i < n; ++i) {
        const double v = load_as_f32(ref.t.data, dt, size_t(i));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      EXPECT_GE(lo, -0.0347);
      EXPECT_LE(hi, 0.0347);
      if (n > 1) {  // a million draws reach the ends of the range
        EXPECT_LT(lo, -0.03);
        EXPECT_GT(hi, 0.03);
      }
    }
  }
}

TEST_F(ElementwiseTest, RejectsBadShapesWithAMessage) {
  DeviceTensor x = device_poisoned(*gpu_, DType::kBF16, {4, 10});
  DeviceTensor out = device_poisoned(*gpu_, DType::kBF16, {4, 4});
  const Status st = gpu_->silu_mul({x.t, out.t});
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("silu_mul"), std::string::npos) << st.message();
  (void)kTolF32;
}

}  // namespace
}  // namespace moex::test
