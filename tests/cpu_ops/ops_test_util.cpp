#include "cpu_ops/ops_test_util.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace moex::test {

HostTensor::HostTensor(DType dtype, std::initializer_list<int64_t> shape)
    : HostTensor(dtype, std::vector<int64_t>(shape)) {}

HostTensor::HostTensor(DType dtype, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  bytes.assign(size_t(n) * dtype_size(dtype) + 64, 0);
  t = Tensor::make(bytes.data(), dtype, shape);
}

double HostTensor::get(int64_t i) const {
  switch (t.dtype) {
    case DType::kI32: return t.ptr<const int32_t>()[i];
    default: return load_as_f32(t.data, t.dtype, size_t(i));
  }
}

void HostTensor::set(int64_t i, double v) {
  if (t.dtype == DType::kI32) t.ptr<int32_t>()[i] = int32_t(v);
  else store_from_f32(t.data, t.dtype, size_t(i), float(v));
}

std::vector<double> HostTensor::values() const {
  std::vector<double> v(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) v[size_t(i)] = get(i);
  return v;
}

void HostTensor::fill_nan() {
  for (int64_t i = 0; i < numel(); ++i) set(i, std::numeric_limits<double>::quiet_NaN());
}

uint32_t seed() {
  static const uint32_t s = std::random_device{}();
  return s;
}

std::mt19937& rng() {
  static std::mt19937 g(seed());
  return g;
}

HostTensor random_tensor(DType dtype, std::initializer_list<int64_t> shape, double lo, double hi) {
  return random_tensor(dtype, std::vector<int64_t>(shape), lo, hi);
}

HostTensor random_tensor(DType dtype, const std::vector<int64_t>& shape, double lo, double hi) {
  HostTensor h(dtype, shape);
  std::uniform_real_distribution<double> d(lo, hi);
  for (int64_t i = 0; i < h.numel(); ++i) h.set(i, d(rng()));
  return h;
}

int random_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng()); }

double view_get(const Tensor& v, int64_t flat) {
  int64_t off = 0;
  for (int d = v.ndim - 1; d >= 0; --d) {
    off += (flat % v.shape[d]) * v.stride[d];
    flat /= v.shape[d];
  }
  return load_as_f32(v.data, v.dtype, size_t(off));
}

double rel_l2(const std::vector<double>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double tol_for(DType out, DType in) {
  if (out == DType::kBF16 || in == DType::kBF16) return 6e-3;
  if (out == DType::kF16 || in == DType::kF16) return 1e-3;
  return 2e-5;
}

std::unique_ptr<Backend> cpu(int threads) { return make_cpu_backend(threads); }

bool same_bytes(const void* a, const void* b, size_t n) { return std::memcmp(a, b, n) == 0; }

}  // namespace moex::test
