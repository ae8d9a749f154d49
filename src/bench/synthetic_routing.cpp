#include "bench/synthetic_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moex::bench {

const char* routing_mode_name(RoutingMode m) {
  switch (m) {
    case RoutingMode::kRandom: return "random";
    case RoutingMode::kOneExpert: return "one_expert";
    case RoutingMode::kFewExperts: return "few_experts";
    case RoutingMode::kAll: return "all";
  }
  return "?";
}

bool routing_mode_from_name(const std::string& s, RoutingMode* out) {
  for (RoutingMode m : {RoutingMode::kRandom, RoutingMode::kOneExpert, RoutingMode::kFewExperts, RoutingMode::kAll}) {
    if (s == routing_mode_name(m)) {
      *out = m;
      return true;
    }
  }
  return false;
}

Routing make_routing(const RoutingSpec& spec) {
  Rng rng(spec.seed);
  const int64_t n = spec.tokens, E = spec.experts, k = std::min(spec.top_k, spec.experts);
  Routing r;
  r.slots = k + spec.shared;
  r.ids.assign(size_t(n * r.slots), 0);
  r.weights.assign(size_t(n * r.slots), 0.f);

  std::vector<int32_t> perm(static_cast<size_t>(E));
  std::iota(perm.begin(), perm.end(), 0);
  // kOneExpert: one fixed set; kFewExperts: a fixed pool of 2k experts to choose from.
  std::vector<int32_t> pool = perm;
  for (int64_t i = E - 1; i > 0; --i) std::swap(pool[size_t(i)], pool[size_t(rng.below(i + 1))]);
  if (spec.mode == RoutingMode::kFewExperts) pool.resize(size_t(std::min(E, 2 * k)));

  std::vector<double> score(static_cast<size_t>(E));
  std::vector<int32_t> chosen;
  for (int64_t t = 0; t < n; ++t) {
    chosen.clear();
    std::vector<double> w;
    if (spec.mode == RoutingMode::kRandom) {
      double mx = -INFINITY;
      for (int64_t e = 0; e < E; ++e) {
        score[size_t(e)] = rng.normal() - spec.skew * std::log1p(double(e));
        mx = std::max(mx, score[size_t(e)]);
      }
      for (double& s : score) s = std::exp(s - mx);  // softmax numerators; top-k of these
      std::vector<int32_t> order = perm;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return score[size_t(a)] != score[size_t(b)] ? score[size_t(a)] > score[size_t(b)] : a < b;
      });
      for (int64_t j = 0; j < k; ++j) {
        chosen.push_back(order[size_t(j)]);
        w.push_back(score[size_t(order[size_t(j)])]);
      }
    } else {
      std::vector<int32_t> cand = spec.mode == RoutingMode::kAll ? perm : pool;
      if (spec.mode == RoutingMode::kOneExpert) {
        cand.resize(size_t(k));  // the same k experts for every token, same slot order
      } else {
        for (int64_t i = int64_t(cand.size()) - 1; i > 0; --i) std::swap(cand[size_t(i)], cand[size_t(rng.below(i + 1))]);
      }
      for (int64_t j = 0; j < k; ++j) {
        chosen.push_back(cand[size_t(j)]);
        w.push_back(rng.uniform(0.05, 1.0));
      }
    }
    double sum = 0;
    for (double v : w) sum += v;
    for (int64_t j = 0; j < k; ++j) {
      r.ids[size_t(t * r.slots + j)] = chosen[size_t(j)];
      r.weights[size_t(t * r.slots + j)] = float(w[size_t(j)] / sum);
    }
    for (int64_t s = 0; s < spec.shared; ++s) {
      r.ids[size_t(t * r.slots + k + s)] = int32_t(E + s);
      r.weights[size_t(t * r.slots + k + s)] = 1.f;
    }
  }
  std::vector<bool> hit(size_t(E + spec.shared), false);
  for (int32_t id : r.ids) hit[size_t(id)] = true;
  r.experts_hit = n > 0 ? std::count(hit.begin(), hit.end(), true) : 0;
  return r;
}

}  // namespace moex::bench
