// moex: the command-line front door.
//   moex run [--model DIR] --prompt TEXT -n N [--temperature T --top-k K --top-p P --seed S]
//   moex info [--model DIR]
//   moex perplexity [--model DIR] --file F [--window W]
//   moex bench roofline|ops|e2e ...     moex test-set --op X ...
#include <cstring>
#include <iostream>

#include "bench/bench_cli.h"
#include "cli_common.h"

int main(int argc, char** argv) {
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

  app.add_subcommand("bench", "benchmarks (moex bench --help)");
  app.add_subcommand("test-set", "operator test sets (moex test-set --help)");

  const auto is_subcommand = [&](const char* name) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->check_name(name)) return true;
    }
    return false;
  };
  if (argc >= 2 && argv[1][0] != '-' && !is_subcommand(argv[1])) {
    std::cerr << "moex: error: unknown subcommand '" << argv[1] << "' (expected run, info, perplexity, bench or test-set)\n";
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
  return 2;
}
