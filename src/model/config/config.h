// The architecture description read from a checkpoint's config.json.
// One struct for the three families; fields a family does not use keep their defaults.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "ops/routing.h"

namespace moex {

enum class Arch : uint8_t { kQwen3Moe, kDeepseekV2, kDeepseekV3, kMixtral };
const char* arch_name(Arch a);  // the HF "architectures" string

struct RopeConfig {
  double theta = 10000.0;
  // YaRN (DeepSeek); type "yarn" sets `yarn` to true. Other rope_scaling types are refused.
  bool yarn = false;
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;          // with YaRN: 0 when config.json omits it (HF None)
  double mscale_all_dim = 0.0;  // 0 when omitted
  // Factor on cos/sin, as HF computes it: "attention_factor" if given, else
  // mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set, else
  // mscale(factor, 1); 1 without YaRN.
  double attention_factor = 1.0;
  bool truncate = true;  // YaRN: floor/ceil the correction range (HF "truncate", default true)
  // Rotary pairs are (x0, x1), (x2, x3)... instead of (x_i, x_{i+d/2}): DeepSeek-V2 always,
  // DeepSeek-V3 when "rope_interleave" (default true).
  bool interleave = false;
};

struct ModelConfig {
  Arch arch = Arch::kQwen3Moe;
  std::string model_type;  // "qwen3_moe", "deepseek_v2", "deepseek_v3", "mixtral"

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::string torch_dtype = "bfloat16";  // dtype the checkpoint declares
  std::vector<int64_t> eos_token_ids;    // from config.json (and generation_config.json if present)
  std::optional<int64_t> bos_token_id;
  RopeConfig rope;

  // Attention, GQA families (Qwen3-MoE, Mixtral).
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;            // config head_dim, else hidden / heads; 0 for MLA
  bool qk_norm = false;            // Qwen3: per-head RMSNorm on q and k before RoPE
  int64_t sliding_window = 0;      // Mixtral; 0 = none (null in config.json)

  // Attention, MLA (DeepSeek).
  int64_t q_lora_rank = 0;         // 0 = no q compression (null in config.json)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // Dense MLP (DeepSeek's first_k_dense_replace layers, Qwen3's mlp_only_layers).
  int64_t intermediate_size = 0;

  // MoE.
  int64_t num_experts = 0;          // routed experts
  int64_t num_experts_per_tok = 0;  // top-k
  int64_t moe_intermediate_size = 0;
  int64_t n_shared_experts = 0;     // DeepSeek; shared MLP width = n_shared * moe_intermediate_size
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  std::vector<int64_t> mlp_only_layers;  // Qwen3-MoE
  int64_t decoder_sparse_step = 1;       // Qwen3-MoE
  ops::ScoringFunc scoring_func = ops::ScoringFunc::kSoftmax;
  ops::TopkMethod topk_method = ops::TopkMethod::kGreedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;

  bool is_mla() const { return arch == Arch::kDeepseekV2 || arch == Arch::kDeepseekV3; }
  // noaux_tc routing adds a per-expert e_score_correction_bias [num_experts] to the selection scores.
  bool has_score_correction_bias() const { return topk_method == ops::TopkMethod::kNoauxTc; }
  // True when layer `i` has routed experts (false: a dense MLP of intermediate_size).
  bool is_moe_layer(int64_t i) const;
  // Softmax scale of attention, including YaRN's mscale^2 correction for MLA.
  double attention_scale() const;
};

// Parse <dir>/config.json (and generation_config.json when present). Unknown fields are
// ignored; unsupported values (an unknown architecture, rope type, scoring function...) are
// refused with a message naming the field.
Expected<ModelConfig> load_model_config(const std::string& model_dir);
Expected<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source_name);
// Merges generation_config.json: its eos_token_id (int or list) ids are added to the config's,
// and its bos_token_id fills a missing one.
Status apply_generation_config(const std::string& json_text, const std::string& source_name, ModelConfig* config);

}  // namespace moex
