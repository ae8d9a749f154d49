// Host arrays, random fills and host <-> backend transfers for benchmarks and test sets.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "backend/backend.h"
#include "core/random.h"
#include "core/status.h"
#include "core/tensor.h"

namespace moex::bench {

// SplitMix64 (core/random.h) with the draws benchmark inputs need; the same seed gives the same
// data on every machine.
class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t next() { return g_.next(); }
  double uniform() { return g_.uniform(); }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }  // [0, n)
  double normal();  // standard normal (Box-Muller)

 private:
  SplitMix64 g_;
};

// An owning host array with a contiguous Tensor view of it. Move-only: the view points into
// the vector's storage, which a move keeps.
struct HostTensor {
  std::vector<uint8_t> bytes;
  Tensor t;

  HostTensor() = default;
  HostTensor(DType dtype, std::initializer_list<int64_t> shape);
  HostTensor(HostTensor&&) noexcept = default;
  HostTensor& operator=(HostTensor&&) noexcept = default;
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;

  template <class T>
  T* ptr() { return reinterpret_cast<T*>(bytes.data()); }
  template <class T>
  const T* ptr() const { return reinterpret_cast<const T*>(bytes.data()); }
  int64_t numel() const { return t.numel(); }
};

// Uniform values in [lo, hi) rounded to the tensor's float dtype; parallel over chunks, each
// chunk seeded from (seed, chunk index) so the result does not depend on the thread count.
void fill_uniform(HostTensor* h, uint64_t seed, float lo, float hi);
void fill_uniform(void* data, DType dtype, size_t count, uint64_t seed, float lo, float hi);
void fill_nan(HostTensor* h);  // quiet NaN in every element of a float tensor

// A backend allocation with a contiguous view of it.
struct DeviceTensor {
  Buffer buf;
  Tensor t;
};
Expected<DeviceTensor> device_alloc(Backend& be, DType dtype, std::initializer_list<int64_t> shape);
Expected<DeviceTensor> upload(Backend& be, const HostTensor& h);
// Uniform random values generated on the host in slices of a few hundred MB and copied in:
// fills multi-GB expert weights without a host copy of the whole tensor.
Status fill_uniform_device(Backend& be, const Tensor& t, uint64_t seed, float lo, float hi);
Status fill_nan_device(Backend& be, const Tensor& t);
// Copies `bytes` bytes starting at device address `src` into a new host tensor of `shape`.
Expected<HostTensor> download(Backend& be, const void* src, DType dtype, std::initializer_list<int64_t> shape);
// A host copy of a contiguous device tensor (up to 4 dims).
Expected<HostTensor> download(Backend& be, const Tensor& t);
// The listed device pages of a paged cache [pages, page, ...] as a compact host cache whose
// page i is device page pages[i].
Expected<HostTensor> download_pages(Backend& be, const Tensor& cache, const std::vector<int32_t>& pages);

// Relative L2 error ||got - want|| / max(||want||, tiny); +inf when `got` has a NaN or Inf.
double rel_l2_error(const HostTensor& got, const std::vector<double>& want);
double rel_l2_error(const std::vector<double>& got, const std::vector<double>& want);
std::vector<double> to_doubles(const HostTensor& h);  // any float dtype

}  // namespace moex::bench
