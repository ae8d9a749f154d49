// Benchmark case files (bench/cases/*.json):
//   {"cases": [{"op": "fused_moe", "model": "Qwen3-30B-A3B",
//               "experts": 128, "top_k": 8, "hidden": 2048, "inter": 768,
//               "tokens": [1, 2, 4, 8]}, ...]}
// Every field holding an array of numbers is expanded: one case per combination, named
// "<model>/<field>=<value>,..." after the expanded fields (in the order they appear).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace moex::bench {

struct BenchCase {
  std::string op;
  std::string model;
  std::string name;
  nlohmann::json shape;  // scalar fields only (op and model removed)
};

Expected<std::vector<BenchCase>> parse_cases(const nlohmann::json& j, const std::string& source_name);
Expected<std::vector<BenchCase>> load_cases(const std::string& path);

// Typed access to a case's fields with a message naming the case and field.
Expected<int64_t> case_int(const BenchCase& c, const char* field);
int64_t case_int_or(const BenchCase& c, const char* field, int64_t fallback);
double case_double_or(const BenchCase& c, const char* field, double fallback);
std::string case_string_or(const BenchCase& c, const char* field, const std::string& fallback);

}  // namespace moex::bench
