// moex: the command-line front door.
//   moex run [--model DIR] --prompt TEXT -n N [--temperature T --top-k K --top-p P --seed S]
//   moex info [--model DIR]
//   moex perplexity [--model DIR] --file F [--window W]
//   moex logits [--model DIR] --prompt-ids-file F --out OUT.bin [--full]
//   moex bench roofline|ops|e2e ...     moex test-set --op X ...
#include <cstdlib>
#include <cstring>

#include <unistd.h>
#include <iostream>

#include "bench/bench_cli.h"
#include "cli_common.h"

// libgomp reads its wait policy once, when it loads, and by default spins ~300k iterations at
// every barrier: on a busy 2-core machine a spinning thread starves the one it waits for. Measured
// on the embedded model, 2 threads, load average ~5.6 (bench e2e, 256 decode steps, two rounds):
// default 10 / 60 tokens/s (p99 step 810 / 143 ms), GOMP_SPINCOUNT=10000 31 / 90,
// OMP_WAIT_POLICY=passive 133 / 152 (p99 33 / 15 ms). So moex runs passive unless the user chose.
static void use_passive_openmp_waits(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") || std::getenv("MOEX_NO_REEXEC")) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  setenv("MOEX_NO_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default policy
}

int main(int argc, char** argv) {
  use_passive_openmp_waits(argv);
  // bench and test-set own their flags.
  if (argc >= 2 && std::strcmp(argv[1], "bench") == 0) return moex::bench_main(argc - 1, argv + 1);
  if (argc >= 2 && std::strcmp(argv[1], "test-set") == 0) return moex::test_set_main(argc - 1, argv + 1);

  CLI::App app{"moex: Mixture-of-Experts inference engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "moex 0.1.0");

  moex::cli::ModelFlags model;
  std::string prompt, prompt_ids;
  int64_t n = 128;
  moex::SamplingParams sampling;
  bool ignore_eos = false;
  CLI::App* run = app.add_subcommand("run", "generate text from a prompt (streams it, then a timing line)");
  moex::cli::add_model_flags(run, &model);
  run->add_option("-p,--prompt", prompt, "prompt text")->excludes(run->add_option("--prompt-ids", prompt_ids, "prompt as comma-separated token ids"));
  run->add_option("-n,--max-tokens", n, "tokens to generate at most")->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  run->add_option("--temperature", sampling.temperature, "0 = greedy")->check(CLI::Range(0.f, 100.f));
  run->add_option("--top-k", sampling.top_k, "0 = off")->check(CLI::NonNegativeNumber);
  run->add_option("--top-p", sampling.top_p, "1 = off")->check(CLI::Range(0.f, 1.f));
  run->add_option("--seed", sampling.seed, "sampling seed");
  run->add_flag("--ignore-eos", ignore_eos, "keep generating after an end-of-sequence token");

  CLI::App* info = app.add_subcommand("info", "architecture, parameter counts and memory needed");
  moex::cli::ModelFlags info_model;
  moex::cli::add_model_flags(info, &info_model);

  CLI::App* ppl = app.add_subcommand("perplexity", "held-out perplexity of a text file");
  moex::cli::ModelFlags ppl_model;
  std::string file;
  int64_t window = 256;
  moex::cli::add_model_flags(ppl, &ppl_model);
  ppl->add_option("-f,--file", file, "UTF-8 text file")->required();
  ppl->add_option("--window", window, "tokens per scored window")->check(CLI::Range(int64_t(2), int64_t(1) << 20));

  CLI::App* logits = app.add_subcommand("logits", "per-position argmax and top-5 logits of a teacher-forced id sequence");
  moex::cli::ModelFlags logits_model;
  std::string ids_file, logits_out;
  bool logits_full = false;
  moex::cli::add_model_flags(logits, &logits_model);
  logits->add_option("--prompt-ids-file", ids_file, "token ids, whitespace or comma separated")->required();
  logits->add_option("-o,--out", logits_out, "output file (format: tools/moex/cmd_logits.cpp)")->required();
  logits->add_flag("--full", logits_full, "write all fp32 logits instead of the top-5");

  app.add_subcommand("bench", "benchmarks (moex bench --help)");
  app.add_subcommand("test-set", "operator test sets (moex test-set --help)");

  const auto is_subcommand = [&](const char* name) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->check_name(name)) return true;
    }
    return false;
  };
  if (argc >= 2 && argv[1][0] != '-' && !is_subcommand(argv[1])) {
    std::cerr << "moex: error: unknown subcommand '" << argv[1] << "' (expected run, info, perplexity, logits, bench or test-set)\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "moex: error: " << e.what() << " (see moex --help)\n";
    return 2;
  }

  if (run->parsed()) return moex::cli::run_generate(model, prompt, prompt_ids, n, sampling, ignore_eos, false);
  if (info->parsed()) return moex::cli::run_info(info_model);
  if (ppl->parsed()) return moex::cli::run_perplexity(ppl_model, file, window);
  if (logits->parsed()) return moex::cli::run_logits(logits_model, ids_file, logits_out, logits_full);
  return 2;
}
