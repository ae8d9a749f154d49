// Shared pieces of the moex subcommands.
#pragma once
#include <string>

#include <CLI/CLI.hpp>

#include "core/status.h"
#include "runtime/engine.h"

namespace moex::cli {

// Options every model-loading subcommand takes.
struct ModelFlags {
  std::string model_dir;
  std::string device = "cpu";
  int threads = 0;
  bool random_weights = false;
  uint64_t weight_seed = 0;
  int64_t max_context = 4096;
  int page_size = 0;
};

void add_model_flags(CLI::App* app, ModelFlags* flags);
// The embedded default model when --model was not given.
std::string resolve_model_dir(const std::string& given);
EngineOptions engine_options(const ModelFlags& flags);
// Prints "moex: error: <message>" on stderr and returns the exit code (1).
int report(const Status& status);

int run_generate(const ModelFlags& model, const std::string& prompt, const std::string& prompt_ids, int64_t n,
                 const SamplingParams& sampling, bool ignore_eos, bool chat);
int run_info(const ModelFlags& model);
int run_perplexity(const ModelFlags& model, const std::string& file, int64_t window);
int run_logits(const ModelFlags& model, const std::string& ids_file, const std::string& out_path, bool full);

}  // namespace moex::cli
