// Host-side checks of an op's CUDA tensors, shared by the NSA and prefill-attention ops: each
// failure is one invalid_argument line "cuda <op>: <what>" naming the tensor.
#pragma once
#include <initializer_list>
#include <string>

#include "core/status.h"
#include "core/tensor.h"

namespace moex {

struct FloatOpCheck {
  const char* op;
  Status fail(const std::string& what) const { return invalid_argument(std::string("cuda ") + op + ": " + what); }

  // A device tensor of rank `ndim`, a float dtype the kernels read (f32/bf16 or i32 when `i32`),
  // contiguous along its last dim, with the given sizes (-1: any).
  Status tensor(const Tensor& t, const char* name, std::initializer_list<int64_t> dims, bool i32 = false) const {
    if (t.data == nullptr) return fail(std::string(name) + " is empty");
    if (t.device != DeviceType::kCuda) return fail(std::string(name) + " is not a CUDA tensor");
    if (t.ndim != int(dims.size()))
      return fail(std::string(name) + " must have " + std::to_string(dims.size()) + " dims, got " + t.shape_string());
    if (i32 ? t.dtype != DType::kI32 : (t.dtype != DType::kF32 && t.dtype != DType::kBF16))
      return fail(std::string(name) + (i32 ? " must be i32" : " must be f32/bf16") + ", got " + t.shape_string());
    int d = 0;
    for (int64_t want : dims) {
      if (want >= 0 && t.shape[d] != want)
        return fail(std::string(name) + " dim " + std::to_string(d) + " must be " + std::to_string(want) + ", got " +
                    t.shape_string());
      ++d;
    }
    if (t.ndim > 0 && t.shape[t.ndim - 1] > 1 && t.stride[t.ndim - 1] != 1)
      return fail(std::string(name) + " must be contiguous along its last dim " + t.shape_string());
    return Status::ok();
  }
  Status optional(const Tensor& t, const char* name, std::initializer_list<int64_t> dims, bool i32 = false) const {
    return t.data == nullptr ? Status::ok() : tensor(t, name, dims, i32);
  }
};

}  // namespace moex
