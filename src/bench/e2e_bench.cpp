// `moex bench e2e`: the MLSys 2026 MoE contest protocol as far as the engine API allows.
//   1. batch 1, greedy, a random prompt then generation to prompt + gen tokens (640 by
//      default): end-to-end latency, prefill time, decode step p50/p99, tokens/s;
//   2. decode throughput at several batch sizes: B sequences of a short prompt are prefilled,
//      then `decode_steps` batched decode steps are timed (greedy, one token per sequence).
//   3. a profiled batch-1 decode pass (Model::set_profiling: the backend is synchronized at
//      every region boundary) splitting each step into attention / MoE / other, per layer and in
//      total. It runs after every timed run, so its synchronizations never touch the numbers above.
// Prompts are random token ids (a random-weights model has no meaningful text).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iomanip>

#include "bench/commands.h"
#include "bench/host_tensor.h"
#include "bench/records.h"
#include "runtime/engine.h"

namespace moex::bench {
namespace {

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int32_t> random_prompt(int64_t len, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(len));
  // Stay clear of the top of the vocabulary, where special tokens (EOS) usually live.
  const int64_t range = std::max<int64_t>(1, vocab > 1024 ? vocab - 512 : vocab);
  for (int32_t& t : p) t = int32_t(rng.below(range));
  return p;
}

int32_t argmax(const float* row, int64_t vocab) {
  return int32_t(std::max_element(row, row + vocab) - row);
}

// The machine's 1-minute load average (Linux), -1 when unreadable: CPU timings on a shared host
// only mean something next to it.
double load_average() {
  std::ifstream f("/proc/loadavg");
  double l = -1;
  if (!(f >> l)) return -1;
  return l;
}

// Part 3: batch 1, a prompt of o.prompt_tokens prefilled unprofiled, then o.profile_steps greedy
// decode steps with the model's profiling on. Seconds are per decode step.
Expected<nlohmann::json> profile_decode(Engine& engine, const E2eOptions& o, int64_t vocab, std::ostream& out) {
  Model& model = engine.model();
  const int64_t layers = model.config().num_layers;
  Sequence seq;
  seq.tokens = random_prompt(o.prompt_tokens, vocab, o.seed + 7);
  std::vector<float> logits;  // [1, vocab]
  Status s = engine.step({&seq}, &logits);
  model.set_profiling(true);
  std::vector<double> steps;
  for (int64_t k = 0; s.is_ok() && k < o.profile_steps; ++k) {
    seq.tokens.push_back(argmax(logits.data(), vocab));
    auto t0 = std::chrono::steady_clock::now();
    s = engine.step({&seq}, &logits);
    steps.push_back(since(t0));
  }
  const ModelProfile p = model.profile();
  model.set_profiling(false);
  engine.release(&seq);
  MOEX_RETURN_IF_ERROR(s);
  if (p.forwards <= 0 || int64_t(p.layer_attention_s.size()) != layers)
    return internal_error("bench e2e: the model recorded no profile (profiling unsupported?)");

  const double per = 1.0 / double(p.forwards);
  double step_mean = 0, in_layer_other = 0;
  for (double v : steps) step_mean += v / double(steps.size());
  int64_t moe_layers = 0;
  nlohmann::json per_layer = nlohmann::json::array();
  for (size_t i = 0; i < size_t(layers); ++i) {
    in_layer_other += p.layer_other_s[i];
    if (p.layer_moe_s[i] > 0) ++moe_layers;
    per_layer.push_back({{"layer", int64_t(i)},
                         {"attention_s", p.layer_attention_s[i] * per},
                         {"moe_s", p.layer_moe_s[i] * per},
                         {"other_s", p.layer_other_s[i] * per}});
  }
  const double attn = p.attention_s * per, moe = p.moe_s * per, other = p.other_s * per;
  const double attn_layer = layers > 0 ? attn / double(layers) : 0;
  const double moe_layer = moe_layers > 0 ? moe / double(moe_layers) : 0;
  const double other_layer = layers > 0 ? in_layer_other * per / double(layers) : 0;
  const double region_sum = attn + moe + other;

  out << "profiled decode: batch 1, " << p.forwards << " steps after a " << o.prompt_tokens
      << "-token prompt, synchronized at region boundaries (step " << step_mean * 1e3 << " ms here)\n";
  out << std::setw(12) << "region" << std::setw(14) << "ms/step" << std::setw(16) << "ms/layer mean" << std::setw(10)
      << "share" << "\n";
  auto row = [&](const char* name, double total, double layer_mean) {
    out << std::setw(12) << name << std::setw(14) << total * 1e3 << std::setw(16) << layer_mean * 1e3 << std::setw(10)
        << (region_sum > 0 ? total / region_sum : 0) << "\n";
  };
  row("attention", attn, attn_layer);
  row("moe", moe, moe_layer);
  row("other", other, other_layer);
  out << std::setw(12) << "sum" << std::setw(14) << region_sum * 1e3 << "  (of " << layers << " layers, " << moe_layers
      << " MoE; 'other' per layer excludes embedding / lm_head / upload: " << (other - in_layer_other * per) * 1e3
      << " ms/step)\n";

  return nlohmann::json{{"decode_steps", p.forwards},
                        {"context_tokens", o.prompt_tokens},
                        {"step_mean_s", step_mean},
                        {"forward_mean_s", p.forward_s * per},
                        {"attention_s", attn},
                        {"moe_s", moe},
                        {"other_s", other},
                        {"other_outside_layers_s", other - in_layer_other * per},
                        {"attention_per_layer_s", attn_layer},
                        {"moe_per_layer_s", moe_layer},
                        {"other_per_layer_s", other_layer},
                        {"layers", layers},
                        {"moe_layers", moe_layers},
                        {"per_layer", per_layer}};
}

}  // namespace

