// `moex test-set`: a fixed case list of one op on one backend against its reference.
#include <cmath>
#include <iomanip>

#include "bench/commands.h"
#include "bench/test_sets.h"

namespace moex::bench {

Expected<int> run_test_set(const TestSetOptions& o, std::ostream& out) {
  if (o.op != "fused_moe" && o.op != "mla_decode" && o.op != "nsa")
    return invalid_argument("--op: '" + o.op + "' is not fused_moe, mla_decode or nsa");
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Backend> target, make_backend(o.device));
  // CUDA is checked against the CPU backend; the CPU backend against the naive double code.
  std::unique_ptr<Backend> reference;
  if (target->device() != DeviceType::kCpu) reference = make_cpu_backend();
  const std::string ref_name = reference ? "cpu backend" : "naive double-precision reference";

  int passed = 0, failed = 0, near_ties = 0;
  double worst = 0;
  auto on_case = [&](const CaseResult& r) {
    r.passed ? ++passed : ++failed;
    near_ties += r.near_ties;
    if (std::isfinite(r.rel_err)) worst = std::max(worst, r.rel_err);
    if (o.quiet && r.passed) return;
    out << (r.passed ? "PASS " : "FAIL ") << std::left << std::setw(48) << r.name << std::right << " rel_err "
        << std::scientific << std::setprecision(3) << r.rel_err << " (tol " << r.tolerance << ")";
    if (r.quant_err >= 0) out << " vs-unquantized " << r.quant_err;
    if (!r.error.empty()) out << " error: " << r.error;
    out << "\n";
  };
  size_t total = 0;
  if (o.op == "fused_moe") {
    std::vector<MoeTestCase> all = fused_moe_test_cases(), cases;
    for (size_t i : subset_indices(all.size(), o.subset)) cases.push_back(all[i]);
    total = cases.size();
    out << "test-set fused_moe: " << total << " of " << all.size() << " cases on " << target->name() << " vs " << ref_name << "\n";
    MOEX_RETURN_IF_ERROR(run_moe_test_set(*target, reference.get(), cases, on_case).status());
  } else if (o.op == "nsa") {
    std::vector<NsaTestCase> all = nsa_test_cases(), cases;
    for (size_t i : subset_indices(all.size(), o.subset)) cases.push_back(all[i]);
    total = cases.size();
    out << "test-set nsa: " << total << " of " << all.size() << " cases on " << target->name() << " vs " << ref_name << "\n";
    MOEX_RETURN_IF_ERROR(run_nsa_test_set(*target, reference.get(), cases, on_case).status());
  } else {
    std::vector<MlaTestCase> all = mla_decode_test_cases(), cases;
    for (size_t i : subset_indices(all.size(), o.subset)) cases.push_back(all[i]);
    total = cases.size();
    out << "test-set mla_decode: " << total << " of " << all.size() << " cases on " << target->name() << " vs " << ref_name << "\n";
    MOEX_RETURN_IF_ERROR(run_mla_test_set(*target, reference.get(), cases, on_case).status());
  }
  out << std::defaultfloat << "pass rate " << passed << "/" << total << " (" << std::fixed << std::setprecision(1)
      << (total ? 100.0 * passed / double(total) : 0.0) << "%), worst finite rel_err " << std::scientific
      << std::setprecision(3) << worst << "\n"
      << passed << " passed, " << failed << " failed\n";
  if (o.op == "nsa") out << near_ties << " sel_idx near ties accepted (importances within 1e-5 relative)\n";
  return failed;
}

}  // namespace moex::bench
