// config.json parsing for the four families, in both spellings of the RoPE settings: the Hub's
// ("rope_theta" + "rope_scaling": {"type": ...}) and transformers 5's ("rope_parameters":
// {"rope_type": ..., "rope_theta": ...}, "dtype", "num_local_experts").
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "model/config/config.h"
#include "weights/checkpoint_util.h"

namespace moex {
namespace {

using nlohmann::json;

int64_t pick(std::mt19937_64& rng, int64_t lo, int64_t hi) { return lo + int64_t(rng() % uint64_t(hi - lo + 1)); }

// Rewrites a Hub-style config into the form transformers 5 writes.
json to_new_form(json c) {
  json rope = {{"rope_type", "default"}};
  if (c.contains("rope_scaling") && c["rope_scaling"].is_object()) {
    for (auto& [k, v] : c["rope_scaling"].items()) {
      if (k == "type") rope["rope_type"] = v;
      else rope[k] = v;
    }
  }
  rope["rope_theta"] = c.value("rope_theta", 10000.0);
  c.erase("rope_scaling");
  c.erase("rope_theta");
  c["rope_parameters"] = rope;
  if (c.contains("torch_dtype")) {
    c["dtype"] = c["torch_dtype"];
    c.erase("torch_dtype");
  }
  if (c.contains("num_experts") && c["model_type"] != "deepseek_v2") {
    c["num_local_experts"] = c["num_experts"];
    c.erase("num_experts");
  }
  return c;
}

json qwen3_hub(std::mt19937_64& rng) {
  const int64_t kv = pick(rng, 1, 4), heads = kv * pick(rng, 1, 4), experts = pick(rng, 4, 64);
  const int64_t layers = pick(rng, 2, 12);
  return {{"architectures", {"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"},
          {"vocab_size", pick(rng, 100, 200000)}, {"hidden_size", 16 * pick(rng, 1, 64)},
          {"head_dim", 2 * pick(rng, 4, 64)}, {"num_attention_heads", heads}, {"num_key_value_heads", kv},
          {"num_hidden_layers", layers}, {"intermediate_size", pick(rng, 8, 4096)},
          {"moe_intermediate_size", pick(rng, 8, 2048)}, {"num_experts", experts},
          {"num_experts_per_tok", pick(rng, 1, experts)}, {"decoder_sparse_step", pick(rng, 1, 3)},
          {"mlp_only_layers", {pick(rng, 0, layers - 1)}}, {"norm_topk_prob", bool(rng() % 2)},
          {"rope_theta", double(pick(rng, 1, 100)) * 10000.0}, {"rope_scaling", nullptr},
          {"max_position_embeddings", pick(rng, 512, 40960)}, {"rms_norm_eps", 1e-6},
          {"tie_word_embeddings", bool(rng() % 2)}, {"bos_token_id", pick(rng, 0, 99)},
          {"eos_token_id", pick(rng, 0, 99)}, {"torch_dtype", "bfloat16"}, {"use_sliding_window", false},
          {"sliding_window", nullptr}, {"max_window_layers", 48}, {"router_aux_loss_coef", 0.001}};
}

// DeepSeek-V3 as on the Hub: YaRN, noaux_tc over sigmoid scores, q compression.
json deepseek_v3_hub(std::mt19937_64& rng) {
  const int64_t n_group = pick(rng, 1, 8), group_size = pick(rng, 2, 8), topk_group = pick(rng, 1, n_group);
  const double factor = double(pick(rng, 2, 40));
  const double mscale = double(pick(rng, 1, 10)) / 10.0;
  return {{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"},
          {"vocab_size", pick(rng, 100, 129280)}, {"hidden_size", 16 * pick(rng, 1, 64)},
          {"num_hidden_layers", pick(rng, 4, 12)}, {"num_attention_heads", pick(rng, 1, 16)},
          {"num_key_value_heads", 16}, {"intermediate_size", pick(rng, 8, 4096)},
          {"moe_intermediate_size", pick(rng, 8, 2048)}, {"n_routed_experts", n_group * group_size},
          {"n_shared_experts", pick(rng, 0, 2)}, {"num_experts_per_tok", pick(rng, 1, topk_group * group_size)},
          {"n_group", n_group}, {"topk_group", topk_group}, {"topk_method", "noaux_tc"},
          {"scoring_func", "sigmoid"}, {"norm_topk_prob", true}, {"routed_scaling_factor", 2.5},
          {"first_k_dense_replace", pick(rng, 0, 3)}, {"moe_layer_freq", 1},
          {"q_lora_rank", 16 * pick(rng, 1, 96)}, {"kv_lora_rank", 16 * pick(rng, 1, 32)},
          {"qk_nope_head_dim", 8 * pick(rng, 1, 16)}, {"qk_rope_head_dim", 2 * pick(rng, 1, 32)},
          {"v_head_dim", 8 * pick(rng, 1, 16)}, {"rope_theta", 10000},
          {"rope_scaling",
           {{"type", "yarn"}, {"factor", factor}, {"original_max_position_embeddings", 4096}, {"beta_fast", 32},
            {"beta_slow", 1}, {"mscale", mscale}, {"mscale_all_dim", mscale}}},
          {"max_position_embeddings", int64_t(4096 * factor)}, {"rms_norm_eps", 1e-6},
          {"tie_word_embeddings", false}, {"bos_token_id", 0}, {"eos_token_id", 1}, {"torch_dtype", "bfloat16"},
          {"num_nextn_predict_layers", 1}, {"ep_size", 1}, {"quantization_config", {{"quant_method", "fp8"}}}};
}

// DeepSeek-V2-Lite as on the Hub: no q compression, greedy softmax routing, YaRN.
json deepseek_v2_lite_hub(std::mt19937_64& rng) {
  const int64_t experts = pick(rng, 2, 64);
  return {{"architectures", {"DeepseekV2ForCausalLM"}}, {"model_type", "deepseek_v2"},
          {"vocab_size", pick(rng, 100, 102400)}, {"hidden_size", 16 * pick(rng, 1, 64)},
          {"num_hidden_layers", pick(rng, 2, 27)}, {"num_attention_heads", pick(rng, 1, 16)},
          {"num_key_value_heads", 16}, {"intermediate_size", pick(rng, 8, 10944)},
          {"moe_intermediate_size", pick(rng, 8, 1408)}, {"n_routed_experts", experts},
          {"n_shared_experts", 2}, {"num_experts_per_tok", pick(rng, 1, experts)}, {"n_group", 1},
          {"topk_group", 1}, {"topk_method", "greedy"}, {"scoring_func", "softmax"}, {"norm_topk_prob", false},
          {"routed_scaling_factor", 1.0}, {"first_k_dense_replace", 1}, {"moe_layer_freq", 1},
          {"q_lora_rank", nullptr}, {"kv_lora_rank", 512}, {"qk_nope_head_dim", 128}, {"qk_rope_head_dim", 64},
          {"v_head_dim", 128}, {"rope_theta", 10000},
          {"rope_scaling",
           {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096}, {"beta_fast", 32},
            {"beta_slow", 1}, {"mscale", 0.707}, {"mscale_all_dim", 0.707}}},
          {"max_position_embeddings", 163840}, {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", false},
          {"bos_token_id", 100000}, {"eos_token_id", 100001}, {"torch_dtype", "bfloat16"}, {"aux_loss_alpha", 0.001}};
}

json mixtral_hub(std::mt19937_64& rng) {
  const int64_t kv = pick(rng, 1, 8), heads = kv * pick(rng, 1, 4), experts = pick(rng, 2, 16);
  return {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"},
          {"vocab_size", pick(rng, 100, 32768)}, {"hidden_size", 2 * heads * pick(rng, 1, 64)},
          {"num_attention_heads", heads}, {"num_key_value_heads", kv}, {"num_hidden_layers", pick(rng, 1, 32)},
          {"intermediate_size", pick(rng, 8, 14336)}, {"num_local_experts", experts},
          {"num_experts_per_tok", pick(rng, 1, experts)}, {"rope_theta", 1e6}, {"sliding_window", nullptr},
          {"max_position_embeddings", 32768}, {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false},
          {"bos_token_id", 1}, {"eos_token_id", 2}, {"torch_dtype", "bfloat16"}, {"router_aux_loss_coef", 0.02}};
}

Expected<ModelConfig> parse(const json& c) { return parse_model_config(c.dump(2), "dir/config.json"); }

ModelConfig parse_ok(const json& c) {
  Expected<ModelConfig> r = parse(c);
  EXPECT_TRUE(r.has_value()) << r.status().message() << "\n" << c.dump();
  return r.has_value() ? r.value() : ModelConfig{};
}

// Each family is checked in both spellings of the same config.
class ConfigForms : public ::testing::TestWithParam<bool> {
 protected:
  json form(const json& hub) const { return GetParam() ? to_new_form(hub) : hub; }
};
INSTANTIATE_TEST_SUITE_P(Forms, ConfigForms, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "RopeParameters" : "RopeScaling"; });

TEST_P(ConfigForms, Qwen3Moe) {
  std::mt19937_64 rng(testing::fresh_seed());
  for (int trial = 0; trial < 20; ++trial) {
    const json hub = qwen3_hub(rng);
    const ModelConfig c = parse_ok(form(hub));
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(c.arch, Arch::kQwen3Moe);
    EXPECT_STREQ(arch_name(c.arch), "Qwen3MoeForCausalLM");
    EXPECT_EQ(c.model_type, "qwen3_moe");
    EXPECT_EQ(c.vocab_size, hub["vocab_size"]);
    EXPECT_EQ(c.hidden_size, hub["hidden_size"]);
    EXPECT_EQ(c.num_layers, hub["num_hidden_layers"]);
    EXPECT_EQ(c.num_attention_heads, hub["num_attention_heads"]);
    EXPECT_EQ(c.num_key_value_heads, hub["num_key_value_heads"]);
    EXPECT_EQ(c.head_dim, hub["head_dim"]);  // not hidden / heads
    EXPECT_TRUE(c.qk_norm);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_EQ(c.intermediate_size, hub["intermediate_size"]);
    EXPECT_EQ(c.moe_intermediate_size, hub["moe_intermediate_size"]);
    EXPECT_EQ(c.num_experts, hub["num_experts"]);
    EXPECT_EQ(c.num_experts_per_tok, hub["num_experts_per_tok"]);
    EXPECT_EQ(c.norm_topk_prob, hub["norm_topk_prob"]);
    EXPECT_EQ(c.decoder_sparse_step, hub["decoder_sparse_step"]);
    EXPECT_EQ(c.mlp_only_layers, hub["mlp_only_layers"].get<std::vector<int64_t>>());
    EXPECT_EQ(c.scoring_func, ops::ScoringFunc::kSoftmax);
    EXPECT_EQ(c.topk_method, ops::TopkMethod::kGreedy);
    EXPECT_FALSE(c.has_score_correction_bias());
    EXPECT_EQ(c.n_shared_experts, 0);
    EXPECT_DOUBLE_EQ(c.rope.theta, hub["rope_theta"].get<double>());
    EXPECT_FALSE(c.rope.yarn);
    EXPECT_FALSE(c.rope.interleave);
    EXPECT_DOUBLE_EQ(c.rope.attention_factor, 1.0);
    EXPECT_EQ(c.max_position_embeddings, hub["max_position_embeddings"]);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_EQ(c.tie_word_embeddings, hub["tie_word_embeddings"]);
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{hub["eos_token_id"].get<int64_t>()});
    ASSERT_TRUE(c.bos_token_id.has_value());
    EXPECT_EQ(*c.bos_token_id, hub["bos_token_id"]);
    EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(double(c.head_dim)));
    const int64_t only = hub["mlp_only_layers"][0];
    for (int64_t i = 0; i < c.num_layers; ++i) {
      EXPECT_EQ(c.is_moe_layer(i), i != only && (i + 1) % c.decoder_sparse_step == 0) << "layer " << i;
    }
  }
}

TEST_P(ConfigForms, Qwen3MoeYarnAndSlidingWindow) {
  std::mt19937_64 rng(testing::fresh_seed());
  json hub = qwen3_hub(rng);
  const double factor = double(pick(rng, 2, 8));
  hub["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", factor}, {"original_max_position_embeddings", 32768}};
  hub["use_sliding_window"] = true;
  hub["sliding_window"] = pick(rng, 16, 8192);
  const ModelConfig c = parse_ok(form(hub));
  EXPECT_TRUE(c.rope.yarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, factor);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
  // Without mscale / mscale_all_dim HF scales cos and sin by 0.1 ln(factor) + 1.
  EXPECT_NEAR(c.rope.attention_factor, 0.1 * std::log(factor) + 1.0, 1e-12);
  EXPECT_EQ(c.rope.mscale, 0.0);  // not given
  EXPECT_EQ(c.rope.mscale_all_dim, 0.0);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(double(c.head_dim)));  // GQA: no mscale in the scale
  EXPECT_EQ(c.sliding_window, hub["sliding_window"]);
}

