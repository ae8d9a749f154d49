// The CUDA side of the benchmarks (gpu_bench.cu); gpu_bench_unavailable.cpp answers "not built"
// when moex is configured without CUDA. Plain types only, so that the .cu stays small.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"

namespace moex::bench::gpu {

bool built_with_cuda();
Expected<std::string> device_name(int device);
// The cudaStream_t a CUDA backend issues its ops on (nullptr for any other backend).
void* backend_stream(Backend& be);

// Samples of one op launch: warm-up, then `repeat` x (L2 flush, event, launch or graph replay,
// event) on `stream` (a cudaStream_t; nullptr = the legacy default stream, which orders with
// the backend's work only if the backend uses blocking streams). `method` says which timing
// was used.
Expected<std::vector<double>> time_launches(void* stream, const std::function<Status()>& launch, int warmup, int repeat,
                                            bool flush_l2, bool use_graph, std::string* method);

// About `seconds` of FMA-heavy kernels over every SM.
Status steady_clocks(double seconds);

struct RooflineMeasurement {
  std::string device_name;
  double copy_bytes_per_s = 0;  // best of cudaMemcpy D2D and a 16-byte-vector copy kernel
  double bf16_flops_per_s = 0;  // cuBLASLt 8192^3, bf16 in/out, fp32 accumulate
  double fp8_flops_per_s = 0;   // cuBLASLt 8192^3, e4m3 in, bf16 out, fp32 accumulate
  std::string notes;            // per-measurement details for the log
};
Expected<RooflineMeasurement> measure_roofline(int device, size_t copy_bytes, int gemm_size);

}  // namespace moex::bench::gpu
