// `moex bench ops` and `moex test-set` end to end on the CPU backend, through the CLI entry points.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <sstream>

#include "bench/bench_cli.h"
#include "bench/commands.h"
#include "bench/records.h"

namespace moex::bench {
namespace {

std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moex_bench_" + name + "_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(p);
  return p.string();
}

int call(std::vector<std::string> args, int (*entry)(int, char**)) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return entry(int(argv.size()), argv.data());
}

TEST(OpsBench, SmokeCasesCheckAndRecordOnCpu) {
  std::string dir = temp_dir("ops");
  for (const char* op : {"fused_moe", "mla_decode", "gqa_decode", "rms_norm", "nsa", "matmul"}) {
    OpsOptions o;
    o.op = op;
    o.cases_file = std::string(MOEX_SOURCE_DIR) + "/bench/cases/smoke.json";
    o.device = "cpu";
    o.out_dir = dir;
    o.check = true;
    o.seed = std::random_device{}();
    o.timing.warmup = 1;
    o.timing.repeat = 3;
    std::ostringstream log;
    Expected<int> failed = run_ops(o, log);
    ASSERT_TRUE(failed) << op << ": " << failed.status().message();
    EXPECT_EQ(*failed, 0) << log.str();
    const std::string path = dir + "/" + device_slug(cpu_model_name()) + "/" + op + ".json";
    Expected<std::vector<nlohmann::json>> recs = read_json_records(path);
    ASSERT_TRUE(recs) << recs.status().message();
    ASSERT_FALSE(recs->empty()) << op;
    for (const nlohmann::json& r : *recs) {
      EXPECT_EQ(r["op"], op);
      EXPECT_EQ(r["check"], "passed") << r.dump();
      EXPECT_GT(r["time_median_s"].get<double>(), 0);
      EXPECT_GE(r["time_median_s"].get<double>(), r["time_min_s"].get<double>());
      EXPECT_EQ(r["samples"], 3);
      EXPECT_GT(r["bytes"].get<double>(), 0);
      EXPECT_GT(r["floor_s"].get<double>(), 0);
      EXPECT_GT(r["fraction_of_floor"].get<double>(), 0);
      EXPECT_EQ(r["timing"], "host-clock");
    }
  }
  // The CPU ceilings were measured once and stored next to the results.
  EXPECT_TRUE(std::filesystem::exists(dir + "/" + device_slug(cpu_model_name()) + "/roofline.json"));
  std::filesystem::remove_all(dir);
}

TEST(OpsBench, FusedMoeFloorCountsOnlyExpertsHit) {
  std::string dir = temp_dir("hit");
  std::string cases = dir + "/c.json";
  ASSERT_TRUE(write_json_file(cases, nlohmann::json::parse(R"({"cases": [
      {"op": "fused_moe", "model": "m", "experts": 64, "top_k": 2, "hidden": 64, "inter": 32, "routing": "one_expert", "tokens": 9}]})"))
                  .is_ok());
  OpsOptions o;
  o.op = "fused_moe";
  o.cases_file = cases;
  o.device = "cpu";
  o.out_dir = dir;
  o.timing.warmup = 0;
  o.timing.repeat = 2;
  std::ostringstream log;
  ASSERT_TRUE(run_ops(o, log));
  Expected<std::vector<nlohmann::json>> recs = read_json_records(dir + "/" + device_slug(cpu_model_name()) + "/fused_moe.json");
  ASSERT_TRUE(recs && recs->size() == 1);
  const nlohmann::json& r = (*recs)[0];
  EXPECT_EQ(r["shape"]["experts_hit"], 2);
  // 2 experts x 3 x 64 x 32 bf16 weights + x and out (f32 on the CPU) + ids and weights.
  EXPECT_DOUBLE_EQ(r["bytes"].get<double>(), 2.0 * 3 * 64 * 32 * 2 + 2.0 * 9 * 64 * 4 + 9.0 * 2 * 8);
  EXPECT_DOUBLE_EQ(r["flops"].get<double>(), 2.0 * 9 * 2 * 3 * 64 * 32);
  std::filesystem::remove_all(dir);
}