TEST_P(ConfigForms, DeepseekV3) {
  std::mt19937_64 rng(testing::fresh_seed());
  for (int trial = 0; trial < 20; ++trial) {
    const json hub = deepseek_v3_hub(rng);
    const ModelConfig c = parse_ok(form(hub));
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(c.arch, Arch::kDeepseekV3);
    EXPECT_TRUE(c.is_mla());
    EXPECT_EQ(c.q_lora_rank, hub["q_lora_rank"]);
    EXPECT_EQ(c.kv_lora_rank, hub["kv_lora_rank"]);
    EXPECT_EQ(c.qk_nope_head_dim, hub["qk_nope_head_dim"]);
    EXPECT_EQ(c.qk_rope_head_dim, hub["qk_rope_head_dim"]);
    EXPECT_EQ(c.v_head_dim, hub["v_head_dim"]);
    EXPECT_EQ(c.num_experts, hub["n_routed_experts"]);
    EXPECT_EQ(c.n_shared_experts, hub["n_shared_experts"]);
    EXPECT_EQ(c.num_experts_per_tok, hub["num_experts_per_tok"]);
    EXPECT_EQ(c.n_group, hub["n_group"]);
    EXPECT_EQ(c.topk_group, hub["topk_group"]);
    EXPECT_EQ(c.topk_method, ops::TopkMethod::kNoauxTc);
    EXPECT_EQ(c.scoring_func, ops::ScoringFunc::kSigmoid);
    EXPECT_TRUE(c.has_score_correction_bias());
    EXPECT_TRUE(c.norm_topk_prob);
    EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
    EXPECT_EQ(c.first_k_dense_replace, hub["first_k_dense_replace"]);
    EXPECT_EQ(c.moe_layer_freq, 1);
    EXPECT_TRUE(c.rope.yarn);
    EXPECT_TRUE(c.rope.interleave);
    const double factor = hub["rope_scaling"]["factor"];
    const double mscale_all_dim = hub["rope_scaling"]["mscale_all_dim"];
    EXPECT_DOUBLE_EQ(c.rope.factor, factor);
    EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
    EXPECT_DOUBLE_EQ(c.rope.mscale, hub["rope_scaling"]["mscale"].get<double>());
    EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, mscale_all_dim);
    EXPECT_NEAR(c.rope.attention_factor, 1.0, 1e-12);  // mscale == mscale_all_dim cancel out
    // HF DeepseekV3Attention: qk_head_dim^-0.5 * yarn_get_mscale(factor, mscale_all_dim)^2.
    const double m = 0.1 * mscale_all_dim * std::log(factor) + 1.0;
    EXPECT_NEAR(c.attention_scale(), m * m / std::sqrt(double(c.qk_nope_head_dim + c.qk_rope_head_dim)), 1e-12);
    EXPECT_EQ(c.bos_token_id.value_or(-1), 0);
    EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{1});
    for (int64_t i = 0; i < c.num_layers; ++i) EXPECT_EQ(c.is_moe_layer(i), i >= c.first_k_dense_replace) << i;
  }
}

