// The model's profiling mode (attention / MoE / other split) and its record in `moex bench e2e`,
// on the CPU backend over the checked-in fixtures of the three families.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>

#include "bench/commands.h"
#include "bench/records.h"
#include "bench/roofline.h"
#include "bench/timing.h"
#include "runtime/engine.h"

namespace moex::bench {
namespace {

const char* const kFixtures[] = {"deepseek_v3", "qwen3_moe", "mixtral"};

std::string fixture(const std::string& name) { return std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/" + name; }

std::unique_ptr<Engine> make_engine(const std::string& name) {
  EngineOptions eo;
  eo.model_dir = fixture(name);
  eo.device = "cpu";
  Expected<std::unique_ptr<Engine>> e = Engine::create(eo);
  EXPECT_TRUE(e.has_value()) << name << ": " << e.status().message();
  return e.has_value() ? std::move(*e) : nullptr;
}

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, int32_t(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& v : t) v = d(rng);
  return t;
}

int32_t argmax(const std::vector<float>& row) {
  return int32_t(std::max_element(row.begin(), row.end()) - row.begin());
}

// Prefill then `steps` greedy decode steps; returns the logits of every step, concatenated.
std::vector<float> run_greedy(Engine& engine, const std::vector<int32_t>& prompt, int steps, std::vector<double>* step_s) {
  Sequence seq;
  seq.tokens = prompt;
  std::vector<float> logits, all;  // [1, vocab] per step
  Status s = engine.step({&seq}, &logits);
  EXPECT_TRUE(s.is_ok()) << s.message();
  all.insert(all.end(), logits.begin(), logits.end());
  for (int k = 0; s.is_ok() && k < steps; ++k) {
    seq.tokens.push_back(argmax(logits));
    const auto t0 = std::chrono::steady_clock::now();
    s = engine.step({&seq}, &logits);
    if (step_s) step_s->push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    EXPECT_TRUE(s.is_ok()) << s.message();
    all.insert(all.end(), logits.begin(), logits.end());
  }
  engine.release(&seq);
  return all;
}

TEST(ModelProfile, RegionsCoverTheDecodeStepOnEveryFamily) {
  std::mt19937 rng(std::random_device{}());
  for (const char* name : kFixtures) {
    SCOPED_TRACE(name);
    std::unique_ptr<Engine> engine = make_engine(name);
    ASSERT_NE(engine, nullptr);
    Model& model = engine->model();
    const ModelConfig& cfg = model.config();
    const std::vector<int32_t> prompt = random_tokens(rng, 24 + int64_t(rng() % 24), cfg.vocab_size);
    run_greedy(*engine, prompt, 2, nullptr);  // warm-up: first-touch allocations
    EXPECT_EQ(model.profile().forwards, 0);  // off by default

    // Prefill inside the profile too, then decode: every forward is accounted for.
    model.set_profiling(true);
    std::vector<double> steps;
    const int kSteps = 12;
    run_greedy(*engine, prompt, kSteps, &steps);
    model.set_profiling(false);
    const ModelProfile p = model.profile();
    ASSERT_EQ(p.forwards, kSteps + 1);
    ASSERT_EQ(int64_t(p.layer_attention_s.size()), cfg.num_layers);
    ASSERT_EQ(int64_t(p.layer_moe_s.size()), cfg.num_layers);
    ASSERT_EQ(int64_t(p.layer_other_s.size()), cfg.num_layers);
    const double regions = p.attention_s + p.moe_s + p.other_s;
    EXPECT_NEAR(regions, p.forward_s, 1e-9 * std::max(1.0, p.forward_s));
    EXPECT_GT(p.attention_s, 0);
    EXPECT_GT(p.moe_s, 0);
    EXPECT_GT(p.other_s, 0);
    double la = 0, lm = 0, lo = 0;
    for (int64_t i = 0; i < cfg.num_layers; ++i) {
      la += p.layer_attention_s[size_t(i)];
      lm += p.layer_moe_s[size_t(i)];
      lo += p.layer_other_s[size_t(i)];
      EXPECT_GT(p.layer_attention_s[size_t(i)], 0) << "layer " << i;
      EXPECT_EQ(p.layer_moe_s[size_t(i)] > 0, cfg.is_moe_layer(i)) << "layer " << i;
    }
    EXPECT_NEAR(la, p.attention_s, 1e-9);
    EXPECT_NEAR(lm, p.moe_s, 1e-9);
    EXPECT_LT(lo, p.other_s);  // embedding, lm_head and the upload are outside the layers

    // The decode steps, timed from outside the model, against the regions of those same steps:
    // drop the prefill's share by re-profiling the decode steps alone.
    Sequence seq;
    seq.tokens = prompt;
    std::vector<float> logits;
    ASSERT_TRUE(engine->step({&seq}, &logits).is_ok());
    model.set_profiling(true);
    double outside = 0;
    for (int k = 0; k < kSteps; ++k) {
      seq.tokens.push_back(argmax(logits));
      const auto t0 = std::chrono::steady_clock::now();
      ASSERT_TRUE(engine->step({&seq}, &logits).is_ok());
      outside += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    engine->release(&seq);
    const ModelProfile d = model.profile();
    model.set_profiling(false);
    ASSERT_EQ(d.forwards, kSteps);
    const double sum = d.attention_s + d.moe_s + d.other_s;
    EXPECT_LE(sum, outside * (1 + 1e-6));
    EXPECT_GE(sum, 0.8 * outside) << "regions " << sum * 1e3 << " ms vs steps " << outside * 1e3 << " ms";
  }
}

TEST(ModelProfile, ProfilingChangesNoLogits) {
  std::mt19937 rng(std::random_device{}());
  for (const char* name : kFixtures) {
    SCOPED_TRACE(name);
    std::unique_ptr<Engine> engine = make_engine(name);
    ASSERT_NE(engine, nullptr);
    const std::vector<int32_t> prompt = random_tokens(rng, 5 + int64_t(rng() % 30), engine->model().config().vocab_size);
    const std::vector<float> off = run_greedy(*engine, prompt, 6, nullptr);
    engine->model().set_profiling(true);
    const std::vector<float> on = run_greedy(*engine, prompt, 6, nullptr);
    engine->model().set_profiling(false);
    const std::vector<float> off_again = run_greedy(*engine, prompt, 6, nullptr);
    ASSERT_EQ(off.size(), on.size());
    ASSERT_EQ(off.size(), off_again.size());
    EXPECT_EQ(std::memcmp(off.data(), on.data(), off.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(off.data(), off_again.data(), off.size() * sizeof(float)), 0);
    EXPECT_EQ(engine->model().profile().forwards, 7);  // readable after off; off added nothing
  }
}

TEST(E2eBench, RecordCarriesTheProfile) {
  auto dir = std::filesystem::temp_directory_path() / ("moex_e2e_prof_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(dir);
  E2eOptions o;
  o.model_dir = fixture("deepseek_v3");
  o.device = "cpu";
  o.out_dir = dir.string();
  o.prompt_tokens = 9;
  o.gen_tokens = 4;
  o.batches = {1, 2};
  o.decode_steps = 2;
  o.batch_prompt = 4;
  o.threads = 1;
  o.profile_steps = 5;
  o.seed = std::random_device{}() % 1000;
  std::ostringstream log;
  Status s = run_e2e(o, log);
  ASSERT_TRUE(s.is_ok()) << s.message() << "\n" << log.str();
  EXPECT_NE(log.str().find("attention"), std::string::npos) << log.str();
  Expected<std::vector<nlohmann::json>> recs =
      read_json_records(dir.string() + "/" + device_slug(cpu_model_name()) + "/e2e.json");
  ASSERT_TRUE(recs && recs->size() == 1);
  const nlohmann::json& r = (*recs)[0];
  EXPECT_EQ(r["threads"], 1);
  ASSERT_TRUE(r.contains("profile")) << r.dump();
  const nlohmann::json& p = r["profile"];
  EXPECT_EQ(p["decode_steps"], 5);
  EXPECT_EQ(p["context_tokens"], 9);
  const int64_t layers = p["layers"].get<int64_t>(), moe_layers = p["moe_layers"].get<int64_t>();
  EXPECT_GT(layers, 0);
  EXPECT_GT(moe_layers, 0);
  EXPECT_LE(moe_layers, layers);
  const double attn = p["attention_s"].get<double>(), moe = p["moe_s"].get<double>(), other = p["other_s"].get<double>();
  EXPECT_GT(attn, 0);
  EXPECT_GT(moe, 0);
  EXPECT_GT(other, 0);
  EXPECT_NEAR(attn + moe + other, p["forward_mean_s"].get<double>(), 1e-9);
  EXPECT_LE(p["forward_mean_s"].get<double>(), p["step_mean_s"].get<double>() * (1 + 1e-6));
  EXPECT_NEAR(p["attention_per_layer_s"].get<double>(), attn / double(layers), 1e-12);
  EXPECT_NEAR(p["moe_per_layer_s"].get<double>(), moe / double(moe_layers), 1e-12);
  ASSERT_EQ(int64_t(p["per_layer"].size()), layers);
  double la = 0, lo = 0;
  for (const nlohmann::json& l : p["per_layer"]) {
    la += l["attention_s"].get<double>();
    lo += l["other_s"].get<double>();
  }
  EXPECT_NEAR(la, attn, 1e-9);
  EXPECT_NEAR(other - lo, p["other_outside_layers_s"].get<double>(), 1e-9);

  // --profile-steps 0 leaves the profile out.
  o.profile_steps = 0;
  ASSERT_TRUE(run_e2e(o, log).is_ok());
  recs = read_json_records(dir.string() + "/" + device_slug(cpu_model_name()) + "/e2e.json");
  ASSERT_TRUE(recs && recs->size() == 2);
  EXPECT_FALSE((*recs)[1].contains("profile"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moex::bench
