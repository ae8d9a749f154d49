// Answers for a moex configured without CUDA (gpu_bench.cu is then not compiled).
#ifndef MOEX_WITH_CUDA
#include "bench/gpu_bench.h"

namespace moex::bench::gpu {
namespace {
Status not_built() { return unsupported("gpu benchmarks: this moex was built without CUDA (configure with -DMOEX_CUDA=ON)"); }
}  // namespace

bool built_with_cuda() { return false; }
Expected<std::string> device_name(int) { return not_built(); }
void* backend_stream(Backend&) { return nullptr; }
Expected<std::vector<double>> time_launches(void*, const std::function<Status()>&, int, int, bool, bool, std::string*) {
  return not_built();
}
Status steady_clocks(double) { return not_built(); }
Expected<RooflineMeasurement> measure_roofline(int, size_t, int) { return not_built(); }

}  // namespace moex::bench::gpu
#endif  // MOEX_WITH_CUDA
