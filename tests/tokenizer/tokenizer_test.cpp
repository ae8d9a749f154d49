// Tokenizer vs HF `tokenizers`: exact ids and strings on the committed fixtures
// (tools/gen_tokenizer_fixtures.py), streaming decode, properties on fresh random text, errors.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/tokenizer_internal.h"

namespace moex {
namespace {

using nlohmann::json;

const std::string kDir = std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/tokenizers/";
const char* const kNames[] = {"qwen3", "deepseek_v3", "deepseek_v2", "mixtral", "llama_metaspace", "gpt2_bytelevel"};

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

const json& corpus() {
  static const json j = read_json(kDir + "corpus.json");
  return j;
}

const json& expected() {
  static const json j = read_json(kDir + "expected.json");
  return j;
}

const Tokenizer& get(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    auto t = Tokenizer::load(kDir + name + ".tokenizer.json");
    if (!t) throw std::runtime_error(t.status().message());
    it = cache.emplace(name, std::move(t).value()).first;
  }
  return it->second;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

// Fresh seed per run; MOEX_TEST_SEED=<n> replays a failure.
uint32_t test_seed() {
  if (const char* env = std::getenv("MOEX_TEST_SEED")) return static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  return std::random_device{}();
}

std::string shown(const std::string& s) { return json(s).dump(); }  // escaped, for messages

// Concatenation of a streamed decode; every chunk must be valid UTF-8.
std::string stream_decode(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder d(t, skip);
  std::string all;
  for (int32_t id : ids) {
    const std::string chunk = d.push(id);
    EXPECT_TRUE(tokenizer_detail::utf8_is_valid(chunk)) << "chunk " << shown(chunk);
    all += chunk;
  }
  const std::string rest = d.flush();
  EXPECT_TRUE(tokenizer_detail::utf8_is_valid(rest));
  return all + rest;
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFixture, EncodeMatchesHf) {
  const Tokenizer& t = get(GetParam());
  const json& rows = expected()["tokenizers"][GetParam()]["lines"];
  ASSERT_EQ(rows.size(), corpus().size());
  int checked = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string line = corpus()[i].get<std::string>();
    EXPECT_EQ(t.encode(line, false), ids_of(rows[i]["ids"])) << "line " << i << ": " << shown(line);
    EXPECT_EQ(t.encode(line, true), ids_of(rows[i]["ids_special"])) << "line " << i << ": " << shown(line);
    ++checked;
  }
  EXPECT_EQ(checked, 85);  // corpus.json lines
}

TEST_P(TokenizerFixture, DecodeMatchesHf) {
  const Tokenizer& t = get(GetParam());
  const json& e = expected()["tokenizers"][GetParam()];
  for (size_t i = 0; i < e["lines"].size(); ++i) {
    const json& row = e["lines"][i];
    const auto ids = ids_of(row["ids_special"]);
    EXPECT_EQ(t.decode(ids, false), row["decoded"].get<std::string>()) << "line " << i;
    EXPECT_EQ(t.decode(ids, true), row["decoded_skip"].get<std::string>()) << "line " << i;
  }
  for (size_t i = 0; i < e["random_decodes"].size(); ++i) {  // includes split UTF-8 and stray bytes
    const json& row = e["random_decodes"][i];
    const auto ids = ids_of(row["ids"]);
    EXPECT_EQ(t.decode(ids, false), row["decoded"].get<std::string>()) << "random sequence " << i;
    EXPECT_EQ(t.decode(ids, true), row["decoded_skip"].get<std::string>()) << "random sequence " << i;
  }
  EXPECT_EQ(t.vocab_size(), e["vocab_size"].get<int64_t>());
}

TEST_P(TokenizerFixture, StreamingEqualsFullDecode) {
  const Tokenizer& t = get(GetParam());
  const json& e = expected()["tokenizers"][GetParam()];
  for (size_t i = 0; i < e["lines"].size(); ++i) {
    const auto ids = ids_of(e["lines"][i]["ids_special"]);
    for (bool skip : {false, true}) EXPECT_EQ(stream_decode(t, ids, skip), t.decode(ids, skip)) << "line " << i;
  }
  // Fresh random id sequences: byte tokens that split characters, stray bytes, specials.
  const uint32_t seed = test_seed();
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(t.vocab_size()) - 1);
  for (int n = 0; n < 200; ++n) {
    std::vector<int32_t> ids(1 + rng() % 40);
    for (auto& id : ids) id = pick(rng);
    for (bool skip : {false, true})
      ASSERT_EQ(stream_decode(t, ids, skip), t.decode(ids, skip)) << "seed " << seed << " sequence " << n;
  }
}

