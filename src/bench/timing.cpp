#include "bench/timing.h"

#include <chrono>
#include <cstring>
#include <fstream>

#include "bench/gpu_bench.h"
#include "bench/records.h"

namespace moex::bench {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t b = line.find_first_not_of(' ', colon + 1);
        return b == std::string::npos ? "cpu" : "CPU " + line.substr(b);
      }
    }
  }
  return "CPU";
}

std::string device_name_of(Backend& be) {
  if (be.device() == DeviceType::kCpu) return cpu_model_name();
  Expected<std::string> n = gpu::device_name(0);
  return n ? *n : be.name();
}

Status bring_to_steady_clocks(Backend& be, double seconds) {
  static bool done = false;  // once per process: clocks stay up while cases follow each other
  if (be.device() != DeviceType::kCuda || seconds <= 0 || done) return Status::ok();
  MOEX_RETURN_IF_ERROR(gpu::steady_clocks(seconds));
  done = true;
  return Status::ok();
}

namespace {

// CPU: evicts the op's data from the caches by writing a buffer larger than the LLC.
struct HostFlush {
  std::vector<uint8_t> buf = std::vector<uint8_t>(size_t(64) << 20);
  int round = 0;
  void run() { std::memset(buf.data(), ++round & 0xff, buf.size()); }
};

Expected<Timing> time_on_host(Backend& be, const std::function<Status()>& launch, const TimingOptions& o) {
  Timing t;
  t.method = "host-clock";
  HostFlush flush;
  for (int i = 0; i < o.warmup; ++i) MOEX_RETURN_IF_ERROR(launch());
  MOEX_RETURN_IF_ERROR(be.synchronize());
  for (int i = 0; i < o.repeat; ++i) {
    if (o.flush_cache) flush.run();
    auto t0 = std::chrono::steady_clock::now();
    MOEX_RETURN_IF_ERROR(launch());
    MOEX_RETURN_IF_ERROR(be.synchronize());
    t.samples_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return t;
}

}  // namespace

Expected<Timing> time_op(Backend& be, const std::function<Status()>& launch, const TimingOptions& o) {
  if (o.repeat <= 0 || o.warmup < 0) return invalid_argument("timing: repeat must be > 0 and warmup >= 0");
  Timing t;
  if (be.device() == DeviceType::kCuda) {
    MOEX_RETURN_IF_ERROR(bring_to_steady_clocks(be, o.steady_seconds));
    MOEX_RETURN_IF_ERROR(be.synchronize());
    MOEX_ASSIGN_OR_RETURN(t.samples_s,
                          gpu::time_launches(gpu::backend_stream(be), launch, o.warmup, o.repeat, o.flush_cache, o.use_graph, &t.method));
  } else {
    MOEX_ASSIGN_OR_RETURN(t, time_on_host(be, launch, o));
  }
  t.median_s = median_of(t.samples_s);
  t.min_s = min_of(t.samples_s);
  return t;
}

}  // namespace moex::bench
