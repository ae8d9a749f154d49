// The GQA families: Qwen3-MoE (Qwen3MoeForCausalLM) and Mixtral (MixtralForCausalLM).
// Both are pre-norm decoders with GQA, RoPE on NeoX rotate-half pairs and softmax top-k routing;
// they differ only where GqaFamily says:
//   Qwen3-MoE: a per-head RMSNorm on q and k before RoPE; renormalisation per norm_topk_prob;
//              layers in mlp_only_layers (or off the decoder_sparse_step grid) use a dense SwiGLU
//              MLP; experts at mlp.experts.E.{gate,up,down}_proj.
//   Mixtral:   an optional sliding window; every layer sparse, always renormalised
//              (MixtralTopKRouter); experts at block_sparse_moe.experts.E.w1 (gate) / w3 (up) / w2 (down).
#include <cmath>

#include "model/archs/archs.h"
#include "model/rope_init.h"

namespace moex {
namespace {

struct GqaFamily {
  bool qk_norm;              // Qwen3: per-head RMSNorm on q and k before RoPE
  bool use_sliding_window;   // Mixtral: config.sliding_window (0 = none)
  bool always_renormalize;   // Mixtral: top-k weights always renormalised
  const char* moe_prefix;    // "mlp" / "block_sparse_moe"
  const char* gate;          // expert tensor names
  const char* up;
  const char* down;
};

constexpr GqaFamily kQwen3Moe{true, false, false, "mlp", "gate_proj", "up_proj", "down_proj"};
constexpr GqaFamily kMixtral{false, true, true, "block_sparse_moe", "w1", "w3", "w2"};

struct GqaLayer {
  Tensor input_norm;      // [hidden]
  Tensor qkv_proj;        // [(q_heads + 2 kv_heads) * head_dim, hidden]: q_proj | k_proj | v_proj rows
  Tensor q_norm;          // [head_dim] (qk_norm families only)
  Tensor k_norm;          // [head_dim] (qk_norm families only)
  Tensor o_proj;          // [hidden, q_heads * head_dim]
  Tensor post_attn_norm;  // [hidden]
  bool is_moe = true;
  MoeWeights moe;
  MlpWeights mlp;  // dense layers only
  Tensor k_cache;  // [num_pages, page_size, kv_heads, head_dim]
  Tensor v_cache;  // [num_pages, page_size, kv_heads, head_dim]
};

class GqaMoeModel final : public ModelBase {
 public:
  GqaMoeModel(Backend& backend, const ModelConfig& config, const GqaFamily& family)
      : ModelBase(backend, config), family_(family) {
    if (config_.head_dim == 0) config_.head_dim = config_.hidden_size / config_.num_attention_heads;
    routing_.scoring = ops::ScoringFunc::kSoftmax;
    routing_.method = ops::TopkMethod::kGreedy;
    routing_.top_k = int(config_.num_experts_per_tok);
    routing_.norm_topk_prob = family_.always_renormalize || config_.norm_topk_prob;
    rope_ = compute_rope_tables(config_.rope, config_.head_dim);
  }

  int64_t kv_bytes_per_token() const override {
    return config_.num_layers * 2 * config_.num_key_value_heads * config_.head_dim *
           int64_t(dtype_size(backend_.activation_dtype()));
  }

  Status allocate_kv_cache(int num_pages, int page_size) override {
    if (num_pages <= 0 || page_size <= 0) return invalid_argument("allocate_kv_cache: pages and page size must be > 0");
    reset_cache(num_pages, page_size);
    for (GqaLayer& l : layers_) {
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
      GqaLayer& l = layers_[size_t(i)];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      MOEX_ASSIGN_OR_RETURN(l.input_norm, loader.load(p + "input_layernorm.weight", {h}, true));
      // One projection GEMM for q, k and v (each output element's sum is unchanged).
      MOEX_ASSIGN_OR_RETURN(l.qkv_proj, loader.load_concat({p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                                                            p + "self_attn.v_proj.weight"},
                                                           {q_dim, kv_dim, kv_dim}, h));
      if (family_.qk_norm) {
        MOEX_ASSIGN_OR_RETURN(l.q_norm, loader.load(p + "self_attn.q_norm.weight", {d}, true));
        MOEX_ASSIGN_OR_RETURN(l.k_norm, loader.load(p + "self_attn.k_norm.weight", {d}, true));
      }
      MOEX_ASSIGN_OR_RETURN(l.o_proj, loader.load(p + "self_attn.o_proj.weight", {h, q_dim}));
      MOEX_ASSIGN_OR_RETURN(l.post_attn_norm, loader.load(p + "post_attention_layernorm.weight", {h}, true));
      for (const Tensor* t : {&l.input_norm, &l.qkv_proj, &l.q_norm, &l.k_norm, &l.o_proj,
                              &l.post_attn_norm}) {
        count(*t, true);  // count() skips the tensors a family does not have
      }
      l.is_moe = config_.is_moe_layer(i);
      if (l.is_moe) {
        MOEX_ASSIGN_OR_RETURN(l.moe, load_moe(loader, p + family_.moe_prefix, family_.gate, family_.up, family_.down));
        count_experts(l.moe);
      } else {
        MOEX_ASSIGN_OR_RETURN(l.mlp, load_mlp(loader, p + "mlp", config_.intermediate_size));
        count(l.mlp.w13, true);
        count(l.mlp.w2, true);
      }
    }
    return Status::ok();
  }

