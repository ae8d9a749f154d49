// Mixtral (MixtralForCausalLM): pre-norm decoder; GQA with RoPE (NeoX rotate-half pairs) and an
// optional sliding window; every layer is sparse: softmax top-k routing, always renormalised over
// the chosen experts, experts stored as block_sparse_moe.experts.E.w1 (gate) / w3 (up) / w2 (down).
#include <cmath>

#include "model/archs/archs.h"
#include "model/rope_init.h"

namespace moex {
namespace {

struct MixtralLayer {
  Tensor input_norm;      // [hidden]
  Tensor q_proj;          // [q_heads * head_dim, hidden]
  Tensor k_proj;          // [kv_heads * head_dim, hidden]
  Tensor v_proj;          // [kv_heads * head_dim, hidden]
  Tensor o_proj;          // [hidden, q_heads * head_dim]
  Tensor post_attn_norm;  // [hidden]
  MoeWeights moe;
  Tensor k_cache;  // [num_pages, page_size, kv_heads, head_dim]
  Tensor v_cache;  // [num_pages, page_size, kv_heads, head_dim]
};

class MixtralModel final : public ModelBase {
 public:
  MixtralModel(Backend& backend, const ModelConfig& config) : ModelBase(backend, config) {
    if (config_.head_dim == 0) config_.head_dim = config_.hidden_size / config_.num_attention_heads;
    routing_.scoring = ops::ScoringFunc::kSoftmax;
    routing_.method = ops::TopkMethod::kGreedy;
    routing_.top_k = int(config_.num_experts_per_tok);
    routing_.norm_topk_prob = true;  // MixtralTopKRouter always renormalises
    rope_ = compute_rope_tables(config_.rope, config_.head_dim);
  }

  int64_t kv_bytes_per_token() const override {
    return config_.num_layers * 2 * config_.num_key_value_heads * config_.head_dim *
           int64_t(dtype_size(backend_.activation_dtype()));
  }

  Status allocate_kv_cache(int num_pages, int page_size) override {
    if (num_pages <= 0 || page_size <= 0) return invalid_argument("allocate_kv_cache: pages and page size must be > 0");
    reset_cache(num_pages, page_size);
    for (MixtralLayer& l : layers_) {
      MOEX_ASSIGN_OR_RETURN(l.k_cache, make_cache({num_pages, page_size, config_.num_key_value_heads, config_.head_dim}));
      MOEX_ASSIGN_OR_RETURN(l.v_cache, make_cache({num_pages, page_size, config_.num_key_value_heads, config_.head_dim}));
    }
    return Status::ok();
  }

 protected:
  bool kv_cache_ready() const override { return num_pages_ > 0; }

  Status load_layers(WeightLoader& loader) override {
    const int64_t h = config_.hidden_size, d = config_.head_dim;
    const int64_t q_dim = config_.num_attention_heads * d, kv_dim = config_.num_key_value_heads * d;
    MOEX_ASSIGN_OR_RETURN(inv_freq_, loader.upload(rope_.inv_freq.data(), DType::kF32, {int64_t(rope_.inv_freq.size())}, false));
    layers_.resize(size_t(config_.num_layers));
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      MixtralLayer& l = layers_[size_t(i)];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      MOEX_ASSIGN_OR_RETURN(l.input_norm, loader.load(p + "input_layernorm.weight", {h}, true));
      MOEX_ASSIGN_OR_RETURN(l.q_proj, loader.load(p + "self_attn.q_proj.weight", {q_dim, h}));
      MOEX_ASSIGN_OR_RETURN(l.k_proj, loader.load(p + "self_attn.k_proj.weight", {kv_dim, h}));
      MOEX_ASSIGN_OR_RETURN(l.v_proj, loader.load(p + "self_attn.v_proj.weight", {kv_dim, h}));
      MOEX_ASSIGN_OR_RETURN(l.o_proj, loader.load(p + "self_attn.o_proj.weight", {h, q_dim}));
      MOEX_ASSIGN_OR_RETURN(l.post_attn_norm, loader.load(p + "post_attention_layernorm.weight", {h}, true));
      for (const Tensor* t : {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj, &l.post_attn_norm}) {
        count(*t, true);
      }
      MOEX_ASSIGN_OR_RETURN(l.moe, load_moe(loader, p + "block_sparse_moe", "w1", "w3", "w2"));
      count_experts(l.moe);
    }
    return Status::ok();
  }