Status run_e2e(const E2eOptions& o, std::ostream& out) {
  if (o.model_dir.empty()) return invalid_argument("bench e2e: give --model DIR or --random-weights CONFIG_DIR");
  if (o.prompt_tokens <= 0 || o.gen_tokens <= 0 || o.decode_steps <= 0 || o.batch_prompt <= 0)
    return invalid_argument("bench e2e: token counts and --decode-steps must be > 0");
  std::vector<int64_t> batches = o.batches;
  if (batches.empty()) batches = o.device == "cuda" ? std::vector<int64_t>{1, 8, 32, 64, 128, 256} : std::vector<int64_t>{1, 2, 4};
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());

  EngineOptions eo;
  eo.model_dir = o.model_dir;
  eo.device = o.device;
  eo.threads = o.threads;
  eo.random_weights = o.random_weights;
  eo.weight_seed = o.seed;
  // KV room for the batch-1 run and for the largest batch (one page of slack per sequence).
  eo.max_context = std::max(o.prompt_tokens + o.gen_tokens + 64, max_batch * (o.batch_prompt + o.decode_steps + 64));
  out << "loading " << o.model_dir << (o.random_weights ? " (random weights)" : "") << " on " << o.device << "...\n";
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::create(eo));
  const ModelConfig& cfg = engine->model().config();
  const int64_t vocab = cfg.vocab_size;
  const std::string device = device_name_of(engine->backend()), commit = current_commit();
  out << std::fixed << std::setprecision(3) << arch_name(cfg.arch) << ", " << cfg.num_layers << " layers, loaded in "
      << engine->load_seconds() << " s on " << device << "\n";

  // 1. Batch 1, greedy. A short untimed run first warms the backend up (allocations, clocks).
  GenerateOptions go;
  go.max_new_tokens = o.gen_tokens;
  go.stop_at_eos = false;  // the protocol fixes the length
  {
    GenerateOptions warm = go;
    warm.max_new_tokens = 4;
    MOEX_RETURN_IF_ERROR(engine->generate(random_prompt(16, vocab, o.seed + 99), warm, nullptr).status());
  }
  MOEX_ASSIGN_OR_RETURN(GenerateStats st, engine->generate(random_prompt(o.prompt_tokens, vocab, o.seed), go, nullptr));
  const double e2e_s = st.prefill_seconds + st.decode_seconds;
  const double p50 = quantile_of(st.step_seconds, 0.5), p99 = quantile_of(st.step_seconds, 0.99);
  const double decode_tps = st.decode_seconds > 0 ? double(st.step_seconds.size()) / st.decode_seconds : 0;
  out << "batch 1: prompt " << st.prompt_tokens << " + generated " << st.generated_tokens << " tokens: end-to-end "
      << e2e_s << " s, prefill " << st.prefill_seconds * 1e3 << " ms, decode step p50 " << p50 * 1e3 << " ms, p99 "
      << p99 * 1e3 << " ms, " << decode_tps << " tokens/s decode, " << double(st.generated_tokens) / e2e_s
      << " tokens/s overall\n";

  nlohmann::json rec = {{"op", "e2e"},
                        {"model", o.model_dir},
                        {"arch", arch_name(cfg.arch)},
                        {"random_weights", o.random_weights},
                        {"impl", engine->backend().name()},
                        {"device", device},
                        {"commit", commit},
                        {"timestamp", utc_timestamp()},
                        {"prompt_tokens", st.prompt_tokens},
                        {"generated_tokens", st.generated_tokens},
                        {"e2e_s", e2e_s},
                        {"prefill_s", st.prefill_seconds},
                        {"decode_s", st.decode_seconds},
                        {"decode_step_p50_s", p50},
                        {"decode_step_p99_s", p99},
                        {"decode_tokens_per_s", decode_tps},
                        {"tokens_per_s", double(st.generated_tokens) / e2e_s}};
  // Floor of one batch-1 decode step: the weights one token reads, once, at copy bandwidth
  // (KV reads and the flops are small next to them at batch 1).
  const ParamCounts pc = engine->model().param_counts();
  rec["active_params_per_token"] = pc.active_per_token;
  MOEX_ASSIGN_OR_RETURN(Ceilings ceil, ceilings_for(engine->backend(), o.out_dir, out));
  const double bytes_per_param = pc.total > 0 ? double(pc.bytes) / double(pc.total) : 2.0;
  const double step_bytes = double(pc.active_per_token) * bytes_per_param;
  const Floor step_floor = roofline_floor(step_bytes, 2.0 * double(pc.active_per_token), ceil.copy_bytes_per_s, ceil.bf16_flops_per_s);
  rec["decode_step_bytes"] = step_bytes;
  rec["decode_step_floor_s"] = step_floor.seconds;
  rec["decode_step_fraction_of_floor"] = fraction_of_floor(step_floor, p50);
  out << "decode step floor " << step_floor.seconds * 1e3 << " ms (" << step_bytes / 1e9 << " GB of weights per token, "
      << bound_name(step_floor.bound) << " bound): p50 is " << fraction_of_floor(step_floor, p50) << " of the floor\n";

  // 2. Decode throughput by batch size.
  nlohmann::json thr = nlohmann::json::array();
  out << std::setw(8) << "batch" << std::setw(14) << "step ms p50" << std::setw(14) << "step ms p99" << std::setw(14)
      << "tokens/s" << "\n";
  for (int64_t b : batches) {
    std::vector<Sequence> seqs(static_cast<size_t>(b));
    std::vector<Sequence*> ptrs;
    for (int64_t i = 0; i < b; ++i) {
      seqs[size_t(i)].tokens = random_prompt(o.batch_prompt, vocab, o.seed + 1000 + uint64_t(i));
      ptrs.push_back(&seqs[size_t(i)]);
    }
    std::vector<float> logits;
    Status s = engine->step(ptrs, &logits);  // prefill, untimed
    std::vector<double> steps;
    for (int64_t k = 0; s.is_ok() && k < o.decode_steps; ++k) {
      for (int64_t i = 0; i < b; ++i) seqs[size_t(i)].tokens.push_back(argmax(logits.data() + i * vocab, vocab));
      auto t0 = std::chrono::steady_clock::now();
      s = engine->step(ptrs, &logits);
      steps.push_back(since(t0));
    }
    for (Sequence& q : seqs) engine->release(&q);
    MOEX_RETURN_IF_ERROR(s);
    double total = 0;
    for (double v : steps) total += v;
    const double tps = double(b) * double(steps.size()) / total;
    out << std::setw(8) << b << std::setw(14) << quantile_of(steps, 0.5) * 1e3 << std::setw(14)
        << quantile_of(steps, 0.99) * 1e3 << std::setw(14) << tps << "\n";
    thr.push_back({{"batch", b},
                   {"decode_steps", int64_t(steps.size())},
                   {"context_tokens", o.batch_prompt},
                   {"step_p50_s", quantile_of(steps, 0.5)},
                   {"step_p99_s", quantile_of(steps, 0.99)},
                   {"tokens_per_s", tps}});
  }
  rec["decode_throughput"] = thr;
  rec["threads"] = o.threads;
  rec["load_average_1m"] = load_average();
  // OpenMP's spin-waiting decides CPU timings on an oversubscribed host: keep the setting.
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  rec["omp_wait_policy"] = wait_policy ? wait_policy : "";

  // 3. The profiled pass, last.
  if (o.profile_steps > 0) {
    MOEX_ASSIGN_OR_RETURN(rec["profile"], profile_decode(*engine, o, vocab, out));
  }
  const std::string path = o.out_dir + "/" + device_slug(device) + "/e2e.json";
  MOEX_RETURN_IF_ERROR(append_json_records(path, {rec}));
  out << "record appended to " << path << "\n";
  return Status::ok();
}

}  // namespace moex::bench
