// Tokenizer: tokenizer.json loading, the encode pipeline, decode and streaming decode.
#include "model/tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <fstream>
#include <sstream>

#include "model/tokenizer/tokenizer_internal.h"

namespace moex {

using tokenizer_detail::AddedToken;
using tokenizer_detail::Json;
using tokenizer_detail::Piece;
using tokenizer_detail::TokenizerImpl;

namespace {

Expected<std::vector<AddedToken>> read_added_tokens(const Json& root, const std::string& origin) {
  const std::string where = origin + ": added_tokens";
  std::vector<AddedToken> listed;
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return listed;
  if (!it->is_array()) return invalid_argument(where + ": expected an array");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& e = (*it)[i];
    const std::string at = where + "[" + std::to_string(i) + "]";
    if (!e.is_object()) return invalid_argument(at + ": expected an object");
    AddedToken tok;
    MOEX_ASSIGN_OR_RETURN(const int64_t id, tokenizer_detail::json_int(e, "id", at));
    if (id < 0 || id > INT32_MAX) return invalid_argument(at + ".id: out of range");
    tok.id = static_cast<int32_t>(id);
    MOEX_ASSIGN_OR_RETURN(tok.content, tokenizer_detail::json_string(e, "content", at));
    if (!tokenizer_detail::utf8_is_valid(tok.content)) return invalid_argument(at + ".content: not UTF-8");
    MOEX_ASSIGN_OR_RETURN(tok.single_word, tokenizer_detail::json_bool(e, "single_word", false, at));
    MOEX_ASSIGN_OR_RETURN(tok.lstrip, tokenizer_detail::json_bool(e, "lstrip", false, at));
    MOEX_ASSIGN_OR_RETURN(tok.rstrip, tokenizer_detail::json_bool(e, "rstrip", false, at));
    MOEX_ASSIGN_OR_RETURN(tok.normalized, tokenizer_detail::json_bool(e, "normalized", true, at));
    MOEX_ASSIGN_OR_RETURN(tok.special, tokenizer_detail::json_bool(e, "special", false, at));
    tok.decode_form = tok.content;
    listed.push_back(std::move(tok));
  }
  return listed;
}

bool same_flags(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.single_word == b.single_word && a.lstrip == b.lstrip && a.rstrip == b.rstrip &&
         a.normalized == b.normalized && a.special == b.special;
}

// HF's AddedVocabulary::add_tokens as run by deserialization: the "id" in the file is NOT used.
// A token takes its model-vocab id if its content is in the vocab, else the next id from
// vocab_count() on. Then the id/content maps and the two matchers are built; normalized tokens
// are matched, and decoded, in their normalized form.
void add_tokens(TokenizerImpl& t, std::vector<AddedToken> listed) {
  auto next_id = static_cast<int64_t>(t.model->vocab_count());
  for (AddedToken& tok : listed) {
    if (tok.content.empty()) continue;
    auto existing = t.added_by_content.find(tok.content);
    if (existing != t.added_by_content.end() && same_flags(t.added[t.added_by_id[existing->second]], tok)) continue;
    if (existing != t.added_by_content.end()) {
      tok.id = existing->second;
    } else if (auto in_vocab = t.model->token_to_id(tok.content)) {
      tok.id = *in_vocab;
    } else {
      tok.id = static_cast<int32_t>(next_id++);
    }
    if (tok.normalized && t.normalizer) {
      std::string normed = tok.content;
      t.normalizer->normalize(normed);
      tok.decode_form = normed;
    }
    t.added_by_content[tok.content] = tok.id;
    if (tok.special) t.special_contents.insert(tok.content);
    t.added.push_back(tok);
    t.added_by_id[tok.id] = t.added.size() - 1;
  }
  for (const auto& [id, index] : t.added_by_id) {
    const AddedToken& tok = t.added[index];
    if (tok.normalized) t.normalized_matcher.add(tok.decode_form, index);
    else t.raw_matcher.add(tok.content, index);
  }
}

}  // namespace

Expected<Tokenizer> Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("tokenizer.json: cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return io_error("tokenizer.json: read error on '" + path + "'");
  return from_json(ss.str(), path);
}

