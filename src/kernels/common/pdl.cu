#include <cstdlib>
#include <cstring>

#include "kernels/common/pdl.cuh"

namespace moex::kernels::pdl {

bool enabled() {
  static const bool capable = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    return major >= 9;
  }();
  if (!capable) return false;
  // Opt-in (MOEX_PDL=1) until a GPU round has run PdlLogits and measured it (docs/architecture.md);
  // read at every launch, so that tests can compare both in one process.
  const char* v = std::getenv("MOEX_PDL");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace moex::kernels::pdl
