// DeepSeek-V2 / V3 (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM).
//
// Multi-head latent attention in absorbed form. Per token the cache holds one latent row
// [kv_lora_rank normalised latent | qk_rope_head_dim rotated shared key] (576 values for V3).
// kv_b_proj splits per head h into W_UK_h [nope, rank] and W_UV_h [v, rank], and
//   q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c        (absorb W_UK into the query)
//   o_h = W_UV_h (sum_s p_s c_s)                            (apply W_UV after attention)
// so attention runs over the latent cache directly, in prefill and decode alike.
// RoPE pairs are interleaved (2i, 2i+1) in both versions: V3's rope_interleave output is a fixed
// permutation of that, applied to q and k alike, which leaves every q.k dot product unchanged.
//
// MoE: V2 softmax routing (greedy or group-limited greedy), V3 sigmoid + noaux_tc with the
// e_score_correction_bias; shared experts added to the routed output; the first
// first_k_dense_replace layers are dense.
#include <cmath>

#include "model/archs/archs.h"
#include "model/rope_init.h"

namespace moex {
namespace {

// HF builds q_a_layernorm / kv_a_layernorm with the RMSNorm default eps, not rms_norm_eps.
constexpr float kLatentNormEps = 1e-6f;

struct DeepseekLayer {
  Tensor input_norm;      // [hidden]
  Tensor q_proj;          // [heads * qk_head_dim, hidden]        (no q_lora)
  Tensor q_a_proj;        // [q_lora_rank, hidden]                 (q_lora)
  Tensor q_a_norm;        // [q_lora_rank]
  Tensor q_b_proj;        // [heads * qk_head_dim, q_lora_rank]
  Tensor kv_a_proj;       // [kv_lora_rank + rope_dim, hidden]
  Tensor kv_a_norm;       // [kv_lora_rank]
  Tensor w_uk_t;          // [heads, kv_lora_rank, nope]  W_UK_h transposed (rows contiguous along nope)
  Tensor w_uv;            // [heads, v_head_dim, kv_lora_rank]
  Tensor o_proj;          // [hidden, heads * v_head_dim]
  Tensor post_attn_norm;  // [hidden]
  bool is_moe = true;
  MoeWeights moe;
  MlpWeights mlp;
  Tensor latent_cache;  // [num_pages, page_size, kv_lora_rank + rope_dim]
};

class DeepseekModel final : public ModelBase {
 public:
  DeepseekModel(Backend& backend, const ModelConfig& config) : ModelBase(backend, config) {
    routing_.scoring = config_.scoring_func;
    routing_.method = config_.topk_method;
    if (config_.arch == Arch::kDeepseekV3) {  // HF hard-codes V3's router
      routing_.scoring = ops::ScoringFunc::kSigmoid;
      routing_.method = ops::TopkMethod::kNoauxTc;
    }
    routing_.top_k = int(config_.num_experts_per_tok);
    routing_.n_group = int(std::max<int64_t>(1, config_.n_group));
    routing_.topk_group = int(std::max<int64_t>(1, config_.topk_group));
    routing_.norm_topk_prob = config_.norm_topk_prob;
    routing_.routed_scaling_factor = float(config_.routed_scaling_factor);
    rope_ = compute_rope_tables(config_.rope, config_.qk_rope_head_dim);
    const double qk_head_dim = double(config_.qk_nope_head_dim + config_.qk_rope_head_dim);
    softmax_scale_ = float(std::pow(qk_head_dim, -0.5) * yarn_softmax_scale_factor(config_.rope));
  }

  int64_t kv_bytes_per_token() const override {
    return config_.num_layers * (config_.kv_lora_rank + config_.qk_rope_head_dim) *
           int64_t(dtype_size(backend_.activation_dtype()));
  }

  Status allocate_kv_cache(int num_pages, int page_size) override {
    if (num_pages <= 0 || page_size <= 0) return invalid_argument("allocate_kv_cache: pages and page size must be > 0");
    reset_cache(num_pages, page_size);
    for (DeepseekLayer& l : layers_) {
      MOEX_ASSIGN_OR_RETURN(l.latent_cache,
                            make_cache({num_pages, page_size, config_.kv_lora_rank + config_.qk_rope_head_dim}));
    }
    return Status::ok();
  }

 protected:
  bool kv_cache_ready() const override { return num_pages_ > 0; }

