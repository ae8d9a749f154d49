#include "bench/records.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace moex::bench {

nlohmann::json record_to_json(const BenchRecord& r) {
  nlohmann::json j = {
      {"op", r.op},
      {"case", r.case_name},
      {"model", r.model},
      {"impl", r.impl},
      {"device", r.device_name},
      {"commit", r.commit},
      {"timestamp", r.timestamp},
      {"shape", r.shape},
      {"timing", r.timing_method},
      {"time_median_s", r.median_s},
      {"time_min_s", r.min_s},
      {"samples", r.samples},
      {"bytes", r.bytes},
      {"flops", r.flops},
      {"gb_per_s", r.median_s > 0 ? r.bytes / r.median_s / 1e9 : 0.0},
      {"tflop_per_s", r.median_s > 0 ? r.flops / r.median_s / 1e12 : 0.0},
      {"floor_s", r.floor.seconds},
      {"floor_memory_s", r.floor.memory_s},
      {"floor_compute_s", r.floor.compute_s},
      {"bound", bound_name(r.floor.bound)},
      {"fraction_of_floor", fraction_of_floor(r.floor, r.median_s)},
      {"check", r.check},
  };
  if (r.check_rel_err >= 0) j["check_rel_err"] = r.check_rel_err;
  return j;
}

Expected<nlohmann::json> read_json_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return not_found(path + ": no such file");
  std::ifstream in(path);
  if (!in) return io_error(path + ": cannot open for reading");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return corrupt(path + ": not valid JSON");
  return j;
}

Status write_json_file(const std::string& path, const nlohmann::json& j) {
  std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) return io_error(path + ": cannot create folder " + p.parent_path().string() + ": " + ec.message());
  }
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return io_error(tmp + ": cannot open for writing");
    out << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";  // never throws on odd bytes
    if (!out) return io_error(tmp + ": write failed");
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return io_error(path + ": rename from " + tmp + " failed: " + ec.message());
  return Status::ok();
}

Expected<std::vector<nlohmann::json>> read_json_records(const std::string& path) {
  Expected<nlohmann::json> j = read_json_file(path);
  if (!j) {
    if (j.status().code() == StatusCode::kNotFound) return std::vector<nlohmann::json>{};
    return j.status();
  }
  if (!j->is_array()) return corrupt(path + ": result file is not a JSON array of records");
  return j->get<std::vector<nlohmann::json>>();
}

Status append_json_records(const std::string& path, const std::vector<nlohmann::json>& records) {
  MOEX_ASSIGN_OR_RETURN(std::vector<nlohmann::json> all, read_json_records(path));
  all.insert(all.end(), records.begin(), records.end());
  return write_json_file(path, nlohmann::json(all));
}

// MOEX_GIT_COMMIT wins: a copied tree (the GPU machine's) can carry a stale .git.
std::string current_commit() {
  if (const char* env = std::getenv("MOEX_GIT_COMMIT"); env && *env) return env;
  std::string out;
  if (FILE* f = popen("git rev-parse HEAD 2>/dev/null", "r")) {
    std::array<char, 128> buf{};
    while (fgets(buf.data(), int(buf.size()), f)) out += buf.data();
    pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  if (out.size() == 40) return out;
  return "unknown";
}

std::string utc_timestamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double min_of(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

double quantile_of(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = std::clamp(q, 0.0, 1.0) * double(v.size() - 1);
  size_t lo = size_t(std::floor(pos));
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

}  // namespace moex::bench
