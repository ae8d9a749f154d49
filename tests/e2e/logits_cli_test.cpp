// moex logits: the file format, agreement with HF's fixture logits, and the --random-weights
// generator against a checkpoint written here from its formula (what tools/hf_random_parity.py
// re-implements on the HF side).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "e2e/cli_util.h"
#include "model/weights/safetensors.h"

namespace moex::test {
namespace {

const std::string kFixtures = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/";

struct LogitsFile {
  int32_t tokens = 0, vocab = 0, k = 0, full = 0;
  std::vector<int32_t> argmax;   // [T]
  std::vector<int32_t> top_ids;  // [T, k] (top-5 files)
  std::vector<float> values;     // [T, k] top-5 logits, or [T, vocab] with --full
};

LogitsFile parse_logits(const std::string& bytes) {
  LogitsFile f;
  EXPECT_GE(bytes.size(), 28u);
  if (bytes.size() < 28) return f;
  EXPECT_EQ(bytes.substr(0, 8), "MOEXLOGT");
  int32_t header[5];
  std::memcpy(header, bytes.data() + 8, sizeof header);
  EXPECT_EQ(header[0], 1);
  f.tokens = header[1];
  f.vocab = header[2];
  f.k = header[3];
  f.full = header[4];
  const size_t t = size_t(f.tokens), k = size_t(f.k);
  const size_t expect = 28 + 4 * t + (f.full ? 4 * t * k : 8 * t * k);
  EXPECT_EQ(bytes.size(), expect);
  if (bytes.size() != expect) return f;
  const char* p = bytes.data() + 28;
  f.argmax.resize(t);
  std::memcpy(f.argmax.data(), p, 4 * t);
  p += 4 * t;
  if (!f.full) {
    f.top_ids.resize(t * k);
    std::memcpy(f.top_ids.data(), p, 4 * t * k);
    p += 4 * t * k;
  }
  f.values.resize(t * k);
  std::memcpy(f.values.data(), p, 4 * t * k);
  return f;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? (i % 3 ? " " : ",") : "") + std::to_string(ids[i]);
  return s + "\n";
}

// Runs `moex logits` and returns the parsed file (exit code checked).
LogitsFile run_logits(const std::string& dir, const std::string& extra, const std::vector<int32_t>& ids) {
  const std::string tmp = make_temp_dir("logits");
  write_file(tmp + "/ids.txt", ids_text(ids));
  const CliResult r = run_moex("logits --model " + dir + " --device cpu --prompt-ids-file " + tmp +
                               "/ids.txt --out " + tmp + "/out.bin " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  LogitsFile f = parse_logits(read_file(tmp + "/out.bin"));
  std::filesystem::remove_all(tmp);
  return f;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = d(rng);
  return ids;
}

TEST(LogitsCli, FixtureLogitsMatchHfAndTop5MatchesFull) {
  for (const char* name : {"qwen3_moe", "deepseek_v3", "mixtral"}) {
    SCOPED_TRACE(name);
    const std::string dir = kFixtures + name;
    auto expected = SafetensorsCheckpoint::open_file(dir + "/expected.safetensors");
    ASSERT_TRUE(expected.has_value()) << expected.status().message();
    const TensorInfo* prompt = expected->find("prompt_ids");
    const TensorInfo* logits = expected->find("logits");
    ASSERT_TRUE(prompt && logits);
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < prompt->shape[0]; ++i) ids.push_back(int32_t(static_cast<const int64_t*>(prompt->view.data)[i]));
    const float* hf = static_cast<const float*>(logits->view.data);  // [T, vocab] HF fp32

    const LogitsFile full = run_logits(dir, "--full", ids);
    const LogitsFile top = run_logits(dir, "", ids);
    ASSERT_EQ(full.tokens, int32_t(ids.size()));
    ASSERT_EQ(full.vocab, int32_t(logits->shape[1]));
    ASSERT_EQ(full.k, full.vocab);
    ASSERT_EQ(top.k, 5);
    ASSERT_EQ(top.full, 0);
    const size_t v = size_t(full.vocab);
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* row = full.values.data() + t * v;
      for (size_t j = 0; j < v; ++j) ASSERT_NEAR(row[j], hf[t * v + j], 2e-4f) << "position " << t << " id " << j;
      EXPECT_EQ(full.argmax[t], int32_t(std::max_element(row, row + v) - row));
      EXPECT_EQ(top.argmax[t], full.argmax[t]);
      // The top-5 are the five largest of the full row, descending, with bit-equal values.
      std::vector<float> sorted(row, row + v);
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      for (size_t j = 0; j < 5; ++j) {
        EXPECT_EQ(top.values[t * 5 + j], sorted[j]);
        EXPECT_EQ(top.values[t * 5 + j], row[top.top_ids[t * 5 + j]]);
      }
      EXPECT_EQ(top.top_ids[t * 5], top.argmax[t]);
    }
  }
}