TEST_P(TokenizerFixture, VocabLookups) {
  const Tokenizer& t = get(GetParam());
  int round_trips = 0;
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    auto tok = t.id_to_token(id);
    ASSERT_TRUE(tok.has_value()) << "id " << id;  // fixture vocabularies are dense
    EXPECT_EQ(t.token_to_id(*tok), id) << shown(*tok);
    ++round_trips;
  }
  EXPECT_EQ(round_trips, t.vocab_size());
  EXPECT_FALSE(t.id_to_token(static_cast<int32_t>(t.vocab_size())).has_value());
  EXPECT_FALSE(t.id_to_token(-1).has_value());
  EXPECT_FALSE(t.token_to_id("no such token \x01").has_value());
}

// Random text made of words, code points of many scripts, whitespace and combining marks, no '<'
// (no accidental added tokens). Byte-level BPE and byte-fallback BPE are lossless on it.
std::string random_text(std::mt19937& rng) {
  static const char* const kWords[] = {"the", "model", " ", "  ", "\n", "\t", "中文", "天气", "😀", "👍🏽",
                                       "naïve", "e\xCC\x81", "123", "4567", "!?", "don't", "I'LL", "\r\n"};
  std::string s;
  const int n = 1 + rng() % 30;
  for (int i = 0; i < n; ++i) {
    if (rng() % 3 == 0) {
      const uint32_t ranges[][2] = {{0x20, 0x3B}, {0x3D, 0x7E}, {0xA0, 0x2FF}, {0x300, 0x36F}, {0x400, 0x4FF},
                                    {0x3040, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0x1F300, 0x1FAFF}};
      const auto& r = ranges[rng() % 9];
      tokenizer_detail::utf8_append(s, static_cast<char32_t>(r[0] + rng() % (r[1] - r[0] + 1)));
    } else {
      s += kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
    }
  }
  return s;
}

TEST_P(TokenizerFixture, RandomTextRoundTrips) {
  const std::string name = GetParam();
  const Tokenizer& t = get(name);
  const uint32_t seed = test_seed();
  std::mt19937 rng(seed);
  for (int n = 0; n < 300; ++n) {
    std::string text = random_text(rng);
    // Metaspace's decoder drops every "▁" of the first token, so leading spaces do not round-trip.
    if (name == "llama_metaspace") text.erase(0, text.find_first_not_of(' ') == std::string::npos ? text.size() : text.find_first_not_of(' '));
    const auto ids = t.encode(text, false);
    std::string want = text;
    if (name == "qwen3") want = tokenizer_detail::unicode_normalize(text, tokenizer_detail::NormForm::kNfc);
    ASSERT_EQ(t.decode(ids, false), want) << "seed " << seed << " text " << shown(text);
    ASSERT_EQ(stream_decode(t, ids, false), want) << "seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::ValuesIn(std::vector<std::string>(std::begin(kNames), std::end(kNames))));

TEST(Tokenizer, SpecialTokensAndFlags) {
  const Tokenizer& qwen = get("qwen3");
  const auto im_start = qwen.token_to_id("<|im_start|>");
  const auto think = qwen.token_to_id("<think>");
  ASSERT_TRUE(im_start && think);
  EXPECT_TRUE(qwen.is_special(*im_start));
  EXPECT_FALSE(qwen.is_special(*think));  // an added token that is not special
  EXPECT_EQ(qwen.encode("<|im_start|>", false), std::vector<int32_t>{*im_start});
  EXPECT_EQ(qwen.decode({*im_start, *think}, true), "<think>");

  const Tokenizer& mixtral = get("mixtral");
  const auto bos = mixtral.token_to_id("<s>");
  ASSERT_TRUE(bos.has_value());
  const auto with = mixtral.encode("hi", true), without = mixtral.encode("hi", false);
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with[0], *bos);  // BOS from TemplateProcessing
  EXPECT_TRUE(mixtral.encode("", false).empty());
  EXPECT_EQ(mixtral.encode("", true), std::vector<int32_t>{*bos});
}

TEST(Tokenizer, ConcurrentEncodesShareOneCache) {
  for (const char* name : {"qwen3", "mixtral"}) {
    const Tokenizer t = Tokenizer::load(kDir + std::string(name) + ".tokenizer.json").value();  // cold cache
    const json& rows = expected()["tokenizers"][name]["lines"];
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int w = 0; w < 4; ++w) {
      threads.emplace_back([&, w] {
        for (int rep = 0; rep < 5; ++rep)
          for (size_t i = w; i < rows.size() + w; ++i) {  // each thread starts at another line
            const size_t k = i % rows.size();
            if (t.encode(corpus()[k].get<std::string>(), true) != ids_of(rows[k]["ids_special"])) ++mismatches[w];
          }
      });
    }
    for (auto& th : threads) th.join();
    for (int w = 0; w < 4; ++w) EXPECT_EQ(mismatches[w], 0) << name << " thread " << w;
  }
}