TEST_P(ConfigForms, DeepseekV2Lite) {
  std::mt19937_64 rng(testing::fresh_seed());
  for (int trial = 0; trial < 10; ++trial) {
    const json hub = deepseek_v2_lite_hub(rng);
    const ModelConfig c = parse_ok(form(hub));
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(c.arch, Arch::kDeepseekV2);
    EXPECT_EQ(c.q_lora_rank, 0);  // null: q projected directly
    EXPECT_EQ(c.kv_lora_rank, 512);
    EXPECT_EQ(c.num_experts, hub["n_routed_experts"]);
    EXPECT_EQ(c.num_experts_per_tok, hub["num_experts_per_tok"]);
    EXPECT_EQ(c.n_shared_experts, 2);
    EXPECT_EQ(c.topk_method, ops::TopkMethod::kGreedy);
    EXPECT_EQ(c.scoring_func, ops::ScoringFunc::kSoftmax);
    EXPECT_FALSE(c.has_score_correction_bias());
    EXPECT_FALSE(c.norm_topk_prob);
    EXPECT_EQ(c.n_group, 1);
    EXPECT_EQ(c.topk_group, 1);
    EXPECT_TRUE(c.rope.interleave);
    EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 0.707);
    const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
    EXPECT_NEAR(c.attention_scale(), m * m / std::sqrt(192.0), 1e-12);
    EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{100001});
    EXPECT_EQ(c.bos_token_id.value_or(-1), 100000);
    EXPECT_FALSE(c.is_moe_layer(0));
    for (int64_t i = 1; i < c.num_layers; ++i) EXPECT_TRUE(c.is_moe_layer(i)) << i;
  }
}

