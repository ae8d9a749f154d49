#include "model/config/json_fields.h"

namespace moex::config_detail {

using nlohmann::json;

namespace {

// Values are shown as JSON, shortened so that a message stays on one readable line.
std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

bool as_int(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(INT64_MAX)) return false;
    *out = int64_t(u);
    return true;
  }
  if (v.is_number_integer()) { *out = v.get<int64_t>(); return true; }
  return false;
}

}  // namespace

const json* JsonFields::find(const char* key) const {
  if (!obj_.is_object()) return nullptr;
  auto it = obj_.find(key);
  if (it == obj_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonFields::has(const char* key) const { return find(key) != nullptr; }

Status JsonFields::wrong_type(const char* key, const char* expected) const {
  return bad_value(key, std::string("is not ") + expected);
}

Status JsonFields::bad_value(const char* key, const std::string& problem, StatusCode code) const {
  const json* v = find(key);
  return {code, source_ + ": field '" + prefix_ + key + "' = " + (v ? show(*v) : "null") + " " + problem};
}

Status JsonFields::bad_field(const char* key, const std::string& problem) const {
  return invalid_argument(source_ + ": field '" + prefix_ + key + "' " + problem);
}

Status JsonFields::read(const char* key, int64_t* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  if (!as_int(*v, out)) return wrong_type(key, "an integer");
  return Status::ok();
}

Status JsonFields::read(const char* key, double* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  if (!v->is_number()) return wrong_type(key, "a number");
  *out = v->get<double>();
  return Status::ok();
}

Status JsonFields::read(const char* key, bool* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  if (!v->is_boolean()) return wrong_type(key, "a boolean");
  *out = v->get<bool>();
  return Status::ok();
}

Status JsonFields::read(const char* key, std::string* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  if (!v->is_string()) return wrong_type(key, "a string");
  *out = v->get<std::string>();
  return Status::ok();
}

Status JsonFields::read(const char* key, std::vector<int64_t>* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  if (!v->is_array()) return wrong_type(key, "a list of integers");
  std::vector<int64_t> values;
  for (const json& e : *v) {
    int64_t x = 0;
    if (!as_int(e, &x)) return wrong_type(key, "a list of integers");
    values.push_back(x);
  }
  *out = std::move(values);
  return Status::ok();
}

Status JsonFields::read_int_or_list(const char* key, std::vector<int64_t>* out) const {
  const json* v = find(key);
  if (v == nullptr) return Status::ok();
  int64_t x = 0;
  if (as_int(*v, &x)) {
    *out = {x};
    return Status::ok();
  }
  if (!v->is_array()) return wrong_type(key, "an integer or a list of integers");
  return read(key, out);
}

Status JsonFields::require(const char* key, int64_t* out) const {
  if (!has(key)) return bad_field(key, "is required but missing or null");
  return read(key, out);
}

}  // namespace moex::config_detail
