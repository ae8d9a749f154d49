// Typed reads of config.json fields. Each read leaves the output untouched when the field is
// absent or null (so the caller's HF default stands) and refuses a value of the wrong JSON type
// with a one-line message naming the source, the field and the value. Internal to moex_weights.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace moex::config_detail {

class JsonFields {
 public:
  // `obj` must outlive this reader; `prefix` names a nested object ("rope_scaling.").
  JsonFields(const nlohmann::json& obj, std::string source, std::string prefix = "")
      : obj_(obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

  // True when the field exists and is not null.
  bool has(const char* key) const;
  const nlohmann::json* find(const char* key) const;  // nullptr when absent or null
  // True when the field is present with the value null (HF gives some nulls a meaning).
  bool is_null(const char* key) const { return obj_.is_object() && obj_.contains(key) && obj_.at(key).is_null(); }
  const nlohmann::json& obj() const { return obj_; }

  Status read(const char* key, int64_t* out) const;
  Status read(const char* key, double* out) const;
  Status read(const char* key, bool* out) const;
  Status read(const char* key, std::string* out) const;
  Status read(const char* key, std::vector<int64_t>* out) const;
  // Int or list of ints (eos_token_id); a single int becomes a list of one.
  Status read_int_or_list(const char* key, std::vector<int64_t>* out) const;
  // Like read(), but an absent or null field is an error.
  Status require(const char* key, int64_t* out) const;

  // "<source>: field '<prefix><key>' = <value> <problem>"
  Status bad_value(const char* key, const std::string& problem,
                   StatusCode code = StatusCode::kInvalidArgument) const;
  // "<source>: field '<prefix><key>' <problem>" for fields that may be absent.
  Status bad_field(const char* key, const std::string& problem) const;
  std::string field_name(const char* key) const { return prefix_ + key; }
  const std::string& source() const { return source_; }

 private:
  Status wrong_type(const char* key, const char* expected) const;

  const nlohmann::json& obj_;
  std::string source_;
  std::string prefix_;
};

}  // namespace moex::config_detail
