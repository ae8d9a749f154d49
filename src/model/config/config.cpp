// config.json -> ModelConfig. Every default below is the HF config class's default
// (transformers 5: Qwen3MoeConfig, DeepseekV2Config, DeepseekV3Config, MixtralConfig), so a
// field missing from the file means what it means to transformers.
#include "model/config/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "model/config/json_fields.h"
#include "model/config/rope_parse.h"

namespace moex {
namespace {

using config_detail::JsonFields;
using nlohmann::json;

struct ArchName {
  Arch arch;
  const char* architecture;  // HF "architectures" entry
  const char* model_type;
};
constexpr ArchName kArchNames[] = {
    {Arch::kQwen3Moe, "Qwen3MoeForCausalLM", "qwen3_moe"},
    {Arch::kDeepseekV2, "DeepseekV2ForCausalLM", "deepseek_v2"},
    {Arch::kDeepseekV3, "DeepseekV3ForCausalLM", "deepseek_v3"},
    {Arch::kMixtral, "MixtralForCausalLM", "mixtral"},
};
constexpr char kSupported[] = "(Qwen3MoeForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, MixtralForCausalLM)";

// "architectures"[0] decides, as in HF; "model_type" is the fallback for configs written by a
// bare config class (to_json_string() leaves architectures null).
Status detect_arch(const JsonFields& f, ModelConfig* c) {
  if (const json* archs = f.find("architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return f.bad_value("architectures", "is not a non-empty list of strings");
    }
    const std::string& name = (*archs)[0].get_ref<const std::string&>();
    for (const ArchName& a : kArchNames) {
      if (name == a.architecture) {
        c->arch = a.arch;
        c->model_type = a.model_type;
        return f.read("model_type", &c->model_type);  // e.g. "kimi_k2" runs as DeepseekV3ForCausalLM
      }
    }
    return f.bad_value("architectures", std::string("is not a supported architecture ") + kSupported,
                       StatusCode::kUnsupported);
  }
  if (!f.has("model_type")) return f.bad_field("architectures", "is required (or \"model_type\") but missing");
  MOEX_RETURN_IF_ERROR(f.read("model_type", &c->model_type));
  for (const ArchName& a : kArchNames) {
    if (c->model_type == a.model_type) {
      c->arch = a.arch;
      return Status::ok();
    }
  }
  return f.bad_value("model_type", "is not a supported model type (qwen3_moe, deepseek_v2, deepseek_v3, mixtral)",
                     StatusCode::kUnsupported);
}

// Fields every family has, read over the family defaults already in `c`.
Status read_common(const JsonFields& f, ModelConfig* c) {
  MOEX_RETURN_IF_ERROR(f.read("vocab_size", &c->vocab_size));
  MOEX_RETURN_IF_ERROR(f.read("hidden_size", &c->hidden_size));
  MOEX_RETURN_IF_ERROR(f.read("intermediate_size", &c->intermediate_size));
  MOEX_RETURN_IF_ERROR(f.read("num_hidden_layers", &c->num_layers));
  MOEX_RETURN_IF_ERROR(f.read("num_attention_heads", &c->num_attention_heads));
  c->num_key_value_heads = c->num_attention_heads;  // HF: null or absent means one KV head per head
  MOEX_RETURN_IF_ERROR(f.read("num_key_value_heads", &c->num_key_value_heads));
  MOEX_RETURN_IF_ERROR(f.read("max_position_embeddings", &c->max_position_embeddings));
  MOEX_RETURN_IF_ERROR(f.read("rms_norm_eps", &c->rms_norm_eps));
  MOEX_RETURN_IF_ERROR(f.read("tie_word_embeddings", &c->tie_word_embeddings));
  // transformers 5 writes "dtype"; older files "torch_dtype".
  MOEX_RETURN_IF_ERROR(f.read("torch_dtype", &c->torch_dtype));
  MOEX_RETURN_IF_ERROR(f.read("dtype", &c->torch_dtype));
  MOEX_RETURN_IF_ERROR(f.read_int_or_list("eos_token_id", &c->eos_token_ids));
  if (f.is_null("bos_token_id")) c->bos_token_id.reset();
  if (f.has("bos_token_id")) {
    int64_t v = 0;
    MOEX_RETURN_IF_ERROR(f.read("bos_token_id", &v));
    c->bos_token_id = v;
  }
  if (f.is_null("eos_token_id")) c->eos_token_ids.clear();
  return Status::ok();
}

// Back to struct defaults, keeping what detect_arch found.
void reset(ModelConfig* c) {
  ModelConfig fresh;
  fresh.arch = c->arch;
  fresh.model_type = c->model_type;
  *c = std::move(fresh);
}

// Reads the first of `keys` present (a field and its HF attribute_map aliases).
Status read_aliased(const JsonFields& f, std::initializer_list<const char*> keys, int64_t* out) {
  for (const char* k : keys) {
    if (f.has(k)) return f.read(k, out);
  }
  return Status::ok();
}

Status parse_qwen3(const JsonFields& f, ModelConfig* c) {
  reset(c);
  c->vocab_size = 151936;
  c->hidden_size = 2048;
  c->intermediate_size = 6144;
  c->num_layers = 24;
  c->num_attention_heads = 32;
  c->max_position_embeddings = 32768;
  c->num_experts = 128;
  c->num_experts_per_tok = 8;
  c->moe_intermediate_size = 768;
  MOEX_RETURN_IF_ERROR(read_common(f, c));
  if (!f.has("num_key_value_heads")) c->num_key_value_heads = 4;
  c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  MOEX_RETURN_IF_ERROR(f.read("head_dim", &c->head_dim));
  c->qk_norm = true;  // Qwen3 always normalises q and k per head
  bool use_sliding_window = false;
  MOEX_RETURN_IF_ERROR(f.read("use_sliding_window", &use_sliding_window));
  if (use_sliding_window) {
    c->sliding_window = 4096;
    MOEX_RETURN_IF_ERROR(f.read("sliding_window", &c->sliding_window));
  }
  // transformers 5 writes num_local_experts; Hub checkpoints num_experts.
  MOEX_RETURN_IF_ERROR(read_aliased(f, {"num_local_experts", "num_experts"}, &c->num_experts));
  MOEX_RETURN_IF_ERROR(f.read("num_experts_per_tok", &c->num_experts_per_tok));
  MOEX_RETURN_IF_ERROR(f.read("moe_intermediate_size", &c->moe_intermediate_size));
  MOEX_RETURN_IF_ERROR(f.read("decoder_sparse_step", &c->decoder_sparse_step));
  MOEX_RETURN_IF_ERROR(f.read("mlp_only_layers", &c->mlp_only_layers));
  MOEX_RETURN_IF_ERROR(f.read("norm_topk_prob", &c->norm_topk_prob));
  return config_detail::parse_rope(f.obj(), f.source(), 10000.0, c->max_position_embeddings, &c->rope);
}

Status parse_mixtral(const JsonFields& f, ModelConfig* c) {
  reset(c);
  c->vocab_size = 32000;
  c->hidden_size = 4096;
  c->intermediate_size = 14336;
  c->num_layers = 32;
  c->num_attention_heads = 32;
  c->max_position_embeddings = 4096 * 32;
  c->rms_norm_eps = 1e-5;
  c->bos_token_id = 1;
  c->eos_token_ids = {2};
  c->num_experts = 8;
  c->num_experts_per_tok = 2;
  MOEX_RETURN_IF_ERROR(read_common(f, c));
  if (!f.obj().contains("num_key_value_heads")) c->num_key_value_heads = 8;  // null: one per head
  c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  MOEX_RETURN_IF_ERROR(f.read("head_dim", &c->head_dim));
  MOEX_RETURN_IF_ERROR(f.read("sliding_window", &c->sliding_window));  // null: full attention
  MOEX_RETURN_IF_ERROR(read_aliased(f, {"num_local_experts", "num_experts"}, &c->num_experts));
  MOEX_RETURN_IF_ERROR(f.read("num_experts_per_tok", &c->num_experts_per_tok));
  // Every Mixtral layer is sparse and its experts are intermediate_size wide.
  c->moe_intermediate_size = c->intermediate_size;
  c->norm_topk_prob = true;  // HF renormalises the top-k softmax weights
  return config_detail::parse_rope(f.obj(), f.source(), 1e6, c->max_position_embeddings, &c->rope);
}

Status parse_routing_method(const JsonFields& f, ModelConfig* c) {
  const bool v3 = c->arch == Arch::kDeepseekV3;
  const char* arch = arch_name(c->arch);
  std::string method = v3 ? "noaux_tc" : "greedy";
  MOEX_RETURN_IF_ERROR(f.read("topk_method", &method));
  if (method == "greedy") c->topk_method = ops::TopkMethod::kGreedy;
  else if (method == "group_limited_greedy") c->topk_method = ops::TopkMethod::kGroupLimitedGreedy;
  else if (method == "noaux_tc") c->topk_method = ops::TopkMethod::kNoauxTc;
  else return f.bad_value("topk_method", "is not a known method (greedy, group_limited_greedy, noaux_tc)", StatusCode::kUnsupported);
  // The HF routers hard-code their method: V2 knows greedy and group_limited_greedy, V3 only noaux_tc.
  if (v3 != (c->topk_method == ops::TopkMethod::kNoauxTc)) {
    return f.bad_value("topk_method", std::string("is not supported by ") + arch, StatusCode::kUnsupported);
  }
  std::string scoring = v3 ? "sigmoid" : "softmax";
  MOEX_RETURN_IF_ERROR(f.read("scoring_func", &scoring));
  if (scoring == "softmax") c->scoring_func = ops::ScoringFunc::kSoftmax;
  else if (scoring == "sigmoid") c->scoring_func = ops::ScoringFunc::kSigmoid;
  else return f.bad_value("scoring_func", "is not a known scoring function (softmax, sigmoid)", StatusCode::kUnsupported);
  if (v3 != (c->scoring_func == ops::ScoringFunc::kSigmoid)) {
    return f.bad_value("scoring_func", std::string("is not supported by ") + arch, StatusCode::kUnsupported);
  }
  if (c->topk_method == ops::TopkMethod::kGreedy) {
    c->n_group = c->topk_group = 1;  // groups play no part in greedy selection
    return Status::ok();
  }
  if (v3) {
    c->n_group = 8;
    c->topk_group = 4;
    MOEX_RETURN_IF_ERROR(f.read("n_group", &c->n_group));
    return f.read("topk_group", &c->topk_group);
  }
  MOEX_RETURN_IF_ERROR(f.require("n_group", &c->n_group));  // DeepseekV2Config defaults them to None
  return f.require("topk_group", &c->topk_group);
}

Status parse_deepseek(const JsonFields& f, ModelConfig* c) {
  const bool v3 = c->arch == Arch::kDeepseekV3;
  reset(c);
  c->vocab_size = v3 ? 129280 : 102400;
  c->hidden_size = v3 ? 7168 : 4096;
  c->intermediate_size = v3 ? 18432 : 11008;
  c->num_layers = v3 ? 61 : 32;
  c->num_attention_heads = v3 ? 128 : 32;
  c->max_position_embeddings = v3 ? 4096 : 2048;
  c->bos_token_id = v3 ? 0 : 1;
  c->eos_token_ids = {v3 ? 1 : 2};
  c->q_lora_rank = 1536;
  c->kv_lora_rank = 512;
  c->qk_nope_head_dim = 128;
  c->qk_rope_head_dim = 64;
  c->v_head_dim = 128;
  c->num_experts = v3 ? 256 : 64;
  c->moe_intermediate_size = v3 ? 2048 : 1407;
  c->n_shared_experts = v3 ? 1 : 2;
  c->first_k_dense_replace = v3 ? 3 : 0;
  c->routed_scaling_factor = v3 ? 2.5 : 1.0;
  c->norm_topk_prob = v3;
  c->num_experts_per_tok = v3 ? 8 : 0;
  MOEX_RETURN_IF_ERROR(read_common(f, c));
  c->head_dim = 0;  // MLA: the head dims below replace it
  // q_lora_rank null means q is projected directly, without the low-rank compression.
  if (f.is_null("q_lora_rank")) c->q_lora_rank = 0;
  MOEX_RETURN_IF_ERROR(f.read("q_lora_rank", &c->q_lora_rank));
  MOEX_RETURN_IF_ERROR(f.read("kv_lora_rank", &c->kv_lora_rank));
  MOEX_RETURN_IF_ERROR(f.read("qk_nope_head_dim", &c->qk_nope_head_dim));
  MOEX_RETURN_IF_ERROR(f.read("qk_rope_head_dim", &c->qk_rope_head_dim));
  MOEX_RETURN_IF_ERROR(f.read("v_head_dim", &c->v_head_dim));
  // n_routed_experts null makes every layer dense (DeepSeek's reference code checks for None).
  if (f.is_null("n_routed_experts")) {
    c->num_experts = 0;
  } else {
    MOEX_RETURN_IF_ERROR(read_aliased(f, {"n_routed_experts", v3 ? "num_local_experts" : "num_experts"}, &c->num_experts));
  }
  if (c->num_experts > 0 && !v3) MOEX_RETURN_IF_ERROR(f.require("num_experts_per_tok", &c->num_experts_per_tok));
  MOEX_RETURN_IF_ERROR(f.read("num_experts_per_tok", &c->num_experts_per_tok));
  MOEX_RETURN_IF_ERROR(f.read("moe_intermediate_size", &c->moe_intermediate_size));
  if (f.is_null("n_shared_experts")) c->n_shared_experts = 0;
  MOEX_RETURN_IF_ERROR(f.read("n_shared_experts", &c->n_shared_experts));
  MOEX_RETURN_IF_ERROR(f.read("first_k_dense_replace", &c->first_k_dense_replace));
  MOEX_RETURN_IF_ERROR(f.read("moe_layer_freq", &c->moe_layer_freq));
  MOEX_RETURN_IF_ERROR(f.read("routed_scaling_factor", &c->routed_scaling_factor));
  MOEX_RETURN_IF_ERROR(f.read("norm_topk_prob", &c->norm_topk_prob));
  MOEX_RETURN_IF_ERROR(parse_routing_method(f, c));
  MOEX_RETURN_IF_ERROR(config_detail::parse_rope(f.obj(), f.source(), 10000.0, c->max_position_embeddings, &c->rope));
  // HF's V2 rotates complex pairs (always interleaved); V3 follows "rope_interleave".
  c->rope.interleave = true;
  if (v3) MOEX_RETURN_IF_ERROR(f.read("rope_interleave", &c->rope.interleave));
  return Status::ok();
}

Status positive(const JsonFields& f, const char* key, int64_t v) {
  if (v > 0) return Status::ok();
  return f.bad_field(key, "= " + std::to_string(v) + " must be positive");
}

Status validate(const JsonFields& f, const ModelConfig& c) {
  MOEX_RETURN_IF_ERROR(positive(f, "vocab_size", c.vocab_size));
  MOEX_RETURN_IF_ERROR(positive(f, "hidden_size", c.hidden_size));
  MOEX_RETURN_IF_ERROR(positive(f, "num_hidden_layers", c.num_layers));
  MOEX_RETURN_IF_ERROR(positive(f, "num_attention_heads", c.num_attention_heads));
  MOEX_RETURN_IF_ERROR(positive(f, "max_position_embeddings", c.max_position_embeddings));
  if (!(c.rms_norm_eps > 0.0)) return f.bad_value("rms_norm_eps", "must be positive");
  if (!(c.rope.theta > 0.0)) return f.bad_field("rope_theta", "= " + std::to_string(c.rope.theta) + " must be positive");
  for (int64_t id : c.eos_token_ids) {
    if (id < 0) return f.bad_value("eos_token_id", "holds a negative id");
  }
  if (c.is_mla()) {
    MOEX_RETURN_IF_ERROR(positive(f, "kv_lora_rank", c.kv_lora_rank));
    MOEX_RETURN_IF_ERROR(positive(f, "qk_nope_head_dim", c.qk_nope_head_dim));
    MOEX_RETURN_IF_ERROR(positive(f, "qk_rope_head_dim", c.qk_rope_head_dim));
    MOEX_RETURN_IF_ERROR(positive(f, "v_head_dim", c.v_head_dim));
    if (c.qk_rope_head_dim % 2 != 0) return f.bad_value("qk_rope_head_dim", "must be even (rotary pairs)");
    if (c.q_lora_rank < 0) return f.bad_value("q_lora_rank", "must be positive or null");
  } else {
    if (!f.has("head_dim") && c.hidden_size % c.num_attention_heads != 0) {
      return f.bad_value("hidden_size", "is not a multiple of num_attention_heads = " +
                                            std::to_string(c.num_attention_heads) + " and head_dim is not given");
    }
    MOEX_RETURN_IF_ERROR(positive(f, "head_dim", c.head_dim));
    MOEX_RETURN_IF_ERROR(positive(f, "num_key_value_heads", c.num_key_value_heads));
    if (c.num_attention_heads % c.num_key_value_heads != 0) {
      return f.bad_value("num_key_value_heads", "does not divide num_attention_heads = " +
                                                    std::to_string(c.num_attention_heads));
    }
    if (c.head_dim % 2 != 0) return f.bad_field("head_dim", "= " + std::to_string(c.head_dim) + " must be even (rotary pairs)");
    if (c.sliding_window < 0) return f.bad_value("sliding_window", "must be positive or null");
  }
  const char* experts_key = c.is_mla() ? "n_routed_experts" : "num_experts";
  if (c.num_experts < 0 || (c.arch == Arch::kMixtral && c.num_experts == 0)) {
    return f.bad_field(experts_key, "= " + std::to_string(c.num_experts) + " must be positive");
  }
  if (c.num_experts > 0) {
    if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts) {
      return f.bad_field("num_experts_per_tok", "= " + std::to_string(c.num_experts_per_tok) + " must be in [1, " +
                                                    std::to_string(c.num_experts) + "] (the number of experts)");
    }
    MOEX_RETURN_IF_ERROR(positive(f, "moe_intermediate_size", c.moe_intermediate_size));
  }
  if (c.n_shared_experts < 0) return f.bad_value("n_shared_experts", "must not be negative");
  if (c.first_k_dense_replace < 0) return f.bad_value("first_k_dense_replace", "must not be negative");
  MOEX_RETURN_IF_ERROR(positive(f, "moe_layer_freq", c.moe_layer_freq));
  MOEX_RETURN_IF_ERROR(positive(f, "decoder_sparse_step", c.decoder_sparse_step));
  if (c.num_experts > 0 && c.topk_method != ops::TopkMethod::kGreedy) {
    MOEX_RETURN_IF_ERROR(positive(f, "n_group", c.n_group));
    if (c.num_experts % c.n_group != 0) {
      return f.bad_field("n_group", "= " + std::to_string(c.n_group) + " does not divide the " +
                                        std::to_string(c.num_experts) + " routed experts");
    }
    if (c.topk_group < 1 || c.topk_group > c.n_group) {
      return f.bad_field("topk_group", "= " + std::to_string(c.topk_group) + " must be in [1, n_group = " +
                                           std::to_string(c.n_group) + "]");
    }
    const int64_t group_size = c.num_experts / c.n_group;
    if (c.num_experts_per_tok > c.topk_group * group_size) {
      return f.bad_field("num_experts_per_tok", "= " + std::to_string(c.num_experts_per_tok) + " exceeds the " +
                                                    std::to_string(c.topk_group * group_size) +
                                                    " experts in topk_group groups");
    }
    // noaux_tc scores a group by the sum of its two best experts.
    if (c.topk_method == ops::TopkMethod::kNoauxTc && group_size < 2) {
      return f.bad_field("n_group", "= " + std::to_string(c.n_group) + " leaves groups of one expert (noaux_tc needs 2)");
    }
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (!c.is_moe_layer(i)) return positive(f, "intermediate_size", c.intermediate_size);  // a dense layer exists
  }
  return Status::ok();
}

Expected<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return io_error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return io_error(path + ": read failed");
  return ss.str();
}