TEST_P(ConfigForms, DeepseekV2GroupLimitedAndLayerFrequency) {
  std::mt19937_64 rng(testing::fresh_seed());
  json hub = deepseek_v2_lite_hub(rng);
  const int64_t n_group = pick(rng, 2, 8), group_size = pick(rng, 1, 20), topk_group = pick(rng, 1, n_group);
  hub["n_routed_experts"] = n_group * group_size;
  hub["n_group"] = n_group;
  hub["topk_group"] = topk_group;
  hub["num_experts_per_tok"] = pick(rng, 1, topk_group * group_size);
  hub["topk_method"] = "group_limited_greedy";
  hub["q_lora_rank"] = 1536;
  hub["first_k_dense_replace"] = pick(rng, 0, 3);
  hub["moe_layer_freq"] = pick(rng, 1, 3);
  hub["num_hidden_layers"] = 12;
  hub["rope_scaling"] = nullptr;
  hub["max_position_embeddings"] = 8192;
  const ModelConfig c = parse_ok(form(hub));
  EXPECT_EQ(c.topk_method, ops::TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(c.n_group, n_group);
  EXPECT_EQ(c.topk_group, topk_group);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_FALSE(c.rope.yarn);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(192.0));
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(c.is_moe_layer(i), i >= c.first_k_dense_replace && i % c.moe_layer_freq == 0) << i;
  }
  // Spot values: first_k_dense_replace 1 and moe_layer_freq 2 make layers 2, 4, ... sparse.
  hub["first_k_dense_replace"] = 1;
  hub["moe_layer_freq"] = 2;
  const ModelConfig d = parse_ok(form(hub));
  EXPECT_FALSE(d.is_moe_layer(0));
  EXPECT_FALSE(d.is_moe_layer(1));
  EXPECT_TRUE(d.is_moe_layer(2));
  EXPECT_FALSE(d.is_moe_layer(3));
  EXPECT_TRUE(d.is_moe_layer(4));
}

