// Decoders (ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence) and
// post-processors (TemplateProcessing, ByteLevel, Roberta/Bert, Sequence) for single sequences.
#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

namespace {

constexpr const char* kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      // A token with any character outside the byte map contributes its raw UTF-8 (HF).
      const size_t mark = bytes.size();
      bool mapped = true;
      for (size_t i = 0; i < t.size();) {
        char32_t cp;
        i += utf8_decode(t, i, &cp);
        const int b = byte_level_byte(cp);
        if (b < 0) {
          mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!mapped) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_make_valid(bytes));
  }
};

}  // namespace

// "<0xAB>" -> 0xAB, as Rust's u8::from_str_radix on the two characters (which allows a '+').
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') return hex(t[4]);
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

bool decoder_uses_byte_fallback(const Json& j) {
  if (!j.is_object()) return false;
  if (j.value("type", std::string()) == "ByteFallback") return true;
  auto it = j.find("decoders");
  if (it != j.end() && it->is_array())
    for (const Json& d : *it)
      if (decoder_uses_byte_fallback(d)) return true;
  return false;
}

namespace {

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // consecutive byte tokens
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_is_valid(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back(kReplacementChar);
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int b = parse_byte_token(t);
      if (b >= 0) {
        pending.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<size_t, char32_t>> chars;  // (byte offset, code point)
      for (size_t i = 0; i < t.size();) {
        char32_t cp;
        const size_t n = utf8_decode(t, i, &cp);
        chars.emplace_back(i, cp);
        i += n;
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < start_ && i < chars.size() && chars[i].second == content_; ++i) start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < stop_ && i < chars.size(); ++i) {
        const size_t index = chars.size() - i - 1;
        if (chars[index].second != content_) break;
        stop_cut = index;
      }
      if (stop_cut <= start_cut) {
        t.clear();
        continue;
      }
      const size_t b = chars[start_cut].first;
      const size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Regex pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = regex_replace(pattern_, t, content_);
  }

 private:
  Regex pattern_;
  std::string content_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string& t = tokens[i];
      std::string out;
      for (size_t p = 0; p < t.size();) {
        if (t.compare(p, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && strip_first_)) out.push_back(' ');
          p += replacement_.size();
        } else {
          out.push_back(t[p++]);
        }
      }
      tokens[i].swap(out);
    }
  }

 private:
  std::string replacement_;  // one character
  bool strip_first_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

Expected<char32_t> single_char(const Json& j, const char* key, const std::string& where) {
  MOEX_ASSIGN_OR_RETURN(const std::string s, json_string(j, key, where));
  char32_t cp = 0;
  if (s.empty() || !utf8_is_valid(s) || utf8_decode(s, 0, &cp) != s.size())
    return invalid_argument(where + "." + key + ": expected exactly one character");
  return cp;
}

}  // namespace

Expected<std::unique_ptr<Decoder>> make_decoder(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + ": expected an object");
  MOEX_ASSIGN_OR_RETURN(const std::string type, json_string(j, "type", where));
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    MOEX_ASSIGN_OR_RETURN(const char32_t content, single_char(j, "content", where));
    MOEX_ASSIGN_OR_RETURN(const int64_t start, json_int(j, "start", where));
    MOEX_ASSIGN_OR_RETURN(const int64_t stop, json_int(j, "stop", where));
    if (start < 0 || stop < 0) return invalid_argument(where + ": start/stop must be >= 0");
    return std::unique_ptr<Decoder>(new StripDecoder(content, size_t(start), size_t(stop)));
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return invalid_argument(where + ".pattern: missing");
    MOEX_ASSIGN_OR_RETURN(Regex pattern, pattern_from_json(j["pattern"], where + ".pattern"));
    MOEX_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", where));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(pattern), std::move(content)));
  }
  if (type == "Metaspace") {
    MOEX_ASSIGN_OR_RETURN(const char32_t rep, single_char(j, "replacement", where));
    std::string replacement;
    utf8_append(replacement, rep);
    bool strip_first = true;  // prepend_scheme "always" (the default) or "first"
    if (j.contains("prepend_scheme")) {
      MOEX_ASSIGN_OR_RETURN(const std::string s, json_string(j, "prepend_scheme", where));
      if (s != "first" && s != "never" && s != "always")
        return invalid_argument(where + ".prepend_scheme: unknown value '" + s + "'");
      strip_first = s != "never";
    }
    MOEX_ASSIGN_OR_RETURN(const bool add_prefix_space, json_bool(j, "add_prefix_space", true, where));
    if (!add_prefix_space) strip_first = false;
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(std::move(replacement), strip_first));
  }
  if (type == "Sequence") {
    MOEX_ASSIGN_OR_RETURN(const Json* list, json_array(j, "decoders", where));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      MOEX_ASSIGN_OR_RETURN(auto step, make_decoder((*list)[i], where + ".decoders[" + std::to_string(i) + "]"));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  return unsupported(where + ".type: unsupported decoder '" + type + "'");
}

