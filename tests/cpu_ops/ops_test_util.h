// Helpers for the CPU op tests: owning host tensors, random fills, NaN poisoning, and error
// measures against double-precision references written in each test.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace moex::test {

// Owning, contiguous host tensor (the CPU backend works on host memory directly).
struct HostTensor {
  std::vector<uint8_t> bytes;
  Tensor t;
  HostTensor() = default;
  HostTensor(DType dtype, std::initializer_list<int64_t> shape);
  HostTensor(DType dtype, const std::vector<int64_t>& shape);
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;
  HostTensor(HostTensor&&) = default;
  HostTensor& operator=(HostTensor&&) = default;
  int64_t numel() const { return t.numel(); }
  double get(int64_t i) const;   // element i (row-major) as double
  void set(int64_t i, double v); // element i stored with the tensor's rounding
  std::vector<double> values() const;
  void fill_nan();
  int32_t* i32() { return t.ptr<int32_t>(); }
};

// A generator seeded freshly per test (printed via the trace so a failure can be replayed).
std::mt19937& rng();
uint32_t seed();
#define MOEX_TRACE_SEED() SCOPED_TRACE("seed " + std::to_string(::moex::test::seed()))

// Uniform values in [lo, hi) (rounded to the dtype).
HostTensor random_tensor(DType dtype, std::initializer_list<int64_t> shape, double lo = -1.0, double hi = 1.0);
HostTensor random_tensor(DType dtype, const std::vector<int64_t>& shape, double lo = -1.0, double hi = 1.0);
int random_int(int lo, int hi);  // inclusive

// Element at a strided view position given as a flat row-major index over the view's shape.
double view_get(const Tensor& v, int64_t flat);

// sqrt(sum (a-b)^2) / max(sqrt(sum b^2), tiny); NaN anywhere in `got` gives +inf.
double rel_l2(const std::vector<double>& got, const std::vector<double>& ref);
// Tolerance for an output of this dtype computed with fp32 accumulation.
double tol_for(DType out, DType in = DType::kF32);

std::unique_ptr<Backend> cpu(int threads = 2);

// Bitwise equality of two tensors' bytes.
bool same_bytes(const void* a, const void* b, size_t n);

}  // namespace moex::test
