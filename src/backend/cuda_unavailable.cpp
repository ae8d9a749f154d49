// Linked instead of the CUDA backend when moex is configured with MOEX_CUDA=OFF or no nvcc.
#include "backend/backend.h"

namespace moex {

Expected<std::unique_ptr<Backend>> make_cuda_backend(int /*device_index*/) {
  return unsupported("this moex was built without the CUDA backend (configure with -DMOEX_CUDA=ON and nvcc)");
}

}  // namespace moex
