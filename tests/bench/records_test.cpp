// Result records, the JSON writer, statistics and case files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "bench/cases.h"
#include "bench/records.h"

namespace moex::bench {
namespace {

std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moex_bench_" + name + "_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(p);
  return p.string();
}

BenchRecord random_record(std::mt19937_64& rng) {
  BenchRecord r;
  r.op = "fused_moe";
  r.case_name = "M/tokens=" + std::to_string(rng() % 100);
  r.model = "M";
  r.impl = "cuda";
  r.device_name = "GPU";
  r.commit = "c0ffee";
  r.timestamp = utc_timestamp();
  r.shape = {{"tokens", int64_t(rng() % 100)}};
  r.median_s = 1e-5 * double(1 + rng() % 1000);
  r.min_s = r.median_s * 0.9;
  r.bytes = double(1 + rng() % 1000000000);
  r.flops = double(1 + rng() % 1000000000);
  r.floor = roofline_floor(r.bytes, r.flops, 3e12, 7e14);
  r.samples = 100;
  return r;
}

TEST(Records, JsonCarriesEveryField) {
  std::mt19937_64 rng(std::random_device{}());
  BenchRecord r = random_record(rng);
  r.check = "passed";
  r.check_rel_err = 1e-3;
  nlohmann::json j = record_to_json(r);
  for (const char* key : {"op", "case", "model", "impl", "device", "commit", "timestamp", "shape", "timing", "time_median_s",
                          "time_min_s", "bytes", "flops", "gb_per_s", "tflop_per_s", "floor_s", "bound", "fraction_of_floor",
                          "check", "check_rel_err"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_DOUBLE_EQ(j["gb_per_s"].get<double>(), r.bytes / r.median_s / 1e9);
  EXPECT_DOUBLE_EQ(j["tflop_per_s"].get<double>(), r.flops / r.median_s / 1e12);
  EXPECT_DOUBLE_EQ(j["fraction_of_floor"].get<double>(), r.floor.seconds / r.median_s);
  EXPECT_EQ(j["bound"], bound_name(r.floor.bound));
  EXPECT_EQ(j["shape"]["tokens"], r.shape["tokens"]);
  BenchRecord unchecked = random_record(rng);
  EXPECT_FALSE(record_to_json(unchecked).contains("check_rel_err"));
  EXPECT_EQ(record_to_json(unchecked)["check"], "not run");
}

TEST(Records, AppendKeepsHistory) {
  std::mt19937_64 rng(std::random_device{}());
  std::string dir = temp_dir("rec");
  std::string path = dir + "/gpu/fused_moe.json";
  std::vector<nlohmann::json> first, second;
  for (int i = 0; i < 3; ++i) first.push_back(record_to_json(random_record(rng)));
  for (int i = 0; i < 2; ++i) second.push_back(record_to_json(random_record(rng)));
  ASSERT_TRUE(append_json_records(path, first).is_ok());
  ASSERT_TRUE(append_json_records(path, second).is_ok());
  Expected<std::vector<nlohmann::json>> all = read_json_records(path);
  ASSERT_TRUE(all) << all.status().message();
  ASSERT_EQ(all->size(), 5u);
  EXPECT_EQ((*all)[0], first[0]);
  EXPECT_EQ((*all)[4], second[1]);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // A file that is not an array is refused, not overwritten.
  std::ofstream(dir + "/obj.json") << "{\"a\": 1}";
  Status s = append_json_records(dir + "/obj.json", first);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find("obj.json"), std::string::npos);
  Expected<nlohmann::json> kept = read_json_file(dir + "/obj.json");
  ASSERT_TRUE(kept);
  EXPECT_EQ((*kept)["a"], 1);
  EXPECT_EQ(read_json_records(dir + "/none.json")->size(), 0u);
  std::filesystem::remove_all(dir);
}

TEST(Records, MedianMinQuantileOnRandomSamples) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(0, 1);
  for (int n : {1, 2, 7, 100, 101}) {
    std::vector<double> v(static_cast<size_t>(n));
    for (double& x : v) x = u(rng);
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    double med = n % 2 ? s[size_t(n / 2)] : 0.5 * (s[size_t(n / 2 - 1)] + s[size_t(n / 2)]);
    EXPECT_DOUBLE_EQ(median_of(v), med);
    EXPECT_DOUBLE_EQ(min_of(v), s.front());
    EXPECT_DOUBLE_EQ(quantile_of(v, 0), s.front());
    EXPECT_DOUBLE_EQ(quantile_of(v, 1), s.back());
    EXPECT_NEAR(quantile_of(v, 0.5), med, 1e-15);
    double q99 = quantile_of(v, 0.99);
    EXPECT_GE(q99, med);
    EXPECT_LE(q99, s.back());
  }
  EXPECT_EQ(median_of({}), 0);
}

TEST(Cases, ListsExpandToTheCrossProduct) {
  nlohmann::json j = nlohmann::json::parse(R"({"cases": [
    {"op": "mla_decode", "model": "M", "heads": 16, "batch": [1, 8, 32], "kv_len": [1024, 4096]},
    {"op": "rms_norm", "hidden": 7, "tokens": 3}]})");
  Expected<std::vector<BenchCase>> cases = parse_cases(j, "t.json");
  ASSERT_TRUE(cases) << cases.status().message();
  ASSERT_EQ(cases->size(), 7u);
  EXPECT_EQ((*cases)[0].name, "M/batch=1,kv_len=1024");
  EXPECT_EQ((*cases)[1].name, "M/batch=1,kv_len=4096");
  EXPECT_EQ((*cases)[5].name, "M/batch=32,kv_len=4096");
  EXPECT_EQ((*cases)[5].shape["heads"], 16);
  EXPECT_EQ(*case_int((*cases)[5], "batch"), 32);
  EXPECT_EQ((*cases)[6].name, "rms_norm");
  EXPECT_EQ((*cases)[6].op, "rms_norm");
  EXPECT_FALSE(case_int((*cases)[6], "missing"));
  EXPECT_EQ(case_int_or((*cases)[6], "missing", 5), 5);
  EXPECT_FALSE(parse_cases(nlohmann::json::parse(R"({"cases": [{"model": "x"}]})"), "t.json"));
  EXPECT_FALSE(parse_cases(nlohmann::json::parse(R"({"cases": [{"op": "x", "a": []}]})"), "t.json"));
  EXPECT_FALSE(parse_cases(nlohmann::json::parse(R"({"cases": [{"op": "x", "a": {"b": 1}}]})"), "t.json"));
  EXPECT_FALSE(parse_cases(nlohmann::json::parse(R"([1])"), "t.json"));
}

