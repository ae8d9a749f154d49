// moex perplexity: exp(mean NLL) of a text file, scored in non-overlapping windows.
// The protocol (no BOS, the whole file as one token stream, windows of --window tokens, each
// window's first token is context only) matches tools/train_embedded/eval_hf.py.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli_common.h"

namespace moex::cli {

int run_perplexity(const ModelFlags& flags, const std::string& file, int64_t window) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return report(not_found("cannot open text file " + file));
  std::stringstream ss;
  ss << in.rdbuf();
  ModelFlags sized = flags;
  sized.max_context = std::max<int64_t>(flags.max_context, window);
  auto engine_or = Engine::create(engine_options(sized));
  if (!engine_or) return report(engine_or.status());
  Engine& engine = **engine_or;
  if (!engine.tokenizer()) return report(not_found("the model folder has no tokenizer.json"));
  const std::vector<int32_t> ids = engine.tokenizer()->encode(ss.str(), /*add_special_tokens=*/false);
  int64_t scored = 0;
  auto nll = engine.mean_nll(ids, window, &scored);
  if (!nll) return report(nll.status());
  std::printf("file %s: %zu tokens, %lld scored in windows of %lld\n", file.c_str(), ids.size(), (long long)scored,
              (long long)window);
  std::printf("mean NLL %.6f nats/token, perplexity %.4f\n", *nll, std::exp(*nll));
  return 0;
}

}  // namespace moex::cli
