// PCRE2 wrapper (UTF + UCP so \s, \p{L}, \w follow Unicode like Oniguruma in HF) and the JSON
// field helpers shared by the component factories.
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

namespace {

// Per-thread match state: match data for group 0 and a JIT stack large enough for long runs.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
  }
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

std::string escape_regex(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}-#/ ").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

Expected<Regex> Regex::compile(const std::string& pattern, const std::string& where) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return invalid_argument(where + ": regex does not compile at offset " + std::to_string(offset) + ": " +
                            reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  Regex re;
  re.code_ = std::shared_ptr<void>(code, [](void* p) { pcre2_code_free(static_cast<pcre2_code*>(p)); });
  return re;
}

Expected<Regex> Regex::literal(const std::string& text, const std::string& where) {
  return compile(escape_regex(text), where);
}

void Regex::find_all(std::string_view s, std::vector<Span>* out) const {
  auto* code = static_cast<pcre2_code*>(code_.get());
  MatchState& st = match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t start = 0;
  while (start <= s.size()) {
    const int rc = pcre2_match(code, subject, s.size(), start, PCRE2_NO_UTF_CHECK, st.data, st.context);
    if (rc < 0) break;  // no match (or a resource limit: the rest stays unmatched)
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t b = ov[0], e = ov[1];
    out->emplace_back(b, e);
    if (e > b) {
      start = e;
    } else {  // empty match: step over one character
      if (b >= s.size()) break;
      char32_t cp;
      start = b + utf8_decode(s, b, &cp);
    }
  }
}

Expected<Regex> pattern_from_json(const Json& j, const std::string& where) {
  if (j.is_object() && j.size() == 1) {
    if (j.contains("Regex") && j["Regex"].is_string()) return Regex::compile(j["Regex"].get<std::string>(), where + ".Regex");
    if (j.contains("String") && j["String"].is_string()) return Regex::literal(j["String"].get<std::string>(), where + ".String");
  }
  if (j.is_string()) return Regex::literal(j.get<std::string>(), where);
  return invalid_argument(where + ": expected {\"Regex\": ...} or {\"String\": ...}");
}

std::vector<std::pair<Span, bool>> match_pieces(const Regex& re, std::string_view s) {
  std::vector<std::pair<Span, bool>> pieces;
  if (s.empty()) {
    pieces.push_back({{0, 0}, false});
    return pieces;
  }
  std::vector<Span> matches;
  re.find_all(s, &matches);
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.first) pieces.push_back({{prev, m.first}, false});
    pieces.push_back({m, true});
    prev = m.second;
  }
  if (prev != s.size()) pieces.push_back({{prev, s.size()}, false});
  return pieces;
}

std::string regex_replace(const Regex& re, std::string_view s, const std::string& content) {
  std::vector<Span> matches;
  re.find_all(s, &matches);
  if (matches.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t prev = 0;
  for (const Span& m : matches) {
    out.append(s.substr(prev, m.first - prev));
    out += content;
    prev = m.second;
  }
  out.append(s.substr(prev));
  return out;
}

Expected<std::string> json_string(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return invalid_argument(where + "." + key + ": missing");
  if (!it->is_string()) return invalid_argument(where + "." + key + ": expected a string");
  return it->get<std::string>();
}

Expected<bool> json_bool(const Json& j, const char* key, bool fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return invalid_argument(where + "." + key + ": expected true or false");
  return it->get<bool>();
}

Expected<int64_t> json_int(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return invalid_argument(where + "." + key + ": missing");
  if (!it->is_number_integer()) return invalid_argument(where + "." + key + ": expected an integer");
  return it->get<int64_t>();
}

Expected<const Json*> json_array(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return invalid_argument(where + "." + key + ": missing");
  if (!it->is_array()) return invalid_argument(where + "." + key + ": expected an array");
  return &*it;
}

}  // namespace moex::tokenizer_detail