// The repository's case files cover DESIGN.md's shapes.
TEST(Cases, RepositoryCaseFilesCoverTheDesignShapes) {
  Expected<std::vector<BenchCase>> moe = load_cases(std::string(MOEX_SOURCE_DIR) + "/bench/cases/fused_moe.json");
  ASSERT_TRUE(moe) << moe.status().message();
  struct Want { const char* model; int64_t e, k, h, i, shared; };
  for (Want w : {Want{"Qwen3-30B-A3B", 128, 8, 2048, 768, 0}, Want{"Qwen3-235B-A22B", 128, 8, 4096, 1536, 0},
                 Want{"DeepSeek-V3", 256, 8, 7168, 2048, 1}, Want{"DeepSeek-V2-Lite", 64, 6, 2048, 1408, 2},
                 Want{"Mixtral-8x7B", 8, 2, 4096, 14336, 0}}) {
    std::set<int64_t> tokens;
    for (const BenchCase& c : *moe) {
      if (c.model != w.model) continue;
      EXPECT_EQ(*case_int(c, "experts"), w.e);
      EXPECT_EQ(*case_int(c, "top_k"), w.k);
      EXPECT_EQ(*case_int(c, "hidden"), w.h);
      EXPECT_EQ(*case_int(c, "inter"), w.i);
      EXPECT_EQ(case_int_or(c, "shared", 0), w.shared);
      tokens.insert(*case_int(c, "tokens"));
    }
    for (int64_t t = 1; t <= 16384; t *= 2) EXPECT_TRUE(tokens.count(t)) << w.model << " tokens " << t;
  }
  Expected<std::vector<BenchCase>> mla = load_cases(std::string(MOEX_SOURCE_DIR) + "/bench/cases/mla_decode.json");
  ASSERT_TRUE(mla) << mla.status().message();
  std::set<int64_t> batch, kv, heads, pages;
  for (const BenchCase& c : *mla) {
    batch.insert(*case_int(c, "batch"));
    kv.insert(*case_int(c, "kv_len"));
    heads.insert(*case_int(c, "heads"));
    pages.insert(case_int_or(c, "page", 0));
  }
  // Issue 7: pages of 64 (the design shapes) and 16 at least, nothing else.
  EXPECT_EQ(pages, (std::set<int64_t>{16, 64}));
  EXPECT_EQ(*batch.begin(), 1);
  EXPECT_EQ(*batch.rbegin(), 128);
  EXPECT_EQ(*kv.begin(), 1024);
  EXPECT_EQ(*kv.rbegin(), 65536);
  EXPECT_EQ(*heads.begin(), 16);
  EXPECT_EQ(*heads.rbegin(), 128);
  for (const char* f : {"gqa_decode.json", "rms_norm.json", "smoke.json"})
    EXPECT_TRUE(load_cases(std::string(MOEX_SOURCE_DIR) + "/bench/cases/" + f)) << f;
}

}  // namespace
}  // namespace moex::bench
