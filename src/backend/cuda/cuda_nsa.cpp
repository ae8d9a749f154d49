// Native Sparse Attention on the CUDA backend (contract: src/ops/nsa.h).
#include "backend/cuda/cuda_backend.h"

namespace moex {

Status CudaBackend::nsa_forward(const ops::NsaForwardParams&) { return unsupported("cuda nsa_forward: not implemented yet"); }
Status CudaBackend::nsa_decode(const ops::NsaDecodeParams&) { return unsupported("cuda nsa_decode: not implemented yet"); }

}  // namespace moex
