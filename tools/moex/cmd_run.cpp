// moex run: stream a continuation of a prompt, then one timing line.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "cli_common.h"

namespace moex::cli {
namespace {

Expected<std::vector<int32_t>> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      return invalid_argument("--prompt-ids: '" + item + "' is not a token id");
    }
  }
  if (ids.empty()) return invalid_argument("--prompt-ids: no token ids given");
  return ids;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[size_t(q * double(v.size() - 1) + 0.5)];
}

}  // namespace

int run_generate(const ModelFlags& model, const std::string& prompt, const std::string& prompt_ids, int64_t n,
                 const SamplingParams& sampling, bool ignore_eos, bool /*chat*/) {
  // Before the model loads and before the prompt is echoed: a bad value prints nothing else.
  if (Status st = validate(sampling); !st.is_ok()) return report(st);
  auto engine_or = Engine::create(engine_options(model));
  if (!engine_or) return report(engine_or.status());
  Engine& engine = **engine_or;
  const Tokenizer* tok = engine.tokenizer();

  std::vector<int32_t> ids;
  if (!prompt_ids.empty()) {
    auto parsed = parse_ids(prompt_ids);
    if (!parsed) return report(parsed.status());
    ids = std::move(*parsed);
  } else {
    if (!tok) return report(not_found("the model folder has no tokenizer.json: give --prompt-ids instead of --prompt"));
    const std::string text = prompt.empty() ? std::string("In the beginning") : prompt;
    ids = tok->encode(text, /*add_special_tokens=*/true);
    if (ids.empty()) return report(invalid_argument("the prompt encodes to no tokens"));
    std::cout << text << std::flush;
  }

  GenerateOptions options;
  options.max_new_tokens = n;
  options.sampling = sampling;
  options.stop_at_eos = !ignore_eos;
  bool first_id = true;
  std::optional<StreamDecoder> stream;
  if (tok) stream.emplace(*tok, /*skip_special_tokens=*/true);
  auto stats = engine.generate(ids, options, [&](int32_t id) {
    if (stream) {
      std::cout << stream->push(id) << std::flush;
    } else {
      std::cout << (first_id ? "" : " ") << id << std::flush;
      first_id = false;
    }
  });
  if (stream) std::cout << stream->flush();
  std::cout << "\n";
  if (!stats) return report(stats.status());

  const GenerateStats& s = *stats;
  const double prompt_tps = s.prefill_seconds > 0 ? double(s.prompt_tokens) / s.prefill_seconds : 0;
  const double gen_tps = s.decode_seconds > 0 ? double(s.generated_tokens) / s.decode_seconds : 0;
  std::fprintf(stdout,
               "[moex] %s on %s | load %.2f s | prompt %lld tok, %.1f tok/s | generated %lld tok, %.1f tok/s "
               "(step p50 %.2f ms, p99 %.2f ms)%s\n",
               engine.model().config().model_type.c_str(), engine.backend().name().c_str(), engine.load_seconds(),
               static_cast<long long>(s.prompt_tokens), prompt_tps, static_cast<long long>(s.generated_tokens), gen_tps,
               percentile(s.step_seconds, 0.5) * 1e3, percentile(s.step_seconds, 0.99) * 1e3,
               s.stopped_at_eos ? " | stopped at EOS" : "");
  return 0;
}

}  // namespace moex::cli
