// Floor arithmetic, device slugs and the ceilings file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "bench/records.h"
#include "bench/roofline.h"

namespace moex::bench {
namespace {

std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("moex_bench_" + name + "_" + std::to_string(std::random_device{}()));
  std::filesystem::create_directories(p);
  return p.string();
}

TEST(Roofline, FloorPicksTheLargerBoundOnRandomInputs) {
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(1.0, 1e12);
  for (int i = 0; i < 1000; ++i) {
    double bytes = u(rng), flops = u(rng), bw = 3e12 * (0.5 + u(rng) / 1e12), rate = 7e14 * (0.5 + u(rng) / 1e12);
    Floor f = roofline_floor(bytes, flops, bw, rate);
    EXPECT_DOUBLE_EQ(f.memory_s, bytes / bw);
    EXPECT_DOUBLE_EQ(f.compute_s, flops / rate);
    EXPECT_DOUBLE_EQ(f.seconds, std::max(bytes / bw, flops / rate));
    EXPECT_EQ(f.bound, flops / rate > bytes / bw ? Bound::kCompute : Bound::kMemory);
    double measured = f.seconds * (1.0 + u(rng) / 1e11);
    EXPECT_NEAR(fraction_of_floor(f, measured), f.seconds / measured, 1e-15);
    EXPECT_LE(fraction_of_floor(f, measured), 1.0);
  }
}

TEST(Roofline, KnownShapes) {
  // One token of Qwen3-30B-A3B's MoE on an H100: 8 experts x 3 x 2048 x 768 bf16 = 75.5 MB
  // at 3.02 TB/s = 25 us; 2 * 8 * 3 * 2048 * 768 flops = 75.5 MFLOP, far below it: memory bound.
  double bytes = 8.0 * 3 * 2048 * 768 * 2, flops = 2.0 * 8 * 3 * 2048 * 768;
  Floor f = roofline_floor(bytes, flops, 3.02e12, 765e12);
  EXPECT_EQ(f.bound, Bound::kMemory);
  EXPECT_NEAR(f.seconds * 1e6, 25.0, 0.01);
  // 8192^3 bf16 GEMM: 1.1 TFLOP at 765 TFLOP/s = 1.44 ms; 3 x 128 MiB of bytes is nothing.
  Floor g = roofline_floor(3.0 * 8192 * 8192 * 2, 2.0 * 8192.0 * 8192 * 8192, 3.02e12, 765e12);
  EXPECT_EQ(g.bound, Bound::kCompute);
  EXPECT_NEAR(g.seconds * 1e3, 1.437, 0.001);
  EXPECT_STREQ(bound_name(g.bound), "compute");
  EXPECT_STREQ(bound_name(f.bound), "memory");
  // Ties count as memory bound; an unmeasured time gives fraction 0.
  EXPECT_EQ(roofline_floor(100, 100, 1, 1).bound, Bound::kMemory);
  EXPECT_EQ(fraction_of_floor(f, 0), 0);
}

TEST(Roofline, DeviceSlug) {
  EXPECT_EQ(device_slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
  EXPECT_EQ(device_slug("  NVIDIA  H200 "), "nvidia-h200");
  EXPECT_EQ(device_slug("CPU Intel(R) Xeon(R) @ 2.20GHz"), "cpu-intel-r-xeon-r-2-20ghz");
  EXPECT_EQ(device_slug(""), "unknown");
  EXPECT_EQ(device_slug("---"), "unknown");
}

TEST(Roofline, CeilingsRoundTripThroughTheFile) {
  std::mt19937_64 rng(std::random_device{}());
  std::string dir = temp_dir("roof");
  Ceilings c;
  c.device_name = "NVIDIA Test GPU " + std::to_string(rng() % 1000);
  c.copy_bytes_per_s = 1e12 + double(rng() % 1000000) * 1e6;
  c.bf16_flops_per_s = 5e14 + double(rng() % 1000000) * 1e8;
  c.fp8_flops_per_s = 1e15 + double(rng() % 1000);
  c.measured_at = utc_timestamp();
  c.commit = "abc";
  EXPECT_EQ(load_ceilings(dir, c.device_name).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(save_ceilings(dir, c).is_ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/" + device_slug(c.device_name) + "/roofline.json"));
  Expected<Ceilings> back = load_ceilings(dir, c.device_name);
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_EQ(back->device_name, c.device_name);
  EXPECT_DOUBLE_EQ(back->copy_bytes_per_s, c.copy_bytes_per_s);
  EXPECT_DOUBLE_EQ(back->bf16_flops_per_s, c.bf16_flops_per_s);
  EXPECT_DOUBLE_EQ(back->fp8_flops_per_s, c.fp8_flops_per_s);
  EXPECT_EQ(back->measured_at, c.measured_at);
  std::filesystem::remove_all(dir);
}

TEST(Roofline, RefusesBrokenCeilings) {
  EXPECT_FALSE(ceilings_from_json(nlohmann::json::array(), "x.json"));
  EXPECT_FALSE(ceilings_from_json({{"device", "g"}, {"copy_bytes_per_s", 1.0}}, "x.json"));
  EXPECT_FALSE(ceilings_from_json({{"device", "g"}, {"copy_bytes_per_s", 0.0}, {"bf16_flops_per_s", 1.0}}, "x.json"));
  EXPECT_FALSE(ceilings_from_json({{"device", 3}, {"copy_bytes_per_s", 1.0}, {"bf16_flops_per_s", 1.0}}, "x.json"));
  Expected<Ceilings> bad = ceilings_from_json({{"device", "g"}, {"copy_bytes_per_s", "fast"}, {"bf16_flops_per_s", 1.0}}, "x.json");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.status().message().find("x.json"), std::string::npos);
  std::string dir = temp_dir("roofbad");
  std::filesystem::create_directories(dir + "/g");
  std::ofstream(dir + "/g/roofline.json") << "{not json";
  EXPECT_EQ(load_ceilings(dir, "g").status().code(), StatusCode::kCorrupt);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moex::bench
