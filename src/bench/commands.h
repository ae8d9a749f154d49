// The work behind `moex bench roofline|ops|e2e` and `moex test-set` (flags parsed in
// bench_cli.cpp). Each prints a terminal table to `out` and writes JSON under out_dir.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bench/roofline.h"
#include "bench/timing.h"
#include "core/status.h"

namespace moex::bench {

// "cuda" when this moex was built with CUDA, else "cpu".
std::string default_device();
Expected<std::unique_ptr<Backend>> make_backend(const std::string& device, int threads = 0);

struct RooflineOptions {
  std::string device = "cuda";
  std::string out_dir = "bench/results";
  size_t copy_mib = 2048;  // per buffer (source and destination)
  int gemm_size = 8192;
};
Expected<Ceilings> run_roofline(const RooflineOptions& o, std::ostream& out);
// The stored ceilings of the backend's device, measured (and stored) first when there are none.
Expected<Ceilings> ceilings_for(Backend& be, const std::string& out_dir, std::ostream& out);
// CPU ceilings: multi-threaded memcpy bandwidth and the CPU backend's own matmul rate (bf16
// weights, fp32 activations) at 1024^3, the best that backend's GEMM loop does.
Expected<Ceilings> measure_cpu_ceilings(Backend& cpu);

struct OpsOptions {
  std::string op;
  std::string cases_file;  // empty = bench/cases/<op>.json
  std::string device = "cuda";
  std::string out_dir = "bench/results";
  std::string filter;      // run only cases whose name contains this
  int64_t limit = 0;       // > 0: at most this many cases
  bool check = false;
  uint64_t seed = 1;
  TimingOptions timing;
};
// Returns the number of cases whose check failed (0 = all passed or none checked).
Expected<int> run_ops(const OpsOptions& o, std::ostream& out);

struct E2eOptions {
  std::string model_dir;
  bool random_weights = false;
  std::string device = "cuda";
  std::string out_dir = "bench/results";
  int64_t prompt_tokens = 128;   // prompt + generated = 640, the contest's total
  int64_t gen_tokens = 512;
  std::vector<int64_t> batches;  // decode throughput; empty = 1..256 on GPU, 1, 2, 4 on CPU
  int64_t decode_steps = 16;     // timed steps per batch size
  int64_t batch_prompt = 32;     // prompt length of each sequence in the throughput runs
  uint64_t seed = 1;
  int threads = 0;               // CPU backend threads; 0 = OpenMP default
  int64_t profile_steps = 16;    // batch-1 decode steps of the profiled pass; 0 skips it
};
Status run_e2e(const E2eOptions& o, std::ostream& out);

struct TestSetOptions {
  std::string op;          // fused_moe | mla_decode | nsa
  std::string device = "cpu";
  int64_t subset = 0;      // > 0: this many cases spread over the list
  bool quiet = false;      // print failures and the summary only
};
// Returns the number of failed cases.
Expected<int> run_test_set(const TestSetOptions& o, std::ostream& out);

}  // namespace moex::bench
