// RoPE settings from config.json in either spelling: the Hub's "rope_theta" + "rope_scaling"
// ({"type": "yarn", ...}) or transformers 5's "rope_parameters" ({"rope_type": "yarn",
// "rope_theta": ...}). Internal to moex_weights.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "model/config/config.h"

namespace moex::config_detail {

// `default_theta` is the family's HF default (Mixtral 1e6, others 1e4); `max_position_embeddings`
// stands in for YaRN's original length when neither the rope dict nor the top level gives one.
Status parse_rope(const nlohmann::json& root, const std::string& source, double default_theta,
                  int64_t max_position_embeddings, RopeConfig* rope);

// YaRN's magnitude correction, 0.1 * m * ln(scale) + 1 (1 when scale <= 1), as in HF and DeepSeek.
double yarn_get_mscale(double scale, double m);

}  // namespace moex::config_detail
