#include "cli_common.h"

#include <filesystem>
#include <iostream>

#ifndef MOEX_DEFAULT_MODEL_DIR
#define MOEX_DEFAULT_MODEL_DIR "models/moex-kjv-dsv3"
#endif

namespace moex::cli {

void add_model_flags(CLI::App* app, ModelFlags* flags) {
  app->add_option("-m,--model", flags->model_dir, "model folder (config.json, *.safetensors, tokenizer.json); default: the embedded model");
  app->add_option("--device", flags->device, "cpu (fp32 reference), cpu-bf16 (bf16 activations) or cuda")
      ->check(CLI::IsMember({"cpu", "cpu-bf16", "cuda"}));
  app->add_option("-t,--threads", flags->threads, "CPU threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app->add_flag("--random-weights", flags->random_weights, "read config.json only and use seeded random weights");
  app->add_option("--weight-seed", flags->weight_seed, "seed of --random-weights");
  app->add_option("--max-context", flags->max_context, "KV cache capacity in tokens")->check(CLI::Range(int64_t(16), int64_t(1) << 24));
  app->add_option("--page-size", flags->page_size, "KV cache page size in tokens (0 = backend default)")->check(CLI::Range(0, 4096));
}

std::string resolve_model_dir(const std::string& given) {
  if (!given.empty()) return given;
  // The embedded model: next to the binary's source tree (build/..) or the working directory.
  if (std::filesystem::exists(MOEX_DEFAULT_MODEL_DIR)) return MOEX_DEFAULT_MODEL_DIR;
  return "models/moex-kjv-dsv3";
}

EngineOptions engine_options(const ModelFlags& flags) {
  EngineOptions o;
  o.model_dir = resolve_model_dir(flags.model_dir);
  o.device = flags.device;
  o.threads = flags.threads;
  o.random_weights = flags.random_weights;
  o.weight_seed = flags.weight_seed;
  o.max_context = flags.max_context;
  o.page_size = flags.page_size;
  return o;
}

int report(const Status& status) {
  std::cerr << "moex: error: " << status.message() << "\n";
  return 1;
}

}  // namespace moex::cli
