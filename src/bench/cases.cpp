#include "bench/cases.h"

#include "bench/records.h"

namespace moex::bench {
namespace {

std::string value_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

}  // namespace

Expected<std::vector<BenchCase>> parse_cases(const nlohmann::json& j, const std::string& source_name) {
  if (!j.is_object() || !j.contains("cases") || !j["cases"].is_array())
    return corrupt(source_name + ": expected an object with a 'cases' array");
  std::vector<BenchCase> out;
  size_t index = 0;
  for (const nlohmann::json& entry : j["cases"]) {
    std::string where = source_name + ": cases[" + std::to_string(index++) + "]";
    if (!entry.is_object()) return corrupt(where + " is not an object");
    if (!entry.contains("op") || !entry["op"].is_string()) return corrupt(where + " lacks a string 'op'");
    BenchCase base;
    base.op = entry["op"].get<std::string>();
    base.model = entry.contains("model") && entry["model"].is_string() ? entry["model"].get<std::string>() : base.op;
    // Split into scalar fields and expanded (array) fields, keeping the file's order.
    std::vector<std::pair<std::string, nlohmann::json>> lists;
    nlohmann::json scalars = nlohmann::json::object();
    for (auto it = entry.begin(); it != entry.end(); ++it) {
      if (it.key() == "op" || it.key() == "model") continue;
      if (it.value().is_array()) {
        if (it.value().empty()) return corrupt(where + ": field '" + it.key() + "' is an empty list");
        for (const nlohmann::json& v : it.value()) {
          if (!v.is_number() && !v.is_string()) return corrupt(where + ": field '" + it.key() + "' must list numbers or strings");
        }
        lists.emplace_back(it.key(), it.value());
      } else if (it.value().is_number() || it.value().is_string() || it.value().is_boolean()) {
        scalars[it.key()] = it.value();
      } else {
        return corrupt(where + ": field '" + it.key() + "' must be a number, string, boolean or list");
      }
    }
    // Odometer over the lists: the last list varies fastest.
    std::vector<size_t> pos(lists.size(), 0);
    for (bool done = false; !done;) {
      BenchCase c = base;
      c.shape = scalars;
      std::string suffix;
      for (size_t i = 0; i < lists.size(); ++i) {
        const nlohmann::json& v = lists[i].second[pos[i]];
        c.shape[lists[i].first] = v;
        suffix += (suffix.empty() ? "" : ",") + lists[i].first + "=" + value_text(v);
      }
      c.name = base.model + (suffix.empty() ? "" : "/" + suffix);
      out.push_back(std::move(c));
      done = true;
      for (size_t d = lists.size(); d-- > 0;) {
        if (++pos[d] < lists[d].second.size()) {
          done = false;
          break;
        }
        pos[d] = 0;
      }
    }
  }
  return out;
}

Expected<std::vector<BenchCase>> load_cases(const std::string& path) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
  return parse_cases(j, path);
}

Expected<int64_t> case_int(const BenchCase& c, const char* field) {
  if (!c.shape.contains(field) || !c.shape[field].is_number_integer())
    return invalid_argument("case " + c.name + ": field '" + field + "' must be an integer");
  return c.shape[field].get<int64_t>();
}

int64_t case_int_or(const BenchCase& c, const char* field, int64_t fallback) {
  return c.shape.contains(field) && c.shape[field].is_number_integer() ? c.shape[field].get<int64_t>() : fallback;
}

double case_double_or(const BenchCase& c, const char* field, double fallback) {
  return c.shape.contains(field) && c.shape[field].is_number() ? c.shape[field].get<double>() : fallback;
}

std::string case_string_or(const BenchCase& c, const char* field, const std::string& fallback) {
  return c.shape.contains(field) && c.shape[field].is_string() ? c.shape[field].get<std::string>() : fallback;
}

}  // namespace moex::bench
