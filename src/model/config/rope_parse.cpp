#include "model/config/rope_parse.h"

#include <cmath>

#include "model/config/json_fields.h"

namespace moex::config_detail {

using nlohmann::json;

double yarn_get_mscale(double scale, double m) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * m * std::log(scale) + 1.0;
}

Status parse_rope(const json& root, const std::string& source, double default_theta,
                  int64_t max_position_embeddings, RopeConfig* rope) {
  const JsonFields top(root, source);
  *rope = RopeConfig{};
  rope->theta = default_theta;
  MOEX_RETURN_IF_ERROR(top.read("rope_theta", &rope->theta));

  // HF gives "rope_scaling" precedence over "rope_parameters" when a file has both.
  const char* dict_key = top.has("rope_scaling") ? "rope_scaling" : top.has("rope_parameters") ? "rope_parameters" : nullptr;
  if (dict_key == nullptr) return Status::ok();
  const json& dict = *top.find(dict_key);
  if (!dict.is_object()) return top.bad_value(dict_key, "is not an object");
  const JsonFields rp(dict, source, std::string(dict_key) + ".");
  MOEX_RETURN_IF_ERROR(rp.read("rope_theta", &rope->theta));

  // "rope_type" is the current name; "type" the one older checkpoints use.
  std::string type = "default";
  const char* type_key = rp.has("rope_type") ? "rope_type" : "type";
  MOEX_RETURN_IF_ERROR(rp.read(type_key, &type));
  if (type == "default") return Status::ok();
  if (type != "yarn") {
    return rp.bad_value(type_key, "is not a supported rope type (default, yarn)", StatusCode::kUnsupported);
  }

  rope->yarn = true;
  // HF moves a top-level original_max_position_embeddings into the rope dict, overriding it.
  rope->original_max_position_embeddings = max_position_embeddings;
  MOEX_RETURN_IF_ERROR(rp.read("original_max_position_embeddings", &rope->original_max_position_embeddings));
  MOEX_RETURN_IF_ERROR(top.read("original_max_position_embeddings", &rope->original_max_position_embeddings));
  if (rope->original_max_position_embeddings <= 0) {
    return rp.bad_field("original_max_position_embeddings",
                        "= " + std::to_string(rope->original_max_position_embeddings) + " must be positive");
  }
  // Without a factor HF uses the ratio of the two context lengths.
  rope->factor = double(max_position_embeddings) / double(rope->original_max_position_embeddings);
  MOEX_RETURN_IF_ERROR(rp.read("factor", &rope->factor));
  if (!(rope->factor > 0.0) || !std::isfinite(rope->factor)) return rp.bad_value("factor", "must be positive");

  // HF reads these with `or`, so 0 also means the paper's default.
  MOEX_RETURN_IF_ERROR(rp.read("beta_fast", &rope->beta_fast));
  MOEX_RETURN_IF_ERROR(rp.read("beta_slow", &rope->beta_slow));
  if (rope->beta_fast == 0.0) rope->beta_fast = 32.0;
  if (rope->beta_slow == 0.0) rope->beta_slow = 1.0;
  MOEX_RETURN_IF_ERROR(rp.read("truncate", &rope->truncate));

  // 0 records "not given" (HF None), which changes attention_factor below.
  rope->mscale = 0.0;
  MOEX_RETURN_IF_ERROR(rp.read("mscale", &rope->mscale));
  MOEX_RETURN_IF_ERROR(rp.read("mscale_all_dim", &rope->mscale_all_dim));
  if (rp.has("attention_factor")) {
    MOEX_RETURN_IF_ERROR(rp.read("attention_factor", &rope->attention_factor));
    if (!(rope->attention_factor > 0.0)) return rp.bad_value("attention_factor", "must be positive");
  } else if (rope->mscale != 0.0 && rope->mscale_all_dim != 0.0) {
    rope->attention_factor =
        yarn_get_mscale(rope->factor, rope->mscale) / yarn_get_mscale(rope->factor, rope->mscale_all_dim);
  } else {
    rope->attention_factor = yarn_get_mscale(rope->factor, 1.0);
  }
  return Status::ok();
}

}  // namespace moex::config_detail
