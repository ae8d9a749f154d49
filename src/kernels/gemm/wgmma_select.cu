// Whether the launchers use the wgmma mainloop (wgmma_pipeline.cuh): only on a compute
// capability 9.0 device (the sm_90a code), and by the policy in docs/kernels/gemm.md, which
// MOEX_GEMM_WGMMA=0|1 overrides.
#include <cstdlib>
#include <cstring>

#include "kernels/gemm/gemm.h"
#include "kernels/gemm/wgmma_pipeline.cuh"

namespace moex::kernels::gemm {

bool wgmma_available() {
  // Cached per process: one device generation per process in practice, and the attribute
  // queries cost microseconds at every launch otherwise.
  static const bool ok = [] {
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
    return major == 9 && minor == 0;
  }();
  return ok;
}

bool wgmma_enabled() {
  if (!wgmma_available()) return false;
  // Read at every launch so that tests and benchmarks can switch in one process.
  const char* v = std::getenv("MOEX_GEMM_WGMMA");
  if (v != nullptr && std::strcmp(v, "1") == 0) return true;
  if (v != nullptr && std::strcmp(v, "0") == 0) return false;
  return kWgmmaDefault;
}

PipeTile pipe_equivalent(PipeTile t) {
  if (t == PipeTile::kWgWide) return PipeTile::kWide;
  if (t == PipeTile::kWgSquare) return PipeTile::kSquare;
  return t;
}

}  // namespace moex::kernels::gemm
