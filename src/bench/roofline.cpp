#include "bench/roofline.h"

#include <algorithm>

#include "bench/records.h"

namespace moex::bench {

const char* bound_name(Bound b) { return b == Bound::kCompute ? "compute" : "memory"; }

Floor roofline_floor(double bytes, double flops, double bytes_per_s, double flops_per_s) {
  Floor f;
  f.memory_s = bytes_per_s > 0 ? bytes / bytes_per_s : 0;
  f.compute_s = flops_per_s > 0 ? flops / flops_per_s : 0;
  f.bound = f.compute_s > f.memory_s ? Bound::kCompute : Bound::kMemory;
  f.seconds = std::max(f.memory_s, f.compute_s);
  return f;
}

double fraction_of_floor(const Floor& floor, double measured_s) {
  return measured_s > 0 ? floor.seconds / measured_s : 0;
}

std::string device_slug(std::string_view name) {
  std::string out;
  bool pending_dash = false;
  for (char c : name) {
    char l = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
    bool keep = (l >= 'a' && l <= 'z') || (l >= '0' && l <= '9');
    if (!keep) {
      pending_dash = !out.empty();
      continue;
    }
    if (pending_dash) out += '-';
    pending_dash = false;
    out += l;
  }
  return out.empty() ? "unknown" : out;
}

nlohmann::json ceilings_to_json(const Ceilings& c) {
  return {{"device", c.device_name},
          {"copy_bytes_per_s", c.copy_bytes_per_s},
          {"bf16_flops_per_s", c.bf16_flops_per_s},
          {"fp8_flops_per_s", c.fp8_flops_per_s},
          {"copy_tb_per_s", c.copy_bytes_per_s / 1e12},
          {"bf16_tflops", c.bf16_flops_per_s / 1e12},
          {"fp8_tflops", c.fp8_flops_per_s / 1e12},
          {"measured_at", c.measured_at},
          {"commit", c.commit}};
}

Expected<Ceilings> ceilings_from_json(const nlohmann::json& j, const std::string& source_name) {
  if (!j.is_object()) return corrupt(source_name + ": roofline is not a JSON object");
  Ceilings c;
  for (const char* key : {"device", "copy_bytes_per_s", "bf16_flops_per_s"}) {
    if (!j.contains(key)) return corrupt(source_name + ": roofline lacks field '" + key + "'");
  }
  if (!j["device"].is_string() || !j["copy_bytes_per_s"].is_number() || !j["bf16_flops_per_s"].is_number())
    return corrupt(source_name + ": roofline field 'device', 'copy_bytes_per_s' or 'bf16_flops_per_s' has the wrong type");
  c.device_name = j["device"].get<std::string>();
  c.copy_bytes_per_s = j["copy_bytes_per_s"].get<double>();
  c.bf16_flops_per_s = j["bf16_flops_per_s"].get<double>();
  if (j.contains("fp8_flops_per_s") && j["fp8_flops_per_s"].is_number()) c.fp8_flops_per_s = j["fp8_flops_per_s"].get<double>();
  if (j.contains("measured_at") && j["measured_at"].is_string()) c.measured_at = j["measured_at"].get<std::string>();
  if (j.contains("commit") && j["commit"].is_string()) c.commit = j["commit"].get<std::string>();
  if (c.copy_bytes_per_s <= 0 || c.bf16_flops_per_s <= 0)
    return corrupt(source_name + ": roofline rates must be > 0");
  return c;
}

std::string roofline_path(const std::string& results_root, const std::string& device_name) {
  return results_root + "/" + device_slug(device_name) + "/roofline.json";
}

Status save_ceilings(const std::string& results_root, const Ceilings& c) {
  return write_json_file(roofline_path(results_root, c.device_name), ceilings_to_json(c));
}

Expected<Ceilings> load_ceilings(const std::string& results_root, const std::string& device_name) {
  std::string path = roofline_path(results_root, device_name);
  Expected<nlohmann::json> j = read_json_file(path);
  if (!j) {
    if (j.status().code() == StatusCode::kNotFound)
      return not_found(path + ": no ceilings measured yet (run `moex bench roofline`)");
    return j.status();
  }
  return ceilings_from_json(*j, path);
}

}  // namespace moex::bench
