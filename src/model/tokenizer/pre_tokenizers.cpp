// Pre-tokenizers: Split (regex or string, five delimiter behaviours), ByteLevel, Metaspace, Digits,
// Sequence.
#include <utf8proc.h>

#include <algorithm>

#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

void PreTokenizer::apply(std::vector<Piece>& pieces) const {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (Piece& p : pieces) {
    if (p.token_id >= 0) {
      out.push_back(std::move(p));
    } else if (!p.text.empty()) {
      split_one(std::move(p), out);
    }
  }
  pieces.swap(out);
}

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
using Matches = std::vector<std::pair<Span, bool>>;  // (span, is_match) covering the piece

// HF NormalizedString::split: turns (span, is_match) into the spans to keep.
std::vector<Span> apply_behavior(Matches m, Behavior behavior) {
  std::vector<Span> keep;
  switch (behavior) {
    case Behavior::kIsolated:
      for (auto& [span, is_match] : m) keep.push_back(span);
      return keep;
    case Behavior::kRemoved:
      for (auto& [span, is_match] : m)
        if (!is_match) keep.push_back(span);
      return keep;
    case Behavior::kContiguous: {
      bool previous = false;
      for (auto& [span, is_match] : m) {
        if (is_match == previous && !keep.empty()) keep.back().second = span.second;
        else keep.push_back(span);
        previous = is_match;
      }
      return keep;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (auto& [span, is_match] : m) {
        if (is_match && !previous && !keep.empty()) keep.back().second = span.second;
        else keep.push_back(span);
        previous = is_match;
      }
      return keep;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;  // walks right to left: "previous" is the piece after
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->second && !previous && !keep.empty()) keep.back().first = it->first.first;
        else keep.push_back(it->first);
        previous = it->second;
      }
      std::reverse(keep.begin(), keep.end());
      return keep;
    }
  }
  return keep;
}

void emit(Piece&& parent, const std::vector<Span>& spans, std::vector<Piece>& out) {
  for (const Span& s : spans) {
    if (s.second <= s.first) continue;
    Piece p;
    p.text = parent.text.substr(s.first, s.second - s.first);
    p.at_start = parent.at_start && s.first == 0;
    out.push_back(std::move(p));
  }
}

Expected<Behavior> parse_behavior(const Json& j, const std::string& where) {
  MOEX_ASSIGN_OR_RETURN(const std::string b, json_string(j, "behavior", where));
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return invalid_argument(where + ".behavior: unknown value '" + b + "'");
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, Behavior behavior, bool invert) : re_(std::move(re)), behavior_(behavior), invert_(invert) {}

 protected:
  void split_one(Piece&& piece, std::vector<Piece>& out) const override {
    Matches m = match_pieces(re_, piece.text);
    if (invert_)
      for (auto& e : m) e.second = !e.second;
    emit(std::move(piece), apply_behavior(std::move(m), behavior_), out);
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

// GPT-2's pattern, which ByteLevel(use_regex=true) applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}

 protected:
  void split_one(Piece&& piece, std::vector<Piece>& out) const override {
    if (add_prefix_space_ && piece.text[0] != ' ') piece.text = " " + piece.text;
    const size_t first = out.size();
    if (re_) {
      std::vector<Span> spans;
      for (auto& [span, is_match] : match_pieces(*re_, piece.text)) spans.push_back(span);
      emit(std::move(piece), spans, out);
    } else {
      out.push_back(std::move(piece));
    }
    // Map every byte to its printable stand-in.
    const auto& chars = byte_level_chars();
    for (size_t i = first; i < out.size(); ++i) {
      std::string mapped;
      mapped.reserve(out[i].text.size() * 2);
      for (char c : out[i].text) mapped += chars[static_cast<unsigned char>(c)];
      out[i].text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> re_;
};

enum class PrependScheme { kFirst, kNever, kAlways };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split, Regex space, Regex repl)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split), space_(std::move(space)),
        repl_(std::move(repl)) {}

 protected:
  void split_one(Piece&& piece, std::vector<Piece>& out) const override {
    piece.text = regex_replace(space_, piece.text, replacement_);
    const bool starts = piece.text.compare(0, replacement_.size(), replacement_) == 0;
    if (!starts && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start)))
      piece.text.insert(0, replacement_);
    if (!split_) {
      out.push_back(std::move(piece));
      return;
    }
    Matches m = match_pieces(repl_, piece.text);
    emit(std::move(piece), apply_behavior(std::move(m), Behavior::kMergedWithNext), out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  Regex space_, repl_;
};

