// Roofline ceilings of one device and the floor a benchmark is measured against.
// floor = max(bytes / bandwidth, flops / rate); fraction_of_floor = floor / measured time, so
// 1.0 means the kernel runs at the roofline and 0.5 means it takes twice the floor.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace moex::bench {

struct Ceilings {
  std::string device_name;          // "NVIDIA H100 80GB HBM3", or the CPU model name
  double copy_bytes_per_s = 0;      // device copy, bytes read + bytes written per second
  double bf16_flops_per_s = 0;      // dense bf16 GEMM (8192^3 through cuBLASLt on GPUs)
  double fp8_flops_per_s = 0;       // dense fp8 e4m3 GEMM; 0 where not measured (CPU)
  std::string measured_at;          // UTC, ISO 8601
  std::string commit;
};

enum class Bound { kMemory, kCompute };
const char* bound_name(Bound b);  // "memory" / "compute"

struct Floor {
  double memory_s = 0;   // bytes / bandwidth
  double compute_s = 0;  // flops / rate
  double seconds = 0;    // max of the two
  Bound bound = Bound::kMemory;
};

// Both rates must be > 0; ties count as memory bound.
Floor roofline_floor(double bytes, double flops, double bytes_per_s, double flops_per_s);
// floor.seconds / measured_s (0 when measured_s <= 0).
double fraction_of_floor(const Floor& floor, double measured_s);

// "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3": lower case, runs of anything but
// [a-z0-9] become one '-', no leading or trailing '-'. Empty input -> "unknown".
std::string device_slug(std::string_view name);

nlohmann::json ceilings_to_json(const Ceilings& c);
Expected<Ceilings> ceilings_from_json(const nlohmann::json& j, const std::string& source_name);

// <results_root>/<device_slug>/roofline.json
std::string roofline_path(const std::string& results_root, const std::string& device_name);
Status save_ceilings(const std::string& results_root, const Ceilings& c);
// The ceilings stored for this device, or kNotFound when none were measured yet.
Expected<Ceilings> load_ceilings(const std::string& results_root, const std::string& device_name);

}  // namespace moex::bench