// ---- Post-processors ---------------------------------------------------------------------------

namespace {

class IdsPostProcessor final : public PostProcessor {
 public:
  IdsPostProcessor(std::vector<int32_t> before, std::vector<int32_t> after) : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_, after_;  // ids around the sequence
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& step : steps_) step->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

Expected<std::unique_ptr<PostProcessor>> template_processor(const Json& j, const std::string& where) {
  MOEX_ASSIGN_OR_RETURN(const Json* single, json_array(j, "single", where));
  const Json empty = Json::object();
  const Json& specials = j.contains("special_tokens") ? j["special_tokens"] : empty;
  if (!specials.is_object()) return invalid_argument(where + ".special_tokens: expected an object");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& piece = (*single)[i];
    const std::string at = where + ".single[" + std::to_string(i) + "]";
    if (piece.is_object() && piece.contains("Sequence")) {
      if (seen_sequence) return unsupported(at + ": a single template with two sequences");
      seen_sequence = true;
      continue;
    }
    if (!piece.is_object() || !piece.contains("SpecialToken") || !piece["SpecialToken"].is_object())
      return invalid_argument(at + ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    MOEX_ASSIGN_OR_RETURN(const std::string name, json_string(piece["SpecialToken"], "id", at + ".SpecialToken"));
    if (!specials.contains(name) || !specials[name].is_object())
      return invalid_argument(at + ": special token '" + name + "' is not in special_tokens");
    MOEX_ASSIGN_OR_RETURN(const Json* ids, json_array(specials[name], "ids", where + ".special_tokens['" + name + "']"));
    for (const Json& id : *ids) {
      if (!id.is_number_integer()) return invalid_argument(where + ".special_tokens['" + name + "'].ids: expected integers");
      (seen_sequence ? after : before).push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  return std::unique_ptr<PostProcessor>(new IdsPostProcessor(std::move(before), std::move(after)));
}

// Roberta/Bert: "cls": [token, id], "sep": [token, id] -> cls A sep.
Expected<std::unique_ptr<PostProcessor>> cls_sep_processor(const Json& j, const std::string& where) {
  auto id_of = [&](const char* key) -> Expected<int32_t> {
    auto it = j.find(key);
    if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer())
      return invalid_argument(where + "." + key + ": expected [token, id]");
    return static_cast<int32_t>((*it)[1].get<int64_t>());
  };
  MOEX_ASSIGN_OR_RETURN(const int32_t cls, id_of("cls"));
  MOEX_ASSIGN_OR_RETURN(const int32_t sep, id_of("sep"));
  return std::unique_ptr<PostProcessor>(new IdsPostProcessor({cls}, {sep}));
}

}  // namespace

Expected<std::unique_ptr<PostProcessor>> make_post_processor(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + ": expected an object");
  MOEX_ASSIGN_OR_RETURN(const std::string type, json_string(j, "type", where));
  if (type == "TemplateProcessing") return template_processor(j, where);
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new IdsPostProcessor({}, {}));  // offsets only
  if (type == "RobertaProcessing" || type == "BertProcessing") return cls_sep_processor(j, where);
  if (type == "Sequence") {
    MOEX_ASSIGN_OR_RETURN(const Json* list, json_array(j, "processors", where));
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      MOEX_ASSIGN_OR_RETURN(auto step, make_post_processor((*list)[i], where + ".processors[" + std::to_string(i) + "]"));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<PostProcessor>(new SequencePostProcessor(std::move(steps)));
  }
  return unsupported(where + ".type: unsupported post-processor '" + type + "'");
}

}  // namespace moex::tokenizer_detail
