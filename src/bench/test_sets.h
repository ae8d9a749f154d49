// Operator test sets: fixed, generated lists of cases (>= 200 per op) that stress the corners
// of an op contract, run on one backend and compared with a reference: the CPU backend when
// testing CUDA, the naive double-precision code of bench/reference.h when testing the CPU.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bench/synthetic_routing.h"
#include "core/status.h"
#include "ops/nsa.h"

namespace moex::bench {

struct MoeTestCase {
  std::string name;
  int64_t tokens = 1, experts = 8, top_k = 2, hidden = 64, inter = 32, shared = 0;
  RoutingMode routing = RoutingMode::kRandom;
  double skew = 0;
  DType weight_dtype = DType::kBF16;
  bool partial_expert_map = false;  // only every other expert is local (expert parallel slice)
  uint64_t seed = 1;
};

struct MlaTestCase {
  std::string name;
  std::vector<int32_t> kv_lens;  // cached tokens per sequence after this step (ragged)
  int64_t q_len = 1;             // query tokens per sequence (1 or 2)
  int64_t heads = 16;
  int page_size = 64;
  int64_t kv_lora_rank = 512, rope_dim = 64;
  bool want_lse = true;
  // kF8E4M3: the latents (drawn in the activation dtype) are quantized to the e4m3 cache with
  // per-token scales by the CPU backend's cache_write; anything else: the activation dtype.
  DType cache_dtype = DType::kBF16;
  uint64_t seed = 1;
};

// Native Sparse Attention (test_set_nsa.cpp): a forward case runs nsa_forward over the ragged
// batch `lens`; a decode case runs nsa_decode on the last token of each sequence of `lens`.
struct NsaTestCase {
  std::string name;
  bool decode = false;
  std::vector<int32_t> lens;
  int64_t q_heads = 4, kv_heads = 1, dk = 64, dv = 64;
  ops::NsaConfig cfg;      // scale = 1 / sqrt(dk)
  bool given_cmp = false;  // caller-provided compressed rows (decode: update_cmp off)
  bool ties = false;       // selection blocks repeat two templates: exact importance ties
  int page_size = 64;      // decode
  uint64_t seed = 1;
};

std::vector<MoeTestCase> fused_moe_test_cases();
std::vector<MlaTestCase> mla_decode_test_cases();
std::vector<NsaTestCase> nsa_test_cases();
// `subset` cases spread evenly over a list of `total` (all when subset <= 0 or >= total).
std::vector<size_t> subset_indices(size_t total, int64_t subset);

struct CaseResult {
  std::string name;
  double rel_err = 0;   // relative L2 error of out (max with lse's where checked)
  double tolerance = 0;
  bool passed = false;
  std::string error;    // set when the backend or reference refused the case
  double quant_err = -1;  // fp8-cache MLA cases: rel. L2 of out vs the unquantized cache (-1: none)
  int near_ties = 0;    // NSA: sel_idx mismatches accepted as near ties (rounding may flip them)
};

// Tolerance on the relative L2 error by the dtype of the tested output: fp32 outputs come from
// fp32 accumulation of exactly representable inputs; bf16 outputs add one bf16 rounding of the
// result and of intermediates (SwiGLU activations, attention probabilities).
double tolerance_for(DType out_dtype);

// `reference` null = the naive double-precision reference. `on_case` sees each result as it
// completes (for printing).
Expected<std::vector<CaseResult>> run_moe_test_set(Backend& target, Backend* reference,
                                                   const std::vector<MoeTestCase>& cases,
                                                   const std::function<void(const CaseResult&)>& on_case);
Expected<std::vector<CaseResult>> run_mla_test_set(Backend& target, Backend* reference,
                                                   const std::vector<MlaTestCase>& cases,
                                                   const std::function<void(const CaseResult&)>& on_case);
CaseResult run_moe_case(Backend& target, Backend* reference, const MoeTestCase& c);
Expected<std::vector<CaseResult>> run_nsa_test_set(Backend& target, Backend* reference,
                                                   const std::vector<NsaTestCase>& cases,
                                                   const std::function<void(const CaseResult&)>& on_case);
CaseResult run_mla_case(Backend& target, Backend* reference, const MlaTestCase& c);
CaseResult run_nsa_case(Backend& target, Backend* reference, const NsaTestCase& c);

}  // namespace moex::bench
