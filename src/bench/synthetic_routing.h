// Expert choices for MoE benchmarks and test sets, made on the host.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "bench/host_tensor.h"

namespace moex::bench {

enum class RoutingMode : uint8_t {
  kRandom,     // random router logits minus skew * ln(1 + e), softmax, top-k (real routing)
  kOneExpert,  // every token picks the same top_k experts: one expert (per slot) gets all tokens
  kFewExperts, // tokens choose among only 2 * top_k experts: most experts get no token
  kAll,        // top_k = experts: every token visits every expert, in a random order per token
};
const char* routing_mode_name(RoutingMode m);
bool routing_mode_from_name(const std::string& s, RoutingMode* out);

struct RoutingSpec {
  int64_t tokens = 1;
  int64_t experts = 8;     // routed experts
  int64_t top_k = 2;
  int64_t shared = 0;      // shared experts appended as ids experts..experts+shared-1, weight 1
  RoutingMode mode = RoutingMode::kRandom;
  double skew = 0;         // kRandom: 0 = uniform; larger favours low expert ids (Zipf-like)
  uint64_t seed = 1;
};

struct Routing {
  std::vector<int32_t> ids;     // [tokens, top_k + shared]
  std::vector<float> weights;   // [tokens, top_k + shared]; routed weights sum to 1 per token
  int64_t slots = 0;            // top_k + shared
  int64_t experts_hit = 0;      // distinct experts (routed and shared) with at least one token
};

Routing make_routing(const RoutingSpec& spec);

}  // namespace moex::bench
