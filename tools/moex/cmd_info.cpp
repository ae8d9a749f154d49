// moex info: what a checkpoint is and what it needs.
#include <cstdio>

#include "cli_common.h"

namespace moex::cli {
namespace {

std::string human(double v, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (v >= 1000.0 && i < 4) { v /= 1000.0; ++i; }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s%s", v, prefixes[i], unit);
  return buf;
}

}  // namespace

int run_info(const ModelFlags& flags) {
  ModelFlags small = flags;
  small.max_context = 16;  // info needs no real KV cache
  auto engine_or = Engine::create(engine_options(small));
  if (!engine_or) return report(engine_or.status());
  Engine& engine = **engine_or;
  const ModelConfig& c = engine.model().config();
  const ParamCounts p = engine.model().param_counts();
  const int64_t kv = engine.model().kv_bytes_per_token();

  std::printf("architecture      %s (%s)\n", arch_name(c.arch), c.model_type.c_str());
  std::printf("layers            %lld, hidden %lld, vocab %lld\n", (long long)c.num_layers, (long long)c.hidden_size,
              (long long)c.vocab_size);
  if (c.is_mla()) {
    std::printf("attention         MLA: %lld heads, q_lora_rank %lld, kv_lora_rank %lld, qk %lld+%lld, v %lld\n",
                (long long)c.num_attention_heads, (long long)c.q_lora_rank, (long long)c.kv_lora_rank,
                (long long)c.qk_nope_head_dim, (long long)c.qk_rope_head_dim, (long long)c.v_head_dim);
  } else {
    std::printf("attention         GQA: %lld query heads, %lld kv heads, head dim %lld%s\n",
                (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
                c.sliding_window > 0 ? (", sliding window " + std::to_string(c.sliding_window)).c_str() : "");
  }
  std::printf("experts           %lld routed, top-%lld, %lld shared, expert width %lld\n", (long long)c.num_experts,
              (long long)c.num_experts_per_tok, (long long)c.n_shared_experts, (long long)c.moe_intermediate_size);
  std::printf("parameters        %s total, %s active per token\n", human(double(p.total), "").c_str(),
              human(double(p.active_per_token), "").c_str());
  std::printf("weights           %s as stored\n", human(double(p.bytes), "B").c_str());
  std::printf("KV cache          %s per token (%s for %lld tokens)\n", human(double(kv), "B").c_str(),
              human(double(kv) * double(flags.max_context), "B").c_str(), (long long)flags.max_context);
  std::printf("memory needed     %s (weights + KV cache for %lld tokens)\n",
              human(double(p.bytes) + double(kv) * double(flags.max_context), "B").c_str(), (long long)flags.max_context);
  return 0;
}

}  // namespace moex::cli