  Status run_layers(const StepInputs& step, Workspace& ws, const Tensor& hidden) override {
    const DType act = backend_.activation_dtype();
    const int64_t n = step.num_tokens, h = config_.hidden_size, d = config_.head_dim;
    const int64_t q_heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
    const float eps = float(config_.rms_norm_eps);
    MOEX_ASSIGN_OR_RETURN(Tensor x_norm, ws.make(act, {n, h}));         // [n, hidden]
    MOEX_ASSIGN_OR_RETURN(Tensor q, ws.make(act, {n, q_heads, d}));      // [n, q_heads, head_dim]
    MOEX_ASSIGN_OR_RETURN(Tensor k, ws.make(act, {n, kv_heads, d}));     // [n, kv_heads, head_dim]
    MOEX_ASSIGN_OR_RETURN(Tensor v, ws.make(act, {n, kv_heads, d}));     // [n, kv_heads, head_dim]
    MOEX_ASSIGN_OR_RETURN(Tensor attn, ws.make(act, {n, q_heads, d}));   // [n, q_heads, head_dim]
    MOEX_ASSIGN_OR_RETURN(Tensor attn_out, ws.make(act, {n, h}));        // [n, hidden]
    const float scale = float(1.0 / std::sqrt(double(d)));

    for (MixtralLayer& l : layers_) {
      const int64_t li = &l - layers_.data();  // profile: layer index
      // Attention.
      MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = hidden, .weight = l.input_norm, .out = x_norm, .eps = eps}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.q_proj, .out = q.reshape({n, q_heads * d})}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.k_proj, .out = k.reshape({n, kv_heads * d})}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.v_proj, .out = v.reshape({n, kv_heads * d})}));
      MOEX_RETURN_IF_ERROR(backend_.rope({.x = q, .positions = step.positions, .inv_freq = inv_freq_,
                                          .attn_scale = rope_.attn_scale, .interleaved = false}));
      MOEX_RETURN_IF_ERROR(backend_.rope({.x = k, .positions = step.positions, .inv_freq = inv_freq_,
                                          .attn_scale = rope_.attn_scale, .interleaved = false}));
      const int64_t slots = int64_t(num_pages_) * page_size_;
      MOEX_RETURN_IF_ERROR(backend_.cache_write({.src = k.reshape({n, kv_heads * d}), .slot_mapping = step.slot_mapping,
                                                 .dst = l.k_cache.reshape({slots, kv_heads * d})}));
      MOEX_RETURN_IF_ERROR(backend_.cache_write({.src = v.reshape({n, kv_heads * d}), .slot_mapping = step.slot_mapping,
                                                 .dst = l.v_cache.reshape({slots, kv_heads * d})}));
      MOEX_RETURN_IF_ERROR(backend_.gqa_attention({.q = q, .k_cache = l.k_cache, .v_cache = l.v_cache,
                                                   .seqs = step.seqs, .out = attn, .scale = scale,
                                                   .sliding_window = int(config_.sliding_window)}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = attn.reshape({n, q_heads * d}), .w = l.o_proj, .out = attn_out}));
      MOEX_RETURN_IF_ERROR(backend_.add({.a = hidden, .b = attn_out, .out = hidden}));
      MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kAttention, li));  // profile

      // Feed-forward: routed experts.
      MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = hidden, .weight = l.post_attn_norm, .out = x_norm, .eps = eps}));
      MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kOther, li));  // profile
      MOEX_ASSIGN_OR_RETURN(Tensor ffn_out, moe_block(l.moe, x_norm, ws));  // [n, hidden]
      MOEX_RETURN_IF_ERROR(backend_.add({.a = hidden, .b = ffn_out, .out = hidden}));
      MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kMoe, li));  // profile
    }
    return Status::ok();
  }

 private:
  RopeTables rope_;
  Tensor inv_freq_;  // [head_dim / 2] f32
  std::vector<MixtralLayer> layers_;
};

}  // namespace

std::unique_ptr<ModelBase> make_mixtral_model(Backend& backend, const ModelConfig& config) {
  return std::make_unique<MixtralModel>(backend, config);
}

}  // namespace moex