// Digits: every numeric character (Rust char::is_numeric: Nd, Nl, No) is a match, isolated one
// by one or merged into runs (Contiguous).
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

 protected:
  void split_one(Piece&& piece, std::vector<Piece>& out) const override {
    const std::string& s = piece.text;
    Matches m;
    size_t last = 0;
    for (size_t i = 0; i < s.size();) {
      char32_t cp;
      const size_t n = utf8_decode(s, i, &cp);
      const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
      if (cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO) {
        if (last < i) m.push_back({{last, i}, false});
        m.push_back({{i, i + n}, true});
        last = i + n;
      }
      i += n;
    }
    if (last < s.size()) m.push_back({{last, s.size()}, false});
    emit(std::move(piece), apply_behavior(std::move(m), individual_ ? Behavior::kIsolated : Behavior::kContiguous), out);
  }

 private:
  bool individual_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->apply(pieces);
  }

 protected:
  void split_one(Piece&&, std::vector<Piece>&) const override {}  // apply() is overridden

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

Expected<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + ": expected an object");
  MOEX_ASSIGN_OR_RETURN(const std::string type, json_string(j, "type", where));
  if (type == "Split") {
    if (!j.contains("pattern")) return invalid_argument(where + ".pattern: missing");
    MOEX_ASSIGN_OR_RETURN(Regex re, pattern_from_json(j["pattern"], where + ".pattern"));
    MOEX_ASSIGN_OR_RETURN(const Behavior behavior, parse_behavior(j, where));
    MOEX_ASSIGN_OR_RETURN(const bool invert, json_bool(j, "invert", false, where));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), behavior, invert));
  }
  if (type == "ByteLevel") {
    MOEX_ASSIGN_OR_RETURN(const bool add_prefix_space, json_bool(j, "add_prefix_space", true, where));
    MOEX_ASSIGN_OR_RETURN(const bool use_regex, json_bool(j, "use_regex", true, where));
    std::optional<Regex> re;
    if (use_regex) {
      MOEX_ASSIGN_OR_RETURN(Regex compiled, Regex::compile(kGpt2Pattern, where + " (GPT-2 pattern)"));
      re = std::move(compiled);
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, std::move(re)));
  }
  if (type == "Metaspace") {
    MOEX_ASSIGN_OR_RETURN(std::string replacement, json_string(j, "replacement", where));
    PrependScheme scheme = PrependScheme::kAlways;
    if (j.contains("prepend_scheme")) {
      MOEX_ASSIGN_OR_RETURN(const std::string s, json_string(j, "prepend_scheme", where));
      if (s == "first") scheme = PrependScheme::kFirst;
      else if (s == "never") scheme = PrependScheme::kNever;
      else if (s == "always") scheme = PrependScheme::kAlways;
      else return invalid_argument(where + ".prepend_scheme: unknown value '" + s + "'");
    }
    MOEX_ASSIGN_OR_RETURN(const bool add_prefix_space, json_bool(j, "add_prefix_space", true, where));
    if (!add_prefix_space) scheme = PrependScheme::kNever;
    MOEX_ASSIGN_OR_RETURN(const bool split, json_bool(j, "split", true, where));
    MOEX_ASSIGN_OR_RETURN(Regex space, Regex::literal(" ", where));
    MOEX_ASSIGN_OR_RETURN(Regex repl, Regex::literal(replacement, where + ".replacement"));
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(std::move(replacement), scheme, split, std::move(space), std::move(repl)));
  }
  if (type == "Digits") {
    MOEX_ASSIGN_OR_RETURN(const bool individual, json_bool(j, "individual_digits", false, where));
    return std::unique_ptr<PreTokenizer>(new DigitsPreTokenizer(individual));
  }
  if (type == "Sequence") {
    MOEX_ASSIGN_OR_RETURN(const Json* list, json_array(j, "pretokenizers", where));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      MOEX_ASSIGN_OR_RETURN(auto step, make_pre_tokenizer((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  return unsupported(where + ".type: unsupported pre-tokenizer '" + type + "'");
}

}  // namespace moex::tokenizer_detail
