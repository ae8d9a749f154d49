// The embedded default model (models/moex-kjv-dsv3): `moex run` with no --model uses it, and its
// greedy continuation of a fixed prompt is pinned, so any numerical drift in the CPU engine
// (kernels, routing, RoPE, tokenizer) shows up here. The pinned text is HF transformers' greedy
// output for the same prompt (tools/train_embedded/train.py prints it), which moex reproduces.
#include <gtest/gtest.h>

#include "e2e/cli_util.h"

namespace moex::test {
namespace {

TEST(EmbeddedModel, GreedyContinuationIsPinned) {
  const CliResult r = run_moex("run --prompt 'In the beginning' -n 40");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string expected =
      "In the beginning of the world, and the glory of the Lord, and the glory of the Lord, and the glory of the "
      "Lord, and the glory of the Lord, and the glory of the Lord, and";
  EXPECT_EQ(r.out.substr(0, r.out.find('\n')), expected);
  // The timing line follows the text.
  EXPECT_NE(r.out.find("[moex] deepseek_v3 on cpu"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("generated 40 tok"), std::string::npos) << r.out;
}

TEST(EmbeddedModel, SeededSamplingIsReproducible) {
  const std::string args = "run --prompt 'And God said' -n 24 --temperature 0.9 --top-p 0.95 --top-k 50 --seed 3";
  const CliResult a = run_moex(args), b = run_moex(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out.substr(0, a.out.find("[moex]")), b.out.substr(0, b.out.find("[moex]")));
  const CliResult c = run_moex("run --prompt 'And God said' -n 24 --temperature 0.9 --top-p 0.95 --top-k 50 --seed 4");
  EXPECT_NE(a.out.substr(0, a.out.find("[moex]")), c.out.substr(0, c.out.find("[moex]")));
}

TEST(EmbeddedModel, InfoDescribesTheArchitecture) {
  const CliResult r = run_moex("info");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("DeepseekV3ForCausalLM"), std::string::npos);
  EXPECT_NE(r.out.find("kv_lora_rank 512"), std::string::npos);
  EXPECT_NE(r.out.find("16 routed, top-4, 1 shared"), std::string::npos);
  EXPECT_NE(r.out.find("17.65 M total, 8.70 M active per token"), std::string::npos) << r.out;
}

TEST(EmbeddedModel, PerplexityOfAShortText) {
  const std::string dir = make_temp_dir("ppl");
  write_file(dir + "/text.txt",
             "And Abraham journeyed from thence toward the south country, and dwelled between Kadesh and Shur, "
             "and sojourned in Gerar.\nAnd Abraham said of Sarah his wife, She is my sister: and Abimelech king of "
             "Gerar sent, and took Sarah.\n");
  const CliResult r = run_moex("perplexity --file " + dir + "/text.txt --window 64");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t at = r.out.find("perplexity ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const double ppl = std::stod(r.out.substr(at + 11));
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 200.0) << "far worse than the 29 measured on the held-out split";
}

}  // namespace
}  // namespace moex::test