TEST_P(ConfigForms, DeepseekYarnVariants) {
  std::mt19937_64 rng(testing::fresh_seed());
  json hub = deepseek_v2_lite_hub(rng);
  const double factor = double(pick(rng, 2, 64)), all_dim = double(pick(rng, 1, 10)) / 10.0;
  const int64_t orig = 1024 * pick(rng, 1, 8);
  // mscale omitted: HF's cos/sin factor falls back to mscale(factor, 1) while the softmax scale
  // still uses mscale_all_dim; original_max_position_embeddings at top level wins.
  hub["rope_scaling"] = {{"type", "yarn"}, {"factor", factor}, {"mscale_all_dim", all_dim}, {"beta_fast", 0}};
  hub["original_max_position_embeddings"] = orig;
  ModelConfig c = parse_ok(form(hub));
  EXPECT_NEAR(c.rope.attention_factor, 0.1 * std::log(factor) + 1.0, 1e-12);
  const double m = 0.1 * all_dim * std::log(factor) + 1.0;
  EXPECT_NEAR(c.attention_scale(), m * m / std::sqrt(192.0), 1e-12);
  EXPECT_EQ(c.rope.original_max_position_embeddings, orig);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);  // HF reads it with `or`: 0 means the default
  EXPECT_TRUE(c.rope.truncate);
  // An explicit attention_factor wins; mscale_all_dim 0 leaves the softmax scale alone; without
  // a factor HF uses max_position_embeddings / original.
  hub.erase("original_max_position_embeddings");
  hub["rope_scaling"] = {{"type", "yarn"}, {"original_max_position_embeddings", 4096}, {"attention_factor", 0.75},
                         {"mscale", 1.0}, {"mscale_all_dim", 0}, {"truncate", false}};
  hub["max_position_embeddings"] = 4096 * 8;
  c = parse_ok(form(hub));
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 0.75);
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(192.0));
  // V3 can turn interleaving off; V2 cannot (HF V2 rotates complex pairs).
  json v3 = deepseek_v3_hub(rng);
  v3["rope_interleave"] = false;
  EXPECT_FALSE(parse_ok(form(v3)).rope.interleave);
  hub["rope_interleave"] = false;
  EXPECT_TRUE(parse_ok(form(hub)).rope.interleave);
}

