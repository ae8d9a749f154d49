// Token sampling on the CUDA backend (contract: src/ops/sampling.h).
#include "backend/cuda/cuda_backend.h"

namespace moex {

Status CudaBackend::sample(const ops::SampleParams&) { return unsupported("cuda sample: not implemented yet"); }

}  // namespace moex
