#include "cuda_ops/cuda_ops_util.h"

#include <chrono>
#include <cmath>
#include <cstring>

namespace moex::test {

uint64_t fresh_seed() {
  static uint64_t counter = 0;
  const uint64_t now = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  return now * 6364136223846793005ull + (++counter) * 1442695040888963407ull;
}

HostTensor host_tensor(DType dtype, std::initializer_list<int64_t> shape) {
  HostTensor h;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  h.bytes.assign(size_t(n) * dtype_size(dtype) + 16, 0);
  h.t = Tensor::make(h.bytes.data(), dtype, shape, DeviceType::kCpu);
  return h;
}

HostTensor host_random(DType dtype, std::initializer_list<int64_t> shape, Rng& rng, float lo, float hi) {
  HostTensor h = host_tensor(dtype, shape);
  const int64_t n = h.t.numel();
  for (int64_t i = 0; i < n; ++i) h.set(i, rng.uniform(lo, hi));
  return h;
}

HostTensor host_i32(const std::vector<int32_t>& values) {
  HostTensor h = host_tensor(DType::kI32, {int64_t(values.size())});
  if (!values.empty()) std::memcpy(h.t.data, values.data(), values.size() * 4);
  return h;
}

DeviceTensor device_poisoned(Backend& gpu, DType dtype, std::initializer_list<int64_t> shape) {
  DeviceTensor d;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const size_t bytes = size_t(n) * dtype_size(dtype);
  auto buf = gpu.alloc(bytes == 0 ? 16 : bytes);
  EXPECT_TRUE(buf.has_value()) << buf.status().message();
  if (!buf.has_value()) return d;
  d.buf = std::move(buf).value();
  d.t = Tensor::make(d.buf.data(), dtype, shape, DeviceType::kCuda);
  EXPECT_TRUE(gpu.fill(d.buf.data(), 0xff, bytes).is_ok());
  return d;
}

DeviceTensor to_device(Backend& gpu, const HostTensor& h) {
  DeviceTensor d;
  auto buf = gpu.alloc(h.bytes.size());
  EXPECT_TRUE(buf.has_value()) << buf.status().message();
  if (!buf.has_value()) return d;
  d.buf = std::move(buf).value();
  d.t = h.t;
  d.t.data = d.buf.data();
  d.t.device = DeviceType::kCuda;
  EXPECT_TRUE(gpu.copy_from_host(d.buf.data(), h.bytes.data(), h.bytes.size()).is_ok());
  return d;
}

HostTensor to_host(Backend& gpu, const DeviceTensor& d) {
  HostTensor h;
  h.bytes.assign(d.buf.bytes(), 0);
  const Status st = gpu.copy_to_host(h.bytes.data(), d.buf.data(), d.buf.bytes());
  EXPECT_TRUE(st.is_ok()) << st.message();
  h.t = d.t;
  h.t.data = h.bytes.data() + (static_cast<const char*>(d.t.data) - static_cast<const char*>(d.buf.data()));
  h.t.device = DeviceType::kCpu;
  return h;
}

Tensor rebase(const Tensor& view, const void* from_base, void* to_base, DeviceType device) {
  Tensor t = view;
  t.data = static_cast<char*>(to_base) + (static_cast<const char*>(view.data) - static_cast<const char*>(from_base));
  t.device = device;
  return t;
}

double rel_l2(const HostTensor& a, const HostTensor& b) {
  const int64_t n = b.t.numel();
  if (a.t.numel() != n) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = a.get(i), y = b.get(i);
    if (!std::isfinite(x) || !std::isfinite(y)) return INFINITY;
    num += (x - y) * (x - y);
    den += y * y;
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}

bool rows_bit_equal(const HostTensor& a, int64_t ra, const HostTensor& b, int64_t rb) {
  const size_t row_bytes = size_t(a.t.numel() / a.t.shape[0]) * dtype_size(a.t.dtype);
  const size_t row_bytes_b = size_t(b.t.numel() / b.t.shape[0]) * dtype_size(b.t.dtype);
  if (row_bytes != row_bytes_b) return false;
  return std::memcmp(static_cast<const char*>(a.t.data) + ra * row_bytes, static_cast<const char*>(b.t.data) + rb * row_bytes,
                     row_bytes) == 0;
}

void CudaOpsTest::SetUp() {
  auto gpu = make_cuda_backend(0);
  if (!gpu.has_value()) GTEST_SKIP() << "no CUDA backend: " << gpu.status().message();
  gpu_ = std::move(gpu).value();
  cpu_ = make_cpu_backend(0);
  seed_ = fresh_seed();
  rng_ = Rng(seed_);
  RecordProperty("seed", std::to_string(seed_));
}

}  // namespace moex::test
