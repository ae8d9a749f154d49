#include "bench/host_tensor.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moex::bench {

double Rng::normal() {
  double u1 = std::max(uniform(), 1e-300), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

HostTensor::HostTensor(DType dtype, std::initializer_list<int64_t> shape) {
  t = Tensor::make(nullptr, dtype, shape);
  bytes.assign(t.nbytes(), 0);
  t.data = bytes.data();
}

void fill_uniform(void* data, DType dtype, size_t count, uint64_t seed, float lo, float hi) {
  constexpr size_t kChunk = size_t(1) << 16;
  int64_t chunks = int64_t((count + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    Rng rng(seed * 0x100000001b3ull + uint64_t(c) * 0x9e3779b97f4a7c15ull + 1);
    size_t end = std::min(count, size_t(c + 1) * kChunk);
    for (size_t i = size_t(c) * kChunk; i < end; ++i) {
      float v = float(rng.uniform(lo, hi));
      if (dtype == DType::kI32) static_cast<int32_t*>(data)[i] = int32_t(v);
      else store_from_f32(data, dtype, i, v);
    }
  }
}

void fill_uniform(HostTensor* h, uint64_t seed, float lo, float hi) {
  fill_uniform(h->bytes.data(), h->t.dtype, size_t(h->numel()), seed, lo, hi);
}

void fill_nan(HostTensor* h) {
  float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t i = 0; i < h->numel(); ++i) store_from_f32(h->bytes.data(), h->t.dtype, size_t(i), nan);
}

Expected<DeviceTensor> device_alloc(Backend& be, DType dtype, std::initializer_list<int64_t> shape) {
  DeviceTensor d;
  d.t = Tensor::make(nullptr, dtype, shape, be.device());
  // Allocate at least one byte so an empty tensor still has a distinct, valid address.
  MOEX_ASSIGN_OR_RETURN(d.buf, be.alloc(std::max<size_t>(d.t.nbytes(), 16)));
  d.t.data = d.buf.data();
  return d;
}

Expected<DeviceTensor> upload(Backend& be, const HostTensor& h) {
  DeviceTensor d;
  d.t = h.t;
  d.t.device = be.device();
  MOEX_ASSIGN_OR_RETURN(d.buf, be.alloc(std::max<size_t>(h.bytes.size(), 16)));
  d.t.data = d.buf.data();
  if (!h.bytes.empty()) MOEX_RETURN_IF_ERROR(be.copy_from_host(d.t.data, h.bytes.data(), h.bytes.size()));
  return d;
}

namespace {
// Host staging slice for device fills: large enough to amortise the copy, small next to RAM.
constexpr size_t kStageBytes = size_t(256) << 20;

template <class Fill>
Status fill_device_in_slices(Backend& be, const Tensor& t, Fill fill) {
  if (!t.is_contiguous()) return invalid_argument("fill of " + t.shape_string() + ": tensor must be contiguous");
  size_t esize = dtype_size(t.dtype);
  size_t total = size_t(t.numel());
  size_t per = kStageBytes / esize;
  std::vector<uint8_t> stage(std::min(total, per) * esize);
  for (size_t begin = 0, slice = 0; begin < total; begin += per, ++slice) {
    size_t n = std::min(per, total - begin);
    fill(stage.data(), n, slice);
    MOEX_RETURN_IF_ERROR(be.copy_from_host(static_cast<char*>(t.data) + begin * esize, stage.data(), n * esize));
    // The staging slice is reused: the copy must finish before it is overwritten.
    MOEX_RETURN_IF_ERROR(be.synchronize());
  }
  return Status::ok();
}
}  // namespace

Status fill_uniform_device(Backend& be, const Tensor& t, uint64_t seed, float lo, float hi) {
  return fill_device_in_slices(be, t, [&](void* stage, size_t n, size_t slice) {
    fill_uniform(stage, t.dtype, n, seed + 7919 * slice, lo, hi);
  });
}

Status fill_nan_device(Backend& be, const Tensor& t) {
  float nan = std::numeric_limits<float>::quiet_NaN();
  return fill_device_in_slices(be, t, [&](void* stage, size_t n, size_t) {
    for (size_t i = 0; i < n; ++i) store_from_f32(stage, t.dtype, i, nan);
  });
}

Expected<HostTensor> download(Backend& be, const void* src, DType dtype, std::initializer_list<int64_t> shape) {
  HostTensor h(dtype, shape);
  if (!h.bytes.empty()) MOEX_RETURN_IF_ERROR(be.copy_to_host(h.bytes.data(), src, h.bytes.size()));
  MOEX_RETURN_IF_ERROR(be.synchronize());
  return h;
}

Expected<HostTensor> download_pages(Backend& be, const Tensor& cache, const std::vector<int32_t>& pages) {
  HostTensor h;
  h.t = cache;
  h.t.shape[0] = int64_t(pages.size());
  h.t.device = DeviceType::kCpu;
  const size_t page_bytes = size_t(cache.stride[0]) * dtype_size(cache.dtype);
  h.bytes.resize(pages.size() * page_bytes);
  h.t.data = h.bytes.data();
  for (size_t i = 0; i < pages.size(); ++i)
    MOEX_RETURN_IF_ERROR(be.copy_to_host(h.bytes.data() + i * page_bytes, cache.at({pages[i]}), page_bytes));
  MOEX_RETURN_IF_ERROR(be.synchronize());
  return h;
}

Expected<HostTensor> download(Backend& be, const Tensor& t) {
  if (!t.is_contiguous()) return invalid_argument("download of " + t.shape_string() + ": tensor must be contiguous");
  HostTensor h;
  h.t = t;
  h.t.device = DeviceType::kCpu;
  h.bytes.resize(t.nbytes());
  h.t.data = h.bytes.data();
  if (!h.bytes.empty()) MOEX_RETURN_IF_ERROR(be.copy_to_host(h.bytes.data(), t.data, h.bytes.size()));
  MOEX_RETURN_IF_ERROR(be.synchronize());
  return h;
}

std::vector<double> to_doubles(const HostTensor& h) {
  std::vector<double> v(static_cast<size_t>(h.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = load_as_f32(h.bytes.data(), h.t.dtype, i);
  return v;
}

double rel_l2_error(const std::vector<double>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double rel_l2_error(const HostTensor& got, const std::vector<double>& want) {
  return rel_l2_error(to_doubles(got), want);
}

}  // namespace moex::bench