  Status load_layers(WeightLoader& loader) override {
    const int64_t h = config_.hidden_size, heads = config_.num_attention_heads;
    const int64_t nope = config_.qk_nope_head_dim, rope = config_.qk_rope_head_dim, vd = config_.v_head_dim;
    const int64_t rank = config_.kv_lora_rank, q_rank = config_.q_lora_rank, qk = nope + rope;
    MOEX_ASSIGN_OR_RETURN(inv_freq_, loader.upload(rope_.inv_freq.data(), DType::kF32, {int64_t(rope_.inv_freq.size())}, false));
    layers_.resize(size_t(config_.num_layers));
    for (int64_t i = 0; i < config_.num_layers; ++i) {
      DeepseekLayer& l = layers_[size_t(i)];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      const std::string a = p + "self_attn.";
      MOEX_ASSIGN_OR_RETURN(l.input_norm, loader.load(p + "input_layernorm.weight", {h}, true));
      if (q_rank == 0) {
        MOEX_ASSIGN_OR_RETURN(l.q_proj, loader.load(a + "q_proj.weight", {heads * qk, h}));
      } else {
        MOEX_ASSIGN_OR_RETURN(l.q_a_proj, loader.load(a + "q_a_proj.weight", {q_rank, h}));
        MOEX_ASSIGN_OR_RETURN(l.q_a_norm, loader.load(a + "q_a_layernorm.weight", {q_rank}, true));
        MOEX_ASSIGN_OR_RETURN(l.q_b_proj, loader.load(a + "q_b_proj.weight", {heads * qk, q_rank}));
      }
      MOEX_ASSIGN_OR_RETURN(l.kv_a_proj, loader.load(a + "kv_a_proj_with_mqa.weight", {rank + rope, h}));
      MOEX_ASSIGN_OR_RETURN(l.kv_a_norm, loader.load(a + "kv_a_layernorm.weight", {rank}, true));
      MOEX_RETURN_IF_ERROR(load_absorbed(loader, a + "kv_b_proj.weight", &l));
      MOEX_ASSIGN_OR_RETURN(l.o_proj, loader.load(a + "o_proj.weight", {h, heads * vd}));
      MOEX_ASSIGN_OR_RETURN(l.post_attn_norm, loader.load(p + "post_attention_layernorm.weight", {h}, true));
      for (const Tensor* t : {&l.input_norm, &l.q_proj, &l.q_a_proj, &l.q_a_norm, &l.q_b_proj, &l.kv_a_proj,
                              &l.kv_a_norm, &l.o_proj, &l.post_attn_norm}) {
        count(*t, true);
      }
      counts_.total += heads * (nope + vd) * rank;  // kv_b_proj, stored once in the checkpoint
      counts_.active_per_token += heads * (nope + vd) * rank;

      l.is_moe = config_.is_moe_layer(i);
      if (l.is_moe) {
        MOEX_ASSIGN_OR_RETURN(l.moe, load_moe(loader, p + "mlp", "gate_proj", "up_proj", "down_proj"));
        if (routing_.method == ops::TopkMethod::kNoauxTc) {
          MOEX_ASSIGN_OR_RETURN(l.moe.bias, loader.load_f32(p + "mlp.gate.e_score_correction_bias", {config_.num_experts}));
        }
        if (config_.n_shared_experts > 0) {
          MOEX_ASSIGN_OR_RETURN(l.moe.shared, load_mlp(loader, p + "mlp.shared_experts",
                                                       config_.n_shared_experts * config_.moe_intermediate_size));
        }
        count_experts(l.moe);
      } else {
        MOEX_ASSIGN_OR_RETURN(l.mlp, load_mlp(loader, p + "mlp", config_.intermediate_size));
        count(l.mlp.w13, true);
        count(l.mlp.w2, true);
      }
    }
    return Status::ok();
  }