Expected<Tokenizer> Tokenizer::from_json(std::string_view json_text, const std::string& origin) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const std::exception& e) {
    return corrupt(origin + ": not valid JSON (" + e.what() + ")");
  }
  if (!root.is_object()) return corrupt(origin + ": top level is not a JSON object");
  try {
    auto t = std::make_shared<TokenizerImpl>();
    t->origin = origin;
    auto section = [&](const char* key) -> const Json* {
      auto it = root.find(key);
      return it == root.end() || it->is_null() ? nullptr : &*it;
    };
    const Json* model = section("model");
    if (model == nullptr) return invalid_argument(origin + ": model: missing");
    MOEX_ASSIGN_OR_RETURN(t->model, tokenizer_detail::BpeModel::from_json(*model, origin + ": model"));
    if (const Json* j = section("normalizer")) {
      MOEX_ASSIGN_OR_RETURN(t->normalizer, tokenizer_detail::make_normalizer(*j, origin + ": normalizer"));
    }
    if (const Json* j = section("pre_tokenizer")) {
      MOEX_ASSIGN_OR_RETURN(t->pre_tokenizer, tokenizer_detail::make_pre_tokenizer(*j, origin + ": pre_tokenizer"));
    }
    if (const Json* j = section("post_processor")) {
      MOEX_ASSIGN_OR_RETURN(t->post_processor, tokenizer_detail::make_post_processor(*j, origin + ": post_processor"));
    }
    bool byte_fallback_decoder = false;
    if (const Json* j = section("decoder")) {
      MOEX_ASSIGN_OR_RETURN(t->decoder, tokenizer_detail::make_decoder(*j, origin + ": decoder"));
      byte_fallback_decoder = tokenizer_detail::decoder_uses_byte_fallback(*j);
    }
    MOEX_ASSIGN_OR_RETURN(auto listed, read_added_tokens(root, origin));
    add_tokens(*t, std::move(listed));
    if (byte_fallback_decoder) {
      for (int32_t id = 0; id <= t->model->max_id(); ++id) {
        const std::string* s = t->model->id_to_token(id);
        if (s && !t->added_by_id.count(id) && tokenizer_detail::parse_byte_token(*s) >= 0) t->held_ids.insert(id);
      }
      for (const auto& [id, index] : t->added_by_id)
        if (tokenizer_detail::parse_byte_token(t->added[index].decode_form) >= 0) t->held_ids.insert(id);
    }
    int64_t max_id = t->model->max_id();
    for (const auto& [id, index] : t->added_by_id) max_id = std::max<int64_t>(max_id, id);
    t->vocab_size = max_id + 1;
    return Tokenizer(std::move(t));
  } catch (const std::exception& e) {  // a JSON value of an unexpected type deep inside
    return corrupt(origin + ": malformed tokenizer.json (" + e.what() + ")");
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerImpl& t = *impl_;
  std::vector<Piece> pieces;
  {
    Piece whole;
    whole.text = tokenizer_detail::utf8_is_valid(text) ? std::string(text) : tokenizer_detail::utf8_make_valid(text);
    whole.at_start = true;
    t.raw_matcher.split(std::move(whole), t.added, pieces);
  }
  // Normalize what is not an added token, then cut out the normalized added tokens.
  std::vector<Piece> normalized;
  normalized.reserve(pieces.size());
  for (Piece& p : pieces) {
    if (p.token_id >= 0) {
      normalized.push_back(std::move(p));
      continue;
    }
    if (t.normalizer) t.normalizer->normalize(p.text);
    t.normalized_matcher.split(std::move(p), t.added, normalized);
  }
  if (t.pre_tokenizer) t.pre_tokenizer->apply(normalized);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& p : normalized) {
    if (p.token_id >= 0) ids.push_back(p.token_id);
    else t.model->tokenize(p.text, ids);
  }
  if (add_special_tokens && t.post_processor) t.post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const TokenizerImpl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* s = nullptr;
    auto it = t.added_by_id.find(id);
    if (it != t.added_by_id.end()) s = &t.added[it->second].decode_form;
    else s = t.model->id_to_token(id);
    if (s == nullptr) continue;  // unknown id: skipped, as HF does
    if (skip_special_tokens && t.special_contents.count(*s)) continue;
    tokens.push_back(*s);
  }
  std::string out;
  if (t.decoder) {
    t.decoder->decode_chain(tokens);
    for (const std::string& s : tokens) out += s;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
  }
  return out;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_by_content.find(std::string(token));
  if (it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  if (it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (const std::string* s = impl_->model->id_to_token(id)) return *s;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

// HF's DecodeStream: decode the window, emit what extends the previous text once it no longer
// ends in U+FFFD (an unfinished character), then drop ids that can no longer matter. Unlike HF,
// byte-fallback tokens are held until their run ends, so the stream always equals decode().
std::string StreamDecoder::push(int32_t id) {
  const TokenizerImpl& t = tokenizer_->impl();
  // Held: byte-fallback tokens, and ids that decode to nothing here (unknown, or skipped specials)
  // because a byte run may continue across them.
  auto holds = [&](int32_t x) {
    if (t.held_ids.count(x)) return true;
    const std::string* s = nullptr;
    auto it = t.added_by_id.find(x);
    if (it != t.added_by_id.end()) s = &t.added[it->second].decode_form;
    else s = t.model->id_to_token(x);
    return s == nullptr || (skip_special_tokens_ && t.special_contents.count(*s) > 0);
  };
  if (prefix_.empty() && !ids_.empty() && !holds(ids_.back())) {
    std::string p = tokenizer_->decode(ids_, skip_special_tokens_);
    if (!tokenizer_detail::utf8_ends_with_replacement(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  if (holds(id)) return {};  // the byte run before it may still turn invalid
  std::string s = tokenizer_->decode(ids_, skip_special_tokens_);
  if (s.size() <= prefix_.size() || tokenizer_detail::utf8_ends_with_replacement(s)) return {};
  if (s.compare(0, prefix_.size(), prefix_) != 0) {
    // The decoder rewrote earlier text (no supported decoder does); restart the window here.
    ids_.clear();
    prefix_.clear();
    prefix_index_ = 0;
    return {};
  }
  std::string fresh = s.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tokenizer_->decode(ids_, skip_special_tokens_);
  prefix_index_ = new_prefix_index;
  return fresh;
}

std::string StreamDecoder::flush() {
  std::string s = tokenizer_->decode(ids_, skip_special_tokens_);
  std::string rest;
  if (s.size() > prefix_.size() && s.compare(0, prefix_.size(), prefix_) == 0) rest = s.substr(prefix_.size());
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return rest;
}

}  // namespace moex