TEST(BenchCli, FlagsAndErrors) {
  EXPECT_EQ(call({"bench", "--help"}, bench_main), 0);
  EXPECT_EQ(call({"bench"}, bench_main), 2);                           // no subcommand
  EXPECT_EQ(call({"bench", "ops"}, bench_main), 2);                    // --op missing
  EXPECT_EQ(call({"bench", "ops", "--op", "fused_moe", "--bogus"}, bench_main), 2);
  EXPECT_EQ(call({"bench", "ops", "--op", "nope", "--device", "cpu"}, bench_main), 2);
  EXPECT_EQ(call({"bench", "ops", "--op", "rms_norm", "--device", "tpu"}, bench_main), 2);
  EXPECT_EQ(call({"bench", "ops", "--op", "rms_norm", "--device", "cpu", "--cases", "/nonexistent.json"}, bench_main), 2);
  EXPECT_EQ(call({"bench", "e2e", "--device", "cpu"}, bench_main), 2);  // no model
  EXPECT_EQ(call({"test-set", "--op", "gqa"}, test_set_main), 2);
  EXPECT_EQ(call({"test-set", "--help"}, test_set_main), 0);
}

TEST(BenchCli, TestSetSubsetOnCpuPasses) {
  EXPECT_EQ(call({"test-set", "--op", "fused_moe", "--device", "cpu", "--subset", "6", "--quiet"}, test_set_main), 0);
  EXPECT_EQ(call({"test-set", "--op", "mla_decode", "--device", "cpu", "--subset", "6", "--quiet"}, test_set_main), 0);
  EXPECT_EQ(call({"test-set", "--op", "nsa", "--device", "cpu", "--subset", "6", "--quiet"}, test_set_main), 0);
}

}  // namespace
}  // namespace moex::bench

namespace moex::bench {
namespace {

TEST(E2eBench, RandomWeightsFixtureOnCpu) {
  std::string dir = temp_dir("e2e");
  E2eOptions o;
  o.model_dir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/qwen3_moe";
  o.random_weights = true;
  o.device = "cpu";
  o.out_dir = dir;
  o.prompt_tokens = 8;
  o.gen_tokens = 6;
  o.batches = {1, 3};
  o.decode_steps = 3;
  o.batch_prompt = 5;
  o.seed = std::random_device{}() % 1000;
  std::ostringstream log;
  Status s = run_e2e(o, log);
  ASSERT_TRUE(s.is_ok()) << s.message() << "\n" << log.str();
  Expected<std::vector<nlohmann::json>> recs = read_json_records(dir + "/" + device_slug(cpu_model_name()) + "/e2e.json");
  ASSERT_TRUE(recs && recs->size() == 1);
  const nlohmann::json& r = (*recs)[0];
  EXPECT_EQ(r["prompt_tokens"], 8);
  EXPECT_EQ(r["generated_tokens"], 6);
  EXPECT_GT(r["prefill_s"].get<double>(), 0);
  EXPECT_GE(r["decode_step_p99_s"].get<double>(), r["decode_step_p50_s"].get<double>());
  EXPECT_NEAR(r["e2e_s"].get<double>(), r["prefill_s"].get<double>() + r["decode_s"].get<double>(), 1e-12);
  EXPECT_GT(r["decode_step_bytes"].get<double>(), 0);
  EXPECT_GT(r["decode_step_floor_s"].get<double>(), 0);
  EXPECT_NEAR(r["decode_step_fraction_of_floor"].get<double>(),
              r["decode_step_floor_s"].get<double>() / r["decode_step_p50_s"].get<double>(), 1e-12);
  ASSERT_EQ(r["decode_throughput"].size(), 2u);
  EXPECT_EQ(r["decode_throughput"][1]["batch"], 3);
  EXPECT_EQ(r["decode_throughput"][1]["decode_steps"], 3);
  EXPECT_GT(r["decode_throughput"][1]["tokens_per_s"].get<double>(), 0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moex::bench
