// Benchmark result records and the JSON files that keep them.
// A result file (bench/results/<device>/<op>.json) is one JSON array of records; each run
// appends its records, so a file holds the history that tools/bench_report.py plots by commit.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/roofline.h"
#include "core/status.h"

namespace moex::bench {

struct BenchRecord {
  std::string op;            // "fused_moe", "mla_decode", ...
  std::string case_name;     // "Qwen3-30B-A3B/t=64"
  std::string model;         // model tag of the case
  std::string impl;          // backend name (the implementation measured)
  std::string device_name;   // GPU or CPU name
  std::string commit;
  std::string timestamp;     // UTC ISO 8601
  nlohmann::json shape;      // the case's shape fields
  std::string timing_method; // "cuda-graph", "cuda-events", "host-clock"
  double median_s = 0;
  double min_s = 0;
  int samples = 0;
  double bytes = 0;          // bytes the floor counts (read + written)
  double flops = 0;
  Floor floor;
  std::string check = "not run";  // "passed", "failed", "not run"
  double check_rel_err = -1;      // relative L2 error against the CPU reference; -1 = not run
};

nlohmann::json record_to_json(const BenchRecord& r);

// Appends `records` to the JSON array at `path` (creating parent folders and the file);
// an existing file that is not a JSON array is refused rather than overwritten.
Status append_json_records(const std::string& path, const std::vector<nlohmann::json>& records);
// The array stored at `path` (empty when the file does not exist).
Expected<std::vector<nlohmann::json>> read_json_records(const std::string& path);
// Writes `j` to `path` through a temporary file and a rename (parent folders created).
Status write_json_file(const std::string& path, const nlohmann::json& j);
Expected<nlohmann::json> read_json_file(const std::string& path);

// The commit being measured: `git rev-parse HEAD` in the working directory, else the
// MOEX_GIT_COMMIT environment variable, else "unknown".
std::string current_commit();
std::string utc_timestamp();  // "2026-11-23T01:02:03Z"

// Median and minimum of samples (median of an even count = mean of the middle two).
double median_of(std::vector<double> v);
double min_of(const std::vector<double>& v);
// Quantile q in [0, 1] by linear interpolation between order statistics.
double quantile_of(std::vector<double> v, double q);

}  // namespace moex::bench
