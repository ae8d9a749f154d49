#include "core/tensor.h"

namespace moex {

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) {
    if (d) s += ", ";
    s += std::to_string(shape[d]);
  }
  s += "] ";
  s += dtype_name(dtype);
  return s;
}

}  // namespace moex
