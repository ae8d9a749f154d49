// The timing protocol shared by every benchmark:
//   - steady clocks first (about 1.5 s of heavy work on the GPU: a cold H100 runs small
//     kernels up to 2x slower);
//   - warm-up launches, then `repeat` timed launches, each preceded by an L2 flush (a write
//     to a buffer larger than the last-level cache) so that weights come from memory;
//   - GPU: CUDA events around CUDA-graph replays of one op launch captured on the backend's
//     stream; where capture fails or the stream is unknown, events around each launch;
//     CPU: the host clock around launch + synchronize;
//   - median and minimum of the samples.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"

namespace moex::bench {

struct TimingOptions {
  int warmup = 10;
  int repeat = 100;
  bool flush_cache = true;
  bool use_graph = true;       // CUDA: replay a captured graph of the launch when possible
  double steady_seconds = 1.5; // CUDA: heavy work before the first case (0 = skip)
};

struct Timing {
  std::vector<double> samples_s;
  std::string method;  // "cuda-graph", "cuda-events", "host-clock"
  double median_s = 0;
  double min_s = 0;
};

// Times `launch` (one op launch on `be`) by the protocol above.
Expected<Timing> time_op(Backend& be, const std::function<Status()>& launch, const TimingOptions& options);

// Brings the GPU of a CUDA backend to steady clocks (no-op on the CPU). Done once per process.
Status bring_to_steady_clocks(Backend& be, double seconds);

// The name of the device a backend runs on: the GPU name (cudaDeviceProp::name) or the CPU
// model name from /proc/cpuinfo.
std::string device_name_of(Backend& be);
std::string cpu_model_name();

}  // namespace moex::bench