// The random-weight generator, written out plainly and single-threaded (moex's loader splits it
// over threads): splitmix64(seed ^ fnv1a(name)) + index -> uniform in +-0.02 sqrt(3), norms 1,
// e_score_correction_bias from the load_f32 formula.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::vector<float> reference_values(const std::string& name, int64_t n, uint64_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  const uint64_t base = splitmix64(seed ^ fnv1a(name));
  const bool bias = name.find("e_score_correction_bias") != std::string::npos;
  const std::string suffix = "norm.weight";  // input_layernorm, q_norm, model.norm, ...
  const bool norm = name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  const float half_width = 0.02f * std::sqrt(3.0f);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = splitmix64(base + uint64_t(i));
    if (bias) {
      v[size_t(i)] = 0.1f * float(int64_t(h % 2001) - 1000) / 1000.f;
    } else if (norm) {
      v[size_t(i)] = 1.0f;
    } else {
      const double u = double(h >> 11) * (1.0 / 9007199254740992.0);
      v[size_t(i)] = float((2.0 * u - 1.0) * half_width);
    }
  }
  return v;
}

// Writes <dir>/model.safetensors (F32) holding the reference values of every tensor `like` has,
// with the vocabulary dimension of the embedding and lm head set to `vocab`.
void write_reference_checkpoint(const SafetensorsCheckpoint& like, const std::string& dir, int64_t vocab, uint64_t seed) {
  std::string header = "{";
  std::string data;
  for (const auto& [name, info] : like.tensors()) {
    std::vector<int64_t> shape = info.shape;
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") shape[0] = vocab;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const std::vector<float> v = reference_values(name, n, seed);
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? "," : "") + std::to_string(shape[i]);
    if (header.size() > 1) header += ",";
    header += "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + dims + "],\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + v.size() * 4) + "]}";
    data.append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  const uint64_t len = header.size();
  std::ofstream out(dir + "/model.safetensors", std::ios::binary);
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header << data;
}

TEST(LogitsCli, RandomWeightsEqualTheirFormulaWrittenAsACheckpoint) {
  // A vocabulary of 20000 makes the embedding and lm head (1.28M values) big enough for the
  // loader to split them over threads; the fixtures' other shapes are kept.
  constexpr int64_t kVocab = 20000;
  constexpr uint64_t kSeed = 12345;
  for (const char* name : {"qwen3_moe", "deepseek_v3"}) {
    SCOPED_TRACE(name);
    auto like = SafetensorsCheckpoint::open_dir(kFixtures + name);
    ASSERT_TRUE(like.has_value()) << like.status().message();
    std::string config = read_file(kFixtures + name + "/config.json");
    const std::string key = "\"vocab_size\": 384";
    ASSERT_NE(config.find(key), std::string::npos);
    config.replace(config.find(key), key.size(), "\"vocab_size\": " + std::to_string(kVocab));
    const std::string random_dir = make_temp_dir("random"), ckpt_dir = make_temp_dir("refckpt");
    write_file(random_dir + "/config.json", config);
    write_file(ckpt_dir + "/config.json", config);
    write_reference_checkpoint(*like, ckpt_dir, kVocab, kSeed);

    const std::vector<int32_t> ids = random_ids(9, int(kVocab), 7);
    const LogitsFile random = run_logits(random_dir, "--full --random-weights --weight-seed " + std::to_string(kSeed), ids);
    const LogitsFile ref = run_logits(ckpt_dir, "--full", ids);
    const LogitsFile other = run_logits(random_dir, "--full --random-weights --weight-seed " + std::to_string(kSeed + 1), ids);
    ASSERT_EQ(random.values.size(), size_t(9 * kVocab));
    ASSERT_EQ(ref.values.size(), random.values.size());
    // Same weights bit for bit, so the same logits bit for bit.
    EXPECT_EQ(0, std::memcmp(random.values.data(), ref.values.data(), ref.values.size() * 4));
    EXPECT_EQ(random.argmax, ref.argmax);
    ASSERT_EQ(other.values.size(), random.values.size());
    EXPECT_NE(0, std::memcmp(random.values.data(), other.values.data(), ref.values.size() * 4));
    std::filesystem::remove_all(random_dir);
    std::filesystem::remove_all(ckpt_dir);
  }
}

void expect_one_line_error(const CliResult& r, const std::string& needle) {
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.rfind("moex: error:", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.err;
}

TEST(LogitsCli, BadInputsGiveOneLineErrors) {
  const std::string dir = kFixtures + "qwen3_moe";
  const std::string tmp = make_temp_dir("logits-err");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file /nonexistent/ids.txt --out " + tmp + "/o.bin"),
                        "/nonexistent/ids.txt");
  write_file(tmp + "/bad.txt", "1 2 x3\n");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file " + tmp + "/bad.txt --out " + tmp + "/o.bin"),
                        "x3");
  write_file(tmp + "/big.txt", "1 2 384\n");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file " + tmp + "/big.txt --out " + tmp + "/o.bin"),
                        "384");
  write_file(tmp + "/empty.txt", " \n");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file " + tmp + "/empty.txt --out " + tmp + "/o.bin"),
                        "no token ids");
  write_file(tmp + "/ok.txt", "1 2 3\n");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file " + tmp + "/ok.txt --out /nonexistent/dir/o.bin"),
                        "/nonexistent/dir/o.bin");
  expect_one_line_error(run_moex("logits --model " + dir + " --prompt-ids-file " + tmp + "/ok.txt"), "out");
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace moex::test
