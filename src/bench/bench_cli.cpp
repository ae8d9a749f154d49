// Flag parsing for `moex bench roofline|ops|e2e` and `moex test-set` (CLI11).
#include "bench/bench_cli.h"

#include <CLI/CLI.hpp>

#include <iostream>

#include "bench/commands.h"

namespace moex {
namespace {

// Parses argv; returns -1 when the caller should go on, else the exit code to return.
int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "moex " << app.get_name() << ": " << e.what() << "\n";
    return 2;
  }
  return -1;
}

int report(const Status& s, const std::string& what) {
  if (s.is_ok()) return 0;
  std::cerr << "moex " << what << ": " << s.message() << "\n";
  return 2;
}

}  // namespace

int bench_main(int argc, char** argv) {
  try {
    CLI::App app("benchmarks: roofline ceilings, operators against the roofline, end to end", "bench");
    app.require_subcommand(1);
    const std::string dev = bench::default_device();

    bench::RooflineOptions ro;
    ro.device = dev;
    CLI::App* roof = app.add_subcommand("roofline", "measure copy bandwidth and bf16/fp8 GEMM rates of this device");
    roof->add_option("--device", ro.device, "cuda or cpu")->check(CLI::IsMember({"cuda", "cpu"}));
    roof->add_option("--out", ro.out_dir, "results folder (default bench/results)");
    roof->add_option("--copy-mib", ro.copy_mib, "copy buffer size in MiB (default 2048)");
    roof->add_option("--gemm", ro.gemm_size, "GEMM size M = N = K (default 8192)");

    bench::OpsOptions oo;
    oo.device = dev;
    bool no_flush = false, no_graph = false;
    CLI::App* ops = app.add_subcommand("ops", "time operators on case files against the roofline floor");
    ops->add_option("--op", oo.op, "fused_moe, mla_decode, gqa_decode, rms_norm, nsa, prefill_attention or matmul")->required();
    ops->add_option("--cases", oo.cases_file, "case file (default bench/cases/<op>.json)");
    ops->add_flag("--check", oo.check, "verify each case against the reference before timing it");
    ops->add_option("--device", oo.device, "cuda or cpu")->check(CLI::IsMember({"cuda", "cpu"}));
    ops->add_option("--out", oo.out_dir, "results folder (default bench/results)");
    ops->add_option("--filter", oo.filter, "only cases whose name contains this");
    ops->add_option("--limit", oo.limit, "at most this many cases");
    ops->add_option("--warmup", oo.timing.warmup, "warm-up launches (default 10)");
    ops->add_option("--repeat", oo.timing.repeat, "timed launches (default 100)");
    ops->add_option("--seed", oo.seed, "random data seed");
    ops->add_flag("--no-flush", no_flush, "do not flush the cache before each timed launch");
    ops->add_flag("--no-graph", no_graph, "events around each launch instead of CUDA-graph replays");

    bench::E2eOptions eo;
    eo.device = dev;
    std::string random_dir;
    CLI::App* e2e = app.add_subcommand("e2e", "end-to-end latency and decode throughput (MLSys 2026 contest protocol)");
    auto* model_opt = e2e->add_option("--model", eo.model_dir, "checkpoint folder");
    auto* random_opt = e2e->add_option("--random-weights", random_dir, "folder with config.json: seeded random weights");
    model_opt->excludes(random_opt);
    e2e->add_option("--device", eo.device, "cuda or cpu")->check(CLI::IsMember({"cuda", "cpu"}));
    e2e->add_option("--out", eo.out_dir, "results folder (default bench/results)");
    e2e->add_option("--prompt-tokens", eo.prompt_tokens, "prompt length (default 128)");
    e2e->add_option("--gen-tokens", eo.gen_tokens, "generated tokens (default 512; prompt + generated = 640)");
    e2e->add_option("--batches", eo.batches, "decode throughput batch sizes (default 1 8 32 64 128 256 on cuda, 1 2 4 on cpu)");
    e2e->add_option("--decode-steps", eo.decode_steps, "timed decode steps per batch size (default 16)");
    e2e->add_option("--batch-prompt", eo.batch_prompt, "prompt tokens per sequence in the throughput runs (default 32)");
    e2e->add_option("--seed", eo.seed, "weights and prompt seed");
    e2e->add_option("--threads", eo.threads, "CPU backend threads (default: OpenMP default)");
    e2e->add_option("--profile-steps", eo.profile_steps,
                    "batch-1 decode steps of the profiled pass: attention / MoE / other split (default 16, 0 skips)");

    if (int code = parse(app, argc, argv); code >= 0) return code;
    if (roof->parsed()) return report(bench::run_roofline(ro, std::cout).status(), "bench roofline");
    if (ops->parsed()) {
      oo.timing.flush_cache = !no_flush;
      oo.timing.use_graph = !no_graph;
      if (oo.device == "cpu" && ops->count("--warmup") == 0) oo.timing.warmup = 2;  // the CPU is slow: fewer runs
      if (oo.device == "cpu" && ops->count("--repeat") == 0) oo.timing.repeat = 10;
      Expected<int> failed = bench::run_ops(oo, std::cout);
      if (!failed) return report(failed.status(), "bench ops");
      return *failed > 0 ? 1 : 0;
    }
    if (!random_dir.empty()) {
      eo.model_dir = random_dir;
      eo.random_weights = true;
    }
    return report(bench::run_e2e(eo, std::cout), "bench e2e");
  } catch (const std::exception& e) {  // nothing may escape to the CLI
    std::cerr << "moex bench: " << e.what() << "\n";
    return 2;
  }
}

int test_set_main(int argc, char** argv) {
  try {
    CLI::App app("operator test sets: a fixed case list against the reference", "test-set");
    bench::TestSetOptions o;
    o.device = bench::default_device();
    app.add_option("--op", o.op, "fused_moe, mla_decode or nsa")->required()->check(CLI::IsMember({"fused_moe", "mla_decode", "nsa"}));
    app.add_option("--device", o.device, "cuda (vs the CPU backend) or cpu (vs a naive double reference)")
        ->check(CLI::IsMember({"cuda", "cpu"}));
    app.add_option("--subset", o.subset, "run this many cases spread over the list");
    app.add_flag("--quiet", o.quiet, "print failures and the summary only");
    if (int code = parse(app, argc, argv); code >= 0) return code;
    Expected<int> failed = bench::run_test_set(o, std::cout);
    if (!failed) return report(failed.status(), "test-set");
    return *failed > 0 ? 1 : 0;
  } catch (const std::exception& e) {
    std::cerr << "moex test-set: " << e.what() << "\n";
    return 2;
  }
}

}  // namespace moex
