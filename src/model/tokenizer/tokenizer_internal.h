// Internal pieces of the tokenizer (not part of the public API): UTF-8 helpers, a PCRE2 regex
// wrapper, and the normalizer / pre-tokenizer / BPE / decoder / post-processor / added-token
// components, each built from its tokenizer.json object. Semantics follow HF `tokenizers` 0.23.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace moex::tokenizer_detail {

using Json = nlohmann::json;

// ---- UTF-8 -------------------------------------------------------------------------------------
// Decodes the code point at s[i] (s must be valid UTF-8) and returns its byte length.
size_t utf8_decode(std::string_view s, size_t i, char32_t* cp);
void utf8_append(std::string& out, char32_t cp);
bool utf8_is_valid(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_make_valid(std::string_view s);
bool utf8_ends_with_replacement(std::string_view s);  // ends with U+FFFD
// Unicode White_Space (Rust char::is_whitespace).
bool is_unicode_whitespace(char32_t cp);

// GPT-2 byte <-> printable code point map used by ByteLevel.
const std::array<std::string, 256>& byte_level_chars();  // byte -> UTF-8 of its code point
int byte_level_byte(char32_t cp);                         // code point -> byte, -1 if none

// Unicode normalization forms through utf8proc; the ASCII fast path skips the library.
enum class NormForm { kNfc, kNfd, kNfkc, kNfkd };
std::string unicode_normalize(std::string_view s, NormForm form);

// ---- Regex (PCRE2, UTF + UCP, JIT) -------------------------------------------------------------
using Span = std::pair<size_t, size_t>;  // [begin, end) byte offsets

class Regex {
 public:
  static Expected<Regex> compile(const std::string& pattern, const std::string& where);
  static Expected<Regex> literal(const std::string& text, const std::string& where);
  // All non-overlapping matches left to right (an empty match advances one character).
  void find_all(std::string_view s, std::vector<Span>* out) const;

 private:
  std::shared_ptr<void> code_;  // pcre2_code_8*
};

// A Split/Replace pattern from tokenizer.json: {"String": "..."} or {"Regex": "..."}.
Expected<Regex> pattern_from_json(const Json& j, const std::string& where);
// (span, is_match) covering all of s, like HF's Pattern::find_matches.
std::vector<std::pair<Span, bool>> match_pieces(const Regex& re, std::string_view s);
// Replaces every match of `re` in s by `content`.
std::string regex_replace(const Regex& re, std::string_view s, const std::string& content);

// ---- JSON field helpers: errors name "<origin>: <path>" -----------------------------------------
Expected<std::string> json_string(const Json& j, const char* key, const std::string& where);
Expected<bool> json_bool(const Json& j, const char* key, bool fallback, const std::string& where);
Expected<int64_t> json_int(const Json& j, const char* key, const std::string& where);
Expected<const Json*> json_array(const Json& j, const char* key, const std::string& where);

// ---- Pipeline pieces ---------------------------------------------------------------------------
// One span of text moving through the pipeline. `token_id` >= 0 once it is an added token (it then
// skips normalization, pre-tokenization and the model). `at_start`: begins at offset 0 of the
// input (Metaspace's prepend_scheme "first").
struct Piece {
  std::string text;
  int32_t token_id = -1;
  bool at_start = false;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
Expected<std::unique_ptr<Normalizer>> make_normalizer(const Json& j, const std::string& where);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits every piece that is not an added token; drops empty pieces.
  virtual void apply(std::vector<Piece>& pieces) const;

 protected:
  virtual void split_one(Piece&& piece, std::vector<Piece>& out) const = 0;
};
Expected<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const Json& j, const std::string& where);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF's decode_chain: token strings in, (possibly fewer) strings out; joined at the end.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
Expected<std::unique_ptr<Decoder>> make_decoder(const Json& j, const std::string& where);
bool decoder_uses_byte_fallback(const Json& j);  // j: the "decoder" object
int parse_byte_token(const std::string& token);   // "<0xAB>" -> 0xAB as HF's ByteFallback, else -1

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Single sequence with add_special_tokens = true.
  virtual void process(std::vector<int32_t>& ids) const = 0;
};
Expected<std::unique_ptr<PostProcessor>> make_post_processor(const Json& j, const std::string& where);

// Byte-pair encoding model with a per-word cache.
class BpeModel {
 public:
  static Expected<std::unique_ptr<BpeModel>> from_json(const Json& j, const std::string& where);
  void tokenize(const std::string& word, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr if unknown
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }
  size_t vocab_count() const { return vocab_.size(); }  // HF's Model::get_vocab_size

 private:
  struct MergeInfo {
    uint32_t rank;
    int32_t new_id;
  };
  void merge_word(const std::string& word, std::vector<int32_t>& out) const;
  const MergeInfo* find_merge(int32_t a, int32_t b) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;  // [max_id + 1]
  std::vector<uint8_t> has_id_;           // [max_id + 1]
  std::unordered_map<uint64_t, MergeInfo> merges_;  // (a << 32 | b) -> rank, merged id
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_token_{};  // id of "<0xXX>", -1 if absent

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

struct AddedToken {
  int32_t id = 0;
  std::string content;
  std::string decode_form;  // content, or its normalized form for normalized tokens (HF 0.23)
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest, non-overlapping matching of added-token strings (HF's MatchingSet).
class AddedTokenMatcher {
 public:
  void add(const std::string& pattern, size_t token_index);
  bool empty() const { return nodes_.size() <= 1; }
  // Appends the pieces of `piece` (HF's find_matches + split_with_indices; empty pieces dropped).
  void split(Piece&& piece, const std::vector<AddedToken>& tokens, std::vector<Piece>& out) const;

 private:
  struct Node {
    std::unordered_map<unsigned char, uint32_t> next;
    int64_t token_index = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_byte_{};
};

struct TokenizerImpl {
  std::string origin;
  std::vector<AddedToken> added;                     // every token added (a re-added one repeats)
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, size_t> added_by_id;   // id -> index into `added`
  std::unordered_set<std::string> special_contents;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  int64_t vocab_size = 0;
  // Ids whose text a later id can still change: with a ByteFallback decoder, "<0xXX>" tokens (one
  // invalid byte in a run turns the whole run into U+FFFDs). Streaming holds them back.
  std::unordered_set<int32_t> held_ids;
};

}  // namespace moex::tokenizer_detail