  // Splits kv_b_proj [heads * (nope + v), rank] into the per-head absorption matrices.
  Status load_absorbed(WeightLoader& loader, const std::string& name, DeepseekLayer* l) {
    const int64_t heads = config_.num_attention_heads, nope = config_.qk_nope_head_dim;
    const int64_t vd = config_.v_head_dim, rank = config_.kv_lora_rank;
    MOEX_ASSIGN_OR_RETURN(std::vector<float> kv_b, loader.read_f32(name, {heads * (nope + vd), rank}));
    // Keep the checkpoint's dtype: every value of kv_b came from it, so the copies are exact.
    const DType dtype = loader.weight_dtype_for(name);
    std::vector<uint8_t> uk_t(size_t(heads * rank * nope) * dtype_size(dtype));
    std::vector<uint8_t> uv(size_t(heads * vd * rank) * dtype_size(dtype));
    for (int64_t hd = 0; hd < heads; ++hd) {
      const float* head = kv_b.data() + hd * (nope + vd) * rank;  // [nope + v, rank]
      for (int64_t j = 0; j < nope; ++j) {
        for (int64_t c = 0; c < rank; ++c) store_from_f32(uk_t.data(), dtype, size_t((hd * rank + c) * nope + j), head[j * rank + c]);
      }
      for (int64_t j = 0; j < vd; ++j) {
        for (int64_t c = 0; c < rank; ++c) store_from_f32(uv.data(), dtype, size_t((hd * vd + j) * rank + c), head[(nope + j) * rank + c]);
      }
    }
    MOEX_ASSIGN_OR_RETURN(l->w_uk_t, loader.upload(uk_t.data(), dtype, {heads, rank, nope}));
    MOEX_ASSIGN_OR_RETURN(l->w_uv, loader.upload(uv.data(), dtype, {heads, vd, rank}));
    return Status::ok();
  }