TEST_P(ConfigForms, Mixtral) {
  std::mt19937_64 rng(testing::fresh_seed());
  for (int trial = 0; trial < 20; ++trial) {
    json hub = mixtral_hub(rng);
    const bool windowed = trial % 2 == 1;
    if (windowed) hub["sliding_window"] = pick(rng, 16, 4096);
    const ModelConfig c = parse_ok(form(hub));
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(c.arch, Arch::kMixtral);
    EXPECT_EQ(c.head_dim, hub["hidden_size"].get<int64_t>() / hub["num_attention_heads"].get<int64_t>());
    EXPECT_FALSE(c.qk_norm);
    EXPECT_EQ(c.sliding_window, windowed ? hub["sliding_window"].get<int64_t>() : 0);
    EXPECT_EQ(c.num_experts, hub["num_local_experts"]);
    EXPECT_EQ(c.num_experts_per_tok, hub["num_experts_per_tok"]);
    EXPECT_EQ(c.moe_intermediate_size, hub["intermediate_size"]);
    EXPECT_TRUE(c.norm_topk_prob);
    EXPECT_EQ(c.scoring_func, ops::ScoringFunc::kSoftmax);
    EXPECT_EQ(c.topk_method, ops::TopkMethod::kGreedy);
    EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(double(c.head_dim)));
    for (int64_t i = 0; i < c.num_layers; ++i) EXPECT_TRUE(c.is_moe_layer(i));
  }
}

TEST(Config, MissingFieldsTakeHfDefaults) {
  const ModelConfig v3 = parse_ok({{"architectures", {"DeepseekV3ForCausalLM"}}});
  EXPECT_EQ(v3.vocab_size, 129280);
  EXPECT_EQ(v3.hidden_size, 7168);
  EXPECT_EQ(v3.num_layers, 61);
  EXPECT_EQ(v3.num_experts, 256);
  EXPECT_EQ(v3.num_experts_per_tok, 8);
  EXPECT_EQ(v3.n_group, 8);
  EXPECT_EQ(v3.topk_group, 4);
  EXPECT_EQ(v3.first_k_dense_replace, 3);
  EXPECT_EQ(v3.q_lora_rank, 1536);
  EXPECT_DOUBLE_EQ(v3.routed_scaling_factor, 2.5);
  EXPECT_EQ(v3.topk_method, ops::TopkMethod::kNoauxTc);
  EXPECT_EQ(v3.scoring_func, ops::ScoringFunc::kSigmoid);
  EXPECT_TRUE(v3.norm_topk_prob);
  EXPECT_EQ(v3.model_type, "deepseek_v3");

  const ModelConfig qwen = parse_ok({{"model_type", "qwen3_moe"}});  // no "architectures": model_type decides
  EXPECT_EQ(qwen.arch, Arch::kQwen3Moe);
  EXPECT_EQ(qwen.num_experts, 128);
  EXPECT_EQ(qwen.num_key_value_heads, 4);
  EXPECT_EQ(qwen.head_dim, 64);  // hidden 2048 / 32 heads
  EXPECT_FALSE(qwen.bos_token_id.has_value());
  EXPECT_TRUE(qwen.eos_token_ids.empty());

  const ModelConfig mix = parse_ok({{"architectures", {"MixtralForCausalLM"}}, {"num_key_value_heads", nullptr}});
  EXPECT_EQ(mix.num_key_value_heads, 32);  // null: one KV head per head
  EXPECT_DOUBLE_EQ(mix.rope.theta, 1e6);

  // Another model_type under a supported architecture runs as that architecture.
  const ModelConfig kimi = parse_ok({{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "kimi_k2"}});
  EXPECT_EQ(kimi.arch, Arch::kDeepseekV3);
  EXPECT_EQ(kimi.model_type, "kimi_k2");
}