  Status run_layers(const StepInputs& step, Workspace& ws, const Tensor& hidden) override {
    const DType act = backend_.activation_dtype();
    const int64_t n = step.num_tokens, h = config_.hidden_size, d = config_.head_dim;
    const int64_t q_heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
    const float eps = float(config_.rms_norm_eps);
    MOEX_ASSIGN_OR_RETURN(Tensor x_norm, ws.make(act, {n, h}));         // [n, hidden]
    const int64_t q_dim = q_heads * d, kv_dim = kv_heads * d, qkv_dim = q_dim + 2 * kv_dim;
    MOEX_ASSIGN_OR_RETURN(Tensor qkv, ws.make(act, {n, qkv_dim}));      // [n, q | k | v]
    const Tensor q = view3(qkv, 0, n, qkv_dim, q_heads, d, d);           // [n, q_heads, head_dim] strided
    const Tensor k = view3(qkv, q_dim, n, qkv_dim, kv_heads, d, d);      // [n, kv_heads, head_dim] strided
    const Tensor v = view3(qkv, q_dim + kv_dim, n, qkv_dim, kv_heads, d, d);  // [n, kv_heads, head_dim] strided
    const Tensor v2 = columns(qkv, q_dim + kv_dim, kv_dim);              // [n, kv_heads * head_dim] strided
    const Tensor k2 = columns(qkv, q_dim, kv_dim);                       // [n, kv_heads * head_dim] strided
    MOEX_ASSIGN_OR_RETURN(Tensor attn, ws.make(act, {n, q_heads, d}));   // [n, q_heads, head_dim]
    MOEX_ASSIGN_OR_RETURN(Tensor attn_out, ws.make(act, {n, h}));        // [n, hidden]
    const float scale = float(1.0 / std::sqrt(double(d)));
    const int window = family_.use_sliding_window ? int(config_.sliding_window) : 0;

    Tensor pending;  // [n, hidden] the previous layer's FFN output, not yet added to hidden
    for (GqaLayer& l : layers_) {
      const int64_t li = &l - layers_.data();  // profile: layer index
      // Attention (the previous layer's residual add goes with the input norm).
      MOEX_RETURN_IF_ERROR(norm_residual(hidden, pending, l.input_norm, x_norm));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.qkv_proj, .out = qkv}));
      const int64_t slots = int64_t(num_pages_) * page_size_;
      const Tensor k_slots = l.k_cache.reshape({slots, kv_dim});  // [slots, kv_heads * head_dim]
      const Tensor v_slots = l.v_cache.reshape({slots, kv_dim});  // [slots, kv_heads * head_dim]
      if (fuse_small_ops_) {
        MOEX_RETURN_IF_ERROR(backend_.qkv_rope_cache(
            {.q = q, .k = k, .v = v, .q_norm = family_.qk_norm ? l.q_norm : Tensor{},
             .k_norm = family_.qk_norm ? l.k_norm : Tensor{}, .eps = eps, .positions = step.positions,
             .inv_freq = inv_freq_, .attn_scale = rope_.attn_scale, .interleaved = false,
             .slot_mapping = step.slot_mapping, .k_cache = k_slots, .v_cache = v_slots}));
      } else {
        if (family_.qk_norm) {
          MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = q, .weight = l.q_norm, .out = q, .eps = eps}));
          MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = k, .weight = l.k_norm, .out = k, .eps = eps}));
        }
        MOEX_RETURN_IF_ERROR(backend_.rope({.x = q, .positions = step.positions, .inv_freq = inv_freq_,
                                            .attn_scale = rope_.attn_scale, .interleaved = false}));
        MOEX_RETURN_IF_ERROR(backend_.rope({.x = k, .positions = step.positions, .inv_freq = inv_freq_,
                                            .attn_scale = rope_.attn_scale, .interleaved = false}));
        MOEX_RETURN_IF_ERROR(backend_.cache_write({.src = k2, .slot_mapping = step.slot_mapping, .dst = k_slots}));
        MOEX_RETURN_IF_ERROR(backend_.cache_write({.src = v2, .slot_mapping = step.slot_mapping, .dst = v_slots}));
      }
      MOEX_RETURN_IF_ERROR(backend_.gqa_attention({.q = q, .k_cache = l.k_cache, .v_cache = l.v_cache,
                                                   .seqs = step.seqs, .out = attn, .scale = scale,
                                                   .sliding_window = window}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = attn.reshape({n, q_heads * d}), .w = l.o_proj, .out = attn_out}));
      MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kAttention, li));  // profile

      // Feed-forward: routed experts or a dense MLP (its residual add goes with the next norm).
      MOEX_ASSIGN_OR_RETURN(pending, ffn_branch(l.post_attn_norm, l.is_moe, l.moe, l.mlp, hidden, attn_out, x_norm, ws, li));
    }
    return add_residual(hidden, pending);
  }

 private:
  GqaFamily family_;
  RopeTables rope_;
  Tensor inv_freq_;  // [head_dim / 2] f32
  std::vector<GqaLayer> layers_;
};

}  // namespace

std::unique_ptr<ModelBase> make_qwen3_moe_model(Backend& backend, const ModelConfig& config) {
  return std::make_unique<GqaMoeModel>(backend, config, kQwen3Moe);
}

std::unique_ptr<ModelBase> make_mixtral_model(Backend& backend, const ModelConfig& config) {
  return std::make_unique<GqaMoeModel>(backend, config, kMixtral);
}

}  // namespace moex
