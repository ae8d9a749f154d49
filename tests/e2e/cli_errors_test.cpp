// Bad input at the front door: each case exits non-zero with one line naming the cause.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "e2e/cli_util.h"

namespace moex::test {
namespace {

// One line on stderr, starting "moex: error:", containing `needle`.
void expect_one_line_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.rfind("moex: error:", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
}

TEST(CliErrors, MissingModelDirectory) {
  expect_one_line_error(run_moex("run --model /nonexistent/moex-model --prompt hi"), "/nonexistent/moex-model");
}

TEST(CliErrors, UnknownFlagAndSubcommand) {
  expect_one_line_error(run_moex("run --no-such-flag"), "--no-such-flag");
  expect_one_line_error(run_moex("frobnicate"), "frobnicate");
  expect_one_line_error(run_moex(""), "subcommand");
}

TEST(CliErrors, InvalidValues) {
  expect_one_line_error(run_moex("run --top-p 2"), "top-p");
  expect_one_line_error(run_moex("run -n -3"), "max-tokens");
  expect_one_line_error(run_moex("run --device tpu"), "device");
  expect_one_line_error(run_moex("run --temperature abc"), "temperature");
  expect_one_line_error(run_moex("perplexity"), "file");
  // Values the flag parser lets through but sampling refuses: refused before any output.
  const CliResult zero_top_p = run_moex("run --top-p 0 --temperature 1 -n 2 --prompt hi");
  expect_one_line_error(zero_top_p, "top_p");
  EXPECT_EQ(zero_top_p.out, "");
}

TEST(CliErrors, UnknownArchitectureAndBrokenConfig) {
  const std::string dir = make_temp_dir("arch");
  write_file(dir + "/config.json", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})");
  expect_one_line_error(run_moex("info --model " + dir), "LlamaForCausalLM");
  write_file(dir + "/config.json", R"({"architectures": ["MixtralForCausalLM"], )");
  expect_one_line_error(run_moex("info --model " + dir), "config.json");
  std::filesystem::remove_all(dir);
}

TEST(CliErrors, PerplexityOfMissingFile) {
  expect_one_line_error(run_moex("perplexity --file /nonexistent/held-out.txt"), "/nonexistent/held-out.txt");
}

}  // namespace
}  // namespace moex::test