TEST(Config, EosListAndGenerationConfig) {
  std::mt19937_64 rng(testing::fresh_seed());
  json hub = qwen3_hub(rng);
  const int64_t a = pick(rng, 0, 1000), b = a + pick(rng, 1, 1000), extra = b + pick(rng, 1, 1000);
  hub["eos_token_id"] = {a, b};
  hub.erase("bos_token_id");
  testing::TempDir dir;
  testing::write_text(dir.file("config.json"), hub.dump());
  Expected<ModelConfig> plain = load_model_config(dir.path());
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  EXPECT_EQ(plain->eos_token_ids, (std::vector<int64_t>{a, b}));
  EXPECT_FALSE(plain->bos_token_id.has_value());

  testing::write_text(dir.file("generation_config.json"),
                      json{{"bos_token_id", a}, {"eos_token_id", {b, extra}}, {"do_sample", true}}.dump());
  Expected<ModelConfig> merged = load_model_config(dir.path());
  ASSERT_TRUE(merged.has_value()) << merged.status().message();
  EXPECT_EQ(merged->eos_token_ids, (std::vector<int64_t>{a, b, extra}));
  EXPECT_EQ(merged->bos_token_id.value_or(-1), a);

  testing::write_text(dir.file("generation_config.json"), json{{"eos_token_id", "x"}}.dump());
  Expected<ModelConfig> bad = load_model_config(dir.path());
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.status().message().find("generation_config.json"), std::string::npos) << bad.status().message();

  testing::TempDir empty;
  Expected<ModelConfig> missing = load_model_config(empty.path());
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().code(), StatusCode::kIoError);
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
}

// A refusal names the source, the field and (when there is one) the value, in one line.
void expect_refused(const json& c, StatusCode code, std::initializer_list<std::string> words) {
  Expected<ModelConfig> r = parse(c);
  ASSERT_FALSE(r.has_value()) << c.dump();
  EXPECT_EQ(int(r.status().code()), int(code)) << r.status().message();
  const std::string& m = r.status().message();
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  EXPECT_NE(m.find("dir/config.json"), std::string::npos) << m;
  for (const std::string& w : words) EXPECT_NE(m.find(w), std::string::npos) << "missing '" << w << "' in: " << m;
}

