// `moex bench ops`: each case of a case file, made into a workload, checked (optionally),
// timed by the protocol of timing.h, printed as a table row and appended as a JSON record.
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "bench/cases.h"
#include "bench/commands.h"
#include "bench/records.h"
#include "bench/workloads.h"

namespace moex::bench {
namespace {

std::string fmt(double v, int precision) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << v;
  return s.str();
}

void print_header(std::ostream& out) {
  out << std::left << std::setw(44) << "case" << std::right << std::setw(11) << "median us" << std::setw(11) << "min us"
      << std::setw(9) << "GB/s" << std::setw(9) << "TFLOP/s" << std::setw(11) << "floor us" << std::setw(7) << "frac"
      << std::setw(9) << "bound" << "  check\n";
}

void print_row(const BenchRecord& r, std::ostream& out) {
  std::string check = r.check;
  if (r.check_rel_err >= 0) {
    std::ostringstream e;
    e << std::scientific << std::setprecision(2) << r.check_rel_err;
    check += " (" + e.str() + ")";
  }
  out << std::left << std::setw(44) << r.case_name << std::right << std::setw(11) << fmt(r.median_s * 1e6, 2)
      << std::setw(11) << fmt(r.min_s * 1e6, 2) << std::setw(9) << fmt(r.bytes / r.median_s / 1e9, 1) << std::setw(9)
      << fmt(r.flops / r.median_s / 1e12, 2) << std::setw(11) << fmt(r.floor.seconds * 1e6, 2) << std::setw(7)
      << fmt(fraction_of_floor(r.floor, r.median_s), 3) << std::setw(9) << bound_name(r.floor.bound) << "  " << check
      << "\n";
}

Expected<BenchRecord> run_case(Backend& be, const BenchCase& c, const OpsOptions& o, const Ceilings& ceil,
                               const std::string& device, const std::string& commit, WorkloadCache* cache) {
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Workload> w, make_workload(be, c, o.seed, cache));
  BenchRecord r;
  r.op = o.op;
  r.case_name = c.name;
  r.model = c.model;
  r.impl = be.name();
  r.device_name = device;
  r.commit = commit;
  r.timestamp = utc_timestamp();
  r.shape = w->shape;
  r.bytes = w->bytes;
  r.flops = w->flops;
  if (o.check) {
    Expected<double> err = w->check();
    if (!err) return Status(err.status().code(), "check: " + err.status().message());
    r.check_rel_err = *err;
    r.check = *err <= w->tolerance ? "passed" : "failed";
  }
  MOEX_ASSIGN_OR_RETURN(Timing t, time_op(be, w->launch, o.timing));
  r.timing_method = t.method;
  r.median_s = t.median_s;
  r.min_s = t.min_s;
  r.samples = int(t.samples_s.size());
  r.floor = roofline_floor(r.bytes, r.flops, ceil.copy_bytes_per_s, ceil.bf16_flops_per_s);
  return r;
}

}  // namespace

Expected<int> run_ops(const OpsOptions& o, std::ostream& out) {
  const std::vector<std::string>& known = workload_ops();
  if (std::find(known.begin(), known.end(), o.op) == known.end()) {
    std::string list;
    for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
    return invalid_argument("--op: '" + o.op + "' is not one of " + list);
  }
  const std::string file = o.cases_file.empty() ? "bench/cases/" + o.op + ".json" : o.cases_file;
  MOEX_ASSIGN_OR_RETURN(std::vector<BenchCase> all, load_cases(file));
  std::vector<BenchCase> cases;
  for (BenchCase& c : all) {
    if (c.op != o.op || (!o.filter.empty() && c.name.find(o.filter) == std::string::npos)) continue;
    if (o.limit > 0 && int64_t(cases.size()) >= o.limit) break;
    cases.push_back(std::move(c));
  }
  if (cases.empty()) return invalid_argument(file + ": no case for op '" + o.op + "'" + (o.filter.empty() ? "" : " matching '" + o.filter + "'"));

  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Backend> be, make_backend(o.device));
  MOEX_ASSIGN_OR_RETURN(Ceilings ceil, ceilings_for(*be, o.out_dir, out));
  const std::string device = device_name_of(*be), commit = current_commit();
  out << o.op << " on " << device << " (" << be->name() << "), commit " << commit.substr(0, 12) << ", ceilings "
      << fmt(ceil.copy_bytes_per_s / 1e12, 3) << " TB/s, " << fmt(ceil.bf16_flops_per_s / 1e12, 3) << " TFLOP/s bf16; "
      << cases.size() << " cases from " << file << "\n";
  print_header(out);

  int failures = 0;
  std::vector<nlohmann::json> records;
  {
    WorkloadCache cache;  // destroyed before the backend
    for (const BenchCase& c : cases) {
      // A case that cannot run (out of memory, refused by the backend) is reported and counted
      // as a failure; the other cases still run.
      Expected<BenchRecord> r = run_case(*be, c, o, ceil, device, commit, &cache);
      if (!r) {
        out << std::left << std::setw(44) << c.name << " ERROR " << r.status().message() << "\n";
        ++failures;
        continue;
      }
      if (r->check == "failed") ++failures;
      print_row(*r, out);
      out.flush();
      records.push_back(record_to_json(*r));
    }
  }
  const std::string path = o.out_dir + "/" + device_slug(device) + "/" + o.op + ".json";
  MOEX_RETURN_IF_ERROR(append_json_records(path, records));
  out << records.size() << " records appended to " << path;
  out << "; " << (int(cases.size()) - failures) << " passed, " << failures << " failed"
      << (o.check ? " (check or error)" : " (errors; no check)");
  out << "\n";
  return failures;
}

}  // namespace moex::bench
