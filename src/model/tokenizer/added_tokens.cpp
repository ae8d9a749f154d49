// Cutting added tokens out of text: a byte trie searched leftmost-longest without overlaps (the
// matching HF does with Aho-Corasick), then HF's single_word / lstrip / rstrip adjustments.
#include <utf8proc.h>

#include <algorithm>

#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

namespace {

// Rust regex \w: letters, marks, decimal digits, connector punctuation (Alphabetic approximated
// by the letter categories plus Nl).
bool is_word_char(char32_t cp) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

char32_t last_char(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  char32_t cp;
  utf8_decode(s, i, &cp);
  return cp;
}

// Start of the run of whitespace that ends s (HF: \s*$).
size_t whitespace_run_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    char32_t cp;
    utf8_decode(s, i, &cp);
    if (!is_unicode_whitespace(cp)) break;
    end = i;
  }
  return end;
}

// Length of the run of whitespace that starts s (HF: ^\s*).
size_t whitespace_run_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    char32_t cp;
    const size_t n = utf8_decode(s, i, &cp);
    if (!is_unicode_whitespace(cp)) break;
    i += n;
  }
  return i;
}

}  // namespace

void AddedTokenMatcher::add(const std::string& pattern, size_t token_index) {
  if (pattern.empty()) return;
  uint32_t node = 0;
  for (char c : pattern) {
    const auto b = static_cast<unsigned char>(c);
    auto it = nodes_[node].next.find(b);
    if (it == nodes_[node].next.end()) {
      nodes_.emplace_back();
      const auto child = static_cast<uint32_t>(nodes_.size() - 1);
      nodes_[node].next[b] = child;
      node = child;
    } else {
      node = it->second;
    }
  }
  if (nodes_[node].token_index < 0) nodes_[node].token_index = static_cast<int64_t>(token_index);
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
}

void AddedTokenMatcher::split(Piece&& piece, const std::vector<AddedToken>& tokens, std::vector<Piece>& out) const {
  const std::string_view s = piece.text;
  if (empty() || s.empty()) {
    if (!s.empty()) out.push_back(std::move(piece));
    return;
  }
  auto push_text = [&](size_t b, size_t e) {
    if (e <= b) return;
    Piece p;
    p.text.assign(s.substr(b, e - b));
    p.at_start = piece.at_start && b == 0;
    out.push_back(std::move(p));
  };
  size_t start_offset = 0;  // end of the last emitted split
  size_t pos = 0;           // where the search for the next match resumes
  while (pos < s.size()) {
    if (!first_byte_[static_cast<unsigned char>(s[pos])]) {
      ++pos;
      continue;
    }
    // Longest pattern starting at pos.
    int64_t found = -1;
    size_t found_end = 0;
    uint32_t node = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      auto it = nodes_[node].next.find(static_cast<unsigned char>(s[i]));
      if (it == nodes_[node].next.end()) break;
      node = it->second;
      if (nodes_[node].token_index >= 0) found = nodes_[node].token_index, found_end = i + 1;
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = found_end;
    pos = found_end;
    const AddedToken& tok = tokens[static_cast<size_t>(found)];
    if (tok.single_word) {
      const bool start_space = start == 0 || !is_word_char(last_char(s.substr(0, start)));
      bool stop_space = stop == s.size();
      if (!stop_space) {
        char32_t cp;
        utf8_decode(s, stop, &cp);
        stop_space = !is_word_char(cp);
      }
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) start = std::max(whitespace_run_start(s.substr(0, start)), start_offset);
    if (tok.rstrip) stop += whitespace_run_length(s.substr(stop));
    if (start_offset < start) push_text(start_offset, start);
    Piece t;
    t.text.assign(s.substr(start, stop - start));
    t.token_id = tok.id;
    t.at_start = piece.at_start && start == 0;
    out.push_back(std::move(t));
    start_offset = stop;
  }
  if (start_offset < s.size()) push_text(start_offset, s.size());
}

}  // namespace moex::tokenizer_detail