  Status run_layers(const StepInputs& step, Workspace& ws, const Tensor& hidden) override {
    const DType act = backend_.activation_dtype();
    const int64_t n = step.num_tokens, h = config_.hidden_size, heads = config_.num_attention_heads;
    const int64_t nope = config_.qk_nope_head_dim, rope = config_.qk_rope_head_dim, vd = config_.v_head_dim;
    const int64_t rank = config_.kv_lora_rank, q_rank = config_.q_lora_rank, qk = nope + rope;
    const int64_t latent = rank + rope;
    MOEX_ASSIGN_OR_RETURN(Tensor x_norm, ws.make(act, {n, h}));                 // [n, hidden]
    MOEX_ASSIGN_OR_RETURN(Tensor q_a, ws.make(act, {n, std::max<int64_t>(q_rank, 1)}));  // [n, q_lora_rank]
    MOEX_ASSIGN_OR_RETURN(Tensor q, ws.make(act, {n, heads, qk}));              // [n, heads, nope + rope]
    MOEX_ASSIGN_OR_RETURN(Tensor kv_a, ws.make(act, {n, latent}));              // [n, rank + rope]
    MOEX_ASSIGN_OR_RETURN(Tensor q_latent, ws.make(act, {n, heads, latent}));   // [n, heads, rank + rope]
    MOEX_ASSIGN_OR_RETURN(Tensor o_latent, ws.make(act, {n, heads, rank}));     // [n, heads, rank]
    MOEX_ASSIGN_OR_RETURN(Tensor attn_v, ws.make(act, {n, heads, vd}));         // [n, heads, v]
    MOEX_ASSIGN_OR_RETURN(Tensor attn_out, ws.make(act, {n, h}));               // [n, hidden]

    // Views of the per-head parts, batched over heads for the absorption matmuls.
    const Tensor q_flat = q.reshape({n, heads * qk});
    const Tensor q_nope_by_head = view3(q, 0, heads, qk, n, heads * qk, nope);              // [heads, n, nope]
    const Tensor q_rope = view3(q, nope, n, heads * qk, heads, qk, rope);                    // [n, heads, rope]
    const Tensor q_latent_nope = view3(q_latent, 0, heads, latent, n, heads * latent, rank);  // [heads, n, rank]
    const Tensor q_latent_rope = view3(q_latent, rank, n, heads * latent, heads, latent, rope);  // [n, heads, rope]
    const Tensor o_latent_by_head = view3(o_latent, 0, heads, rank, n, heads * rank, rank);  // [heads, n, rank]
    const Tensor attn_v_by_head = view3(attn_v, 0, heads, vd, n, heads * vd, vd);            // [heads, n, v]
    const Tensor kv_latent = columns(kv_a, 0, rank);                                         // [n, rank]
    const Tensor k_rope = view3(kv_a, rank, n, latent, 1, rope, rope);                       // [n, 1, rope]
    const int64_t slots = int64_t(num_pages_) * page_size_;

    Tensor pending;  // [n, hidden] the previous layer's FFN output, not yet added to hidden
    for (DeepseekLayer& l : layers_) {
      const int64_t li = &l - layers_.data();  // profile: layer index
      MOEX_RETURN_IF_ERROR(norm_residual(hidden, pending, l.input_norm, x_norm));  // + the previous residual add
      // Queries.
      if (q_rank == 0) {
        MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.q_proj, .out = q_flat}));
      } else {
        MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.q_a_proj, .out = q_a}));
        MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = q_a, .weight = l.q_a_norm, .out = q_a, .eps = kLatentNormEps}));
        MOEX_RETURN_IF_ERROR(backend_.matmul({.x = q_a, .w = l.q_b_proj, .out = q_flat}));
      }
      // The latent row of each token: normalised latent, then the rotated shared key.
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x_norm, .w = l.kv_a_proj, .out = kv_a}));
      const Tensor latent_slots = l.latent_cache.reshape({slots, latent});
      if (fuse_small_ops_) {
        // kv latent norm, RoPE of the shared key and of q, the cache write and the copy of q's
        // rope part into the absorbed query: one launch (ops/fused.h, bit-identical).
        MOEX_RETURN_IF_ERROR(backend_.mla_rope_cache({.kv_a = kv_a, .kv_norm = l.kv_a_norm, .eps = kLatentNormEps,
                                                      .q_rope = q_rope, .q_rope_out = q_latent_rope,
                                                      .positions = step.positions, .inv_freq = inv_freq_,
                                                      .attn_scale = rope_.attn_scale, .interleaved = true,
                                                      .slot_mapping = step.slot_mapping, .cache = latent_slots}));
      } else {
        MOEX_RETURN_IF_ERROR(backend_.rms_norm({.x = kv_latent, .weight = l.kv_a_norm, .out = kv_latent, .eps = kLatentNormEps}));
        MOEX_RETURN_IF_ERROR(backend_.rope({.x = k_rope, .positions = step.positions, .inv_freq = inv_freq_,
                                            .attn_scale = rope_.attn_scale, .interleaved = true}));
        MOEX_RETURN_IF_ERROR(backend_.rope({.x = q_rope, .positions = step.positions, .inv_freq = inv_freq_,
                                            .attn_scale = rope_.attn_scale, .interleaved = true}));
        MOEX_RETURN_IF_ERROR(backend_.cache_write({.src = kv_a, .slot_mapping = step.slot_mapping, .dst = latent_slots}));
        MOEX_RETURN_IF_ERROR(backend_.copy({.src = q_rope, .dst = q_latent_rope}));
      }
      // Absorbed query: [W_UK_h^T q_nope_h | q_rope_h] per head (the rope part copied above).
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = q_nope_by_head, .w = l.w_uk_t, .out = q_latent_nope}));
      MOEX_RETURN_IF_ERROR(backend_.mla_attention({.q = q_latent, .cache = l.latent_cache, .seqs = step.seqs,
                                                   .out = o_latent, .lse = {}, .kv_lora_rank = int(rank),
                                                   .scale = softmax_scale_}));
      // Values: W_UV_h applied to each head's attended latent, then the output projection.
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = o_latent_by_head, .w = l.w_uv, .out = attn_v_by_head}));
      MOEX_RETURN_IF_ERROR(backend_.matmul({.x = attn_v.reshape({n, heads * vd}), .w = l.o_proj, .out = attn_out}));
      MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kAttention, li));  // profile

      // Feed-forward: routed + shared experts, or a dense MLP in the first layers (its residual
      // add goes with the next norm).
      MOEX_ASSIGN_OR_RETURN(pending, ffn_branch(l.post_attn_norm, l.is_moe, l.moe, l.mlp, hidden, attn_out, x_norm, ws, li));
    }
    return add_residual(hidden, pending);
  }

 private:
  RopeTables rope_;
  float softmax_scale_ = 1.f;
  Tensor inv_freq_;  // [rope_dim / 2] f32
  std::vector<DeepseekLayer> layers_;
};

}  // namespace

std::unique_ptr<ModelBase> make_deepseek_model(Backend& backend, const ModelConfig& config) {
  return std::make_unique<DeepseekModel>(backend, config);
}

}  // namespace moex