TEST(Tokenizer, InvalidUtf8InputIsReplaced) {
  const Tokenizer& t = get("gpt2_bytelevel");
  const std::string bad = "ab\xC3(\xFF" "cd\xE4\xB8";
  EXPECT_EQ(t.decode(t.encode(bad, false), false), "ab\xEF\xBF\xBD(\xEF\xBF\xBD" "cd\xEF\xBF\xBD");
}

// Target ~1 s per MB optimized (measured 0.1-0.35 s on a loaded 2-core machine); sanitizer and
// debug builds run ~10x slower.
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
constexpr double kEncodeSecondsLimit = 3.0;
#else
constexpr double kEncodeSecondsLimit = 30.0;
#endif

TEST(Tokenizer, EncodesOneMegabyteQuickly) {
  std::mt19937 rng(test_seed());
  std::string text;
  while (text.size() < (1u << 20)) {
    text += corpus()[rng() % corpus().size()].get<std::string>();
    text += rng() % 2 ? " " : "\n";
  }
  for (const char* name : {"qwen3", "deepseek_v3", "mixtral"}) {
    const Tokenizer fresh = Tokenizer::load(kDir + std::string(name) + ".tokenizer.json").value();  // cold cache
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = fresh.encode(text, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("[ speed    ] %s: %.2f MB in %.3f s (%zu tokens)\n", name, text.size() / 1e6, s, ids.size());
    EXPECT_GT(ids.size(), text.size() / 20);
    EXPECT_LT(s, kEncodeSecondsLimit) << name;
  }
}

// ---- Errors ------------------------------------------------------------------------------------

std::string fixture_text(const std::string& name) {
  std::ifstream in(kDir + name + ".tokenizer.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status load_modified(const std::function<void(json&)>& edit) {
  json j = json::parse(fixture_text("qwen3"));
  edit(j);
  return Tokenizer::from_json(j.dump(), "edited.json").status();
}

TEST(TokenizerErrors, MissingAndCorruptFiles) {
  auto missing = Tokenizer::load(kDir + "does_not_exist.json");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("does_not_exist.json"), std::string::npos);

  const std::string text = fixture_text("qwen3");
  auto truncated = Tokenizer::from_json(text.substr(0, text.size() / 2), "half.json");
  ASSERT_FALSE(truncated.has_value());
  EXPECT_EQ(truncated.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(truncated.status().message().find("half.json"), std::string::npos);

  EXPECT_EQ(Tokenizer::from_json("[1, 2]", "array.json").status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(Tokenizer::from_json("", "empty.json").status().code(), StatusCode::kCorrupt);
}

TEST(TokenizerErrors, UnsupportedComponentsNameTheField) {
  struct Case {
    std::function<void(json&)> edit;
    const char* field;
    StatusCode code;
  };
  const Case cases[] = {
      {[](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type", StatusCode::kUnsupported},
      {[](json& j) { j.erase("model"); }, "model", StatusCode::kInvalidArgument},
      {[](json& j) { j["normalizer"] = {{"type", "BertNormalizer"}}; }, "normalizer.type", StatusCode::kUnsupported},
      {[](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["type"] = "Whitespace"; }, "pre_tokenizer.pretokenizers[0].type",
       StatusCode::kUnsupported},
      {[](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}}; },
       "pre_tokenizer.pretokenizers[0].pattern.Regex", StatusCode::kInvalidArgument},
      {[](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways"; },
       "pre_tokenizer.pretokenizers[0].behavior", StatusCode::kInvalidArgument},
      {[](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder.type", StatusCode::kUnsupported},
      {[](json& j) { j["post_processor"] = {{"type", "Mystery"}}; }, "post_processor.type", StatusCode::kUnsupported},
      {[](json& j) { j["model"]["merges"][3] = json::array({"nope-not-a-token", "x"}); }, "model.merges[3]",
       StatusCode::kInvalidArgument},
      {[](json& j) { j["model"]["vocab"]["bad"] = "seven"; }, "model.vocab['bad']", StatusCode::kInvalidArgument},
      {[](json& j) { j["added_tokens"][0].erase("content"); }, "added_tokens[0].content", StatusCode::kInvalidArgument},
      {[](json& j) { j["model"]["unk_token"] = "<nope>"; }, "model.unk_token", StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    const Status s = load_modified(c.edit);
    EXPECT_FALSE(s.is_ok()) << c.field;
    EXPECT_EQ(s.code(), c.code) << c.field << ": " << s.message();
    EXPECT_NE(s.message().find(c.field), std::string::npos) << "expected '" << c.field << "' in: " << s.message();
  }
}

}  // namespace
}  // namespace moex