TEST_P(ConfigForms, UnsupportedValuesAreRefused) {
  std::mt19937_64 rng(testing::fresh_seed());
  const json v3 = deepseek_v3_hub(rng), v2 = deepseek_v2_lite_hub(rng), qwen = qwen3_hub(rng), mix = mixtral_hub(rng);
  auto with = [&](json c, const char* key, json value) {
    c[key] = std::move(value);
    return form(c);
  };
  const auto kBad = StatusCode::kInvalidArgument;
  const auto kUnsup = StatusCode::kUnsupported;
  expect_refused(with(qwen, "architectures", {"LlamaForCausalLM"}), kUnsup, {"architectures", "LlamaForCausalLM"});
  expect_refused(with(qwen, "architectures", json::array()), kBad, {"architectures"});
  json untyped = form(qwen);
  untyped.erase("architectures");
  untyped.erase("model_type");
  expect_refused(untyped, kBad, {"architectures", "missing"});
  untyped["model_type"] = "llama";
  expect_refused(untyped, kUnsup, {"model_type", "llama"});
  // RoPE types other than default and yarn, in either spelling.
  expect_refused(with(mix, "rope_scaling", {{"type", "linear"}, {"factor", 2.0}}), kUnsup, {"type", "linear"});
  expect_refused(with(qwen, "rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}), kUnsup, {"rope_type", "dynamic"});
  expect_refused(with(v3, "rope_scaling", {{"type", "yarn"}, {"factor", -4.0}}), kBad, {"factor", "-4"});
  // Routing.
  expect_refused(with(v3, "scoring_func", "tanh"), kUnsup, {"scoring_func", "tanh"});
  expect_refused(with(v2, "scoring_func", "sigmoid"), kUnsup, {"scoring_func", "sigmoid", "DeepseekV2ForCausalLM"});
  expect_refused(with(v3, "topk_method", "random"), kUnsup, {"topk_method", "random"});
  expect_refused(with(v3, "topk_method", "greedy"), kUnsup, {"topk_method", "greedy", "DeepseekV3ForCausalLM"});
  json v3_groups = v3;
  v3_groups["n_routed_experts"] = 12;
  v3_groups["n_group"] = 5;
  v3_groups["num_experts_per_tok"] = 1;
  expect_refused(form(v3_groups), kBad, {"n_group", "5", "12"});
  json v2_groups = v2;
  v2_groups["topk_method"] = "group_limited_greedy";
  v2_groups["n_routed_experts"] = 16;
  v2_groups["num_experts_per_tok"] = 2;
  v2_groups["n_group"] = 3;
  v2_groups["topk_group"] = 2;
  expect_refused(form(v2_groups), kBad, {"n_group", "3", "16"});
  v2_groups["n_group"] = 4;
  v2_groups["topk_group"] = 5;
  expect_refused(form(v2_groups), kBad, {"topk_group", "5"});
  v2_groups["topk_group"] = 1;
  v2_groups["num_experts_per_tok"] = 5;  // more than one group of 4 holds
  expect_refused(form(v2_groups), kBad, {"num_experts_per_tok", "5"});
  const int64_t experts = mix["num_local_experts"];
  expect_refused(with(mix, "num_experts_per_tok", experts + 1), kBad, {"num_experts_per_tok", std::to_string(experts + 1)});
  expect_refused(with(qwen, "num_experts_per_tok", 0), kBad, {"num_experts_per_tok", "0"});
  // Required fields with no HF default.
  json v2_no_topk = v2;
  v2_no_topk.erase("num_experts_per_tok");
  expect_refused(form(v2_no_topk), kBad, {"num_experts_per_tok", "missing"});
  json v2_no_group = v2_groups;
  v2_no_group.erase("n_group");
  expect_refused(form(v2_no_group), kBad, {"n_group", "missing"});
  // Wrong JSON types.
  expect_refused(with(qwen, "hidden_size", "2048"), kBad, {"hidden_size", "\"2048\"", "integer"});
  expect_refused(with(qwen, "num_hidden_layers", 2.5), kBad, {"num_hidden_layers", "2.5"});
  expect_refused(with(v3, "norm_topk_prob", "true"), kBad, {"norm_topk_prob", "boolean"});
  expect_refused(with(qwen, "mlp_only_layers", {1.5}), kBad, {"mlp_only_layers"});
  expect_refused(with(mix, "eos_token_id", "</s>"), kBad, {"eos_token_id", "</s>"});
  expect_refused(with(v3, "rms_norm_eps", "1e-6"), kBad, {"rms_norm_eps"});
  json rope_string = form(v3);
  rope_string[GetParam() ? "rope_parameters" : "rope_scaling"] = "yarn";
  expect_refused(rope_string, kBad, {GetParam() ? "rope_parameters" : "rope_scaling", "object"});
  // Shapes that cannot work.
  expect_refused(with(qwen, "num_key_value_heads", qwen["num_attention_heads"].get<int64_t>() + 1), kBad,
                 {"num_key_value_heads"});
  expect_refused(with(v3, "qk_rope_head_dim", 7), kBad, {"qk_rope_head_dim", "7"});
  expect_refused(with(mix, "hidden_size", -8), kBad, {"hidden_size", "-8"});
  expect_refused(with(v2, "moe_layer_freq", 0), kBad, {"moe_layer_freq", "0"});
}

TEST(Config, MalformedJsonIsRefused) {
  Expected<ModelConfig> r = parse_model_config("{\"architectures\": [\"MixtralForCausalLM\"", "x/config.json");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.status().message().find("x/config.json"), std::string::npos);
  Expected<ModelConfig> arr = parse_model_config("[1, 2]", "x/config.json");
  ASSERT_FALSE(arr.has_value());
  EXPECT_NE(arr.status().message().find("object"), std::string::npos);
}

}  // namespace
}  // namespace moex
