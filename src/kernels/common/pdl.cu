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
  const char* v = std::getenv("MOEX_PDL");  // at every launch, so that tests can compare both
  return v == nullptr || std::strcmp(v, "0") != 0;
}

}  // namespace moex::kernels::pdl