Expected<json> parse_object(const std::string& text, const std::string& source) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid_argument(source + ": not well-formed JSON");
  if (!root.is_object()) return invalid_argument(source + ": not a JSON object");
  return root;
}

}  // namespace

const char* arch_name(Arch a) {
  for (const ArchName& n : kArchNames) {
    if (n.arch == a) return n.architecture;
  }
  return "?";
}

bool ModelConfig::is_moe_layer(int64_t i) const {
  if (num_experts <= 0) return false;
  switch (arch) {
    case Arch::kDeepseekV2:
    case Arch::kDeepseekV3: return i >= first_k_dense_replace && i % moe_layer_freq == 0;
    case Arch::kQwen3Moe:
      for (int64_t l : mlp_only_layers) {
        if (l == i) return false;
      }
      return (i + 1) % decoder_sparse_step == 0;
    case Arch::kMixtral: return true;
  }
  return false;
}

double ModelConfig::attention_scale() const {
  if (!is_mla()) return 1.0 / std::sqrt(double(head_dim));
  double scale = 1.0 / std::sqrt(double(qk_nope_head_dim + qk_rope_head_dim));
  // DeepSeek folds YaRN's magnitude correction into the softmax scale (mscale applied to q and k).
  if (rope.yarn && rope.mscale_all_dim != 0.0) {
    const double m = config_detail::yarn_get_mscale(rope.factor, rope.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

Expected<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source_name) {
  try {
    MOEX_ASSIGN_OR_RETURN(json root, parse_object(json_text, source_name));
    const JsonFields f(root, source_name);
    ModelConfig c;
    MOEX_RETURN_IF_ERROR(detect_arch(f, &c));
    switch (c.arch) {
      case Arch::kQwen3Moe: MOEX_RETURN_IF_ERROR(parse_qwen3(f, &c)); break;
      case Arch::kMixtral: MOEX_RETURN_IF_ERROR(parse_mixtral(f, &c)); break;
      case Arch::kDeepseekV2:
      case Arch::kDeepseekV3: MOEX_RETURN_IF_ERROR(parse_deepseek(f, &c)); break;
    }
    MOEX_RETURN_IF_ERROR(validate(f, c));
    return c;
  } catch (const std::exception& e) {  // never let an exception cross the API
    return internal_error(source_name + ": " + e.what());
  }
}

Status apply_generation_config(const std::string& json_text, const std::string& source_name, ModelConfig* config) {
  try {
    MOEX_ASSIGN_OR_RETURN(json root, parse_object(json_text, source_name));
    const JsonFields f(root, source_name);
    std::vector<int64_t> eos;
    MOEX_RETURN_IF_ERROR(f.read_int_or_list("eos_token_id", &eos));
    for (int64_t id : eos) {
      if (id < 0) return f.bad_value("eos_token_id", "holds a negative id");
      bool known = false;
      for (int64_t have : config->eos_token_ids) known = known || have == id;
      if (!known) config->eos_token_ids.push_back(id);
    }
    if (!config->bos_token_id && f.has("bos_token_id")) {
      int64_t bos = 0;
      MOEX_RETURN_IF_ERROR(f.read("bos_token_id", &bos));
      config->bos_token_id = bos;
    }
    return Status::ok();
  } catch (const std::exception& e) {
    return internal_error(source_name + ": " + e.what());
  }
}

Expected<ModelConfig> load_model_config(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const std::string path = (fs::path(model_dir) / "config.json").string();
  MOEX_ASSIGN_OR_RETURN(std::string text, read_text(path));
  MOEX_ASSIGN_OR_RETURN(ModelConfig config, parse_model_config(text, path));
  const std::string gen_path = (fs::path(model_dir) / "generation_config.json").string();
  std::error_code ec;
  if (fs::exists(gen_path, ec)) {
    MOEX_ASSIGN_OR_RETURN(std::string gen_text, read_text(gen_path));
    MOEX_RETURN_IF_ERROR(apply_generation_config(gen_text, gen_path, &config));
  }
  return config;
}

}  // namespace moex
