// A non-owning view of a strided array on one device. Shapes are listed outermost first;
// strides are in elements (not bytes). Ops take views; buffers own memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string>

#include "core/dtype.h"

namespace moex {

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Tensor {
  static constexpr int kMaxDims = 5;

  void* data = nullptr;
  DType dtype = DType::kF32;
  DeviceType device = DeviceType::kCpu;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  // A contiguous (row-major) view; shape from a list or any container of int64_t.
  static Tensor make(void* data, DType dtype, std::initializer_list<int64_t> shape,
                     DeviceType device = DeviceType::kCpu) {
    return make_from(data, dtype, shape.begin(), shape.size(), device);
  }
  template <class Shape>
  static Tensor make(void* data, DType dtype, const Shape& shape, DeviceType device = DeviceType::kCpu) {
    return make_from(data, dtype, std::data(shape), std::size(shape), device);
  }
  static Tensor make_from(void* data, DType dtype, const int64_t* shape, size_t ndim, DeviceType device) {
    Tensor t;
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = int(ndim);
    int64_t st = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      t.shape[d] = shape[d];
      t.stride[d] = st;
      st *= shape[d];
    }
    return t;
  }

  bool empty() const { return data == nullptr; }
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool is_contiguous() const {
    int64_t st = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && stride[d] != st) return false;
      st *= shape[d];
    }
    return true;
  }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
  // Byte address of the element at the given leading indices (missing trailing indices are 0).
  char* at(std::initializer_list<int64_t> idx) const {
    int64_t off = 0;
    int d = 0;
    for (int64_t i : idx) off += i * stride[d++];
    return static_cast<char*>(data) + off * int64_t(dtype_size(dtype));
  }
  // Sub-range [begin, end) along dimension d (a view, no copy).
  Tensor slice(int d, int64_t begin, int64_t end) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + begin * stride[d] * int64_t(dtype_size(dtype));
    t.shape[d] = end - begin;
    return t;
  }
  // Same memory seen with another shape; only valid for contiguous tensors.
  Tensor reshape(std::initializer_list<int64_t> new_shape) const { return make(data, dtype, new_shape, device); }

  std::string shape_string() const;  // "[2, 3, 4] bf16"
};

}  // namespace moex
