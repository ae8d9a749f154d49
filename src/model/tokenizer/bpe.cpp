// BPE model: vocab + ranked merges, applied to one pre-token at a time. The merge loop is HF's:
// a min-heap of (rank, position) over adjacent pairs, lowest rank first, leftmost on ties, with
// stale entries skipped; byte fallback and unk fusing as in HF.
#include <cstdio>
#include <algorithm>
#include <climits>
#include <queue>

#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

namespace {

constexpr size_t kCacheMaxWordBytes = 256;   // HF caches words shorter than this
constexpr size_t kCacheMaxEntries = 200000;  // then the cache is cleared and refills

struct Symbol {
  int32_t id;
  int32_t prev;  // index of the previous live symbol, -1 if none
  int32_t next;  // index of the next live symbol, -1 if none
  bool live;
};

struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

Expected<std::unique_ptr<BpeModel>> BpeModel::from_json(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + ": expected an object");
  if (j.contains("type")) {
    MOEX_ASSIGN_OR_RETURN(const std::string type, json_string(j, "type", where));
    if (type != "BPE") return unsupported(where + ".type: unsupported model '" + type + "' (only BPE)");
  } else if (!j.contains("merges")) {
    return unsupported(where + ": model without type or merges (only BPE is supported)");
  }
  if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].is_number() && j["dropout"].get<double>() > 0.0)
    return unsupported(where + ".dropout: BPE dropout is not supported");
  auto m = std::make_unique<BpeModel>();
  auto vit = j.find("vocab");
  if (vit == j.end() || !vit->is_object()) return invalid_argument(where + ".vocab: missing or not an object");
  int64_t max_id = -1;
  m->vocab_.reserve(vit->size() * 2);
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
      return invalid_argument(where + ".vocab['" + it.key() + "']: expected a non-negative integer id");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    m->vocab_[it.key()] = id;
    max_id = std::max<int64_t>(max_id, id);
  }
  m->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  m->has_id_.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [token, id] : m->vocab_) {
    m->id_to_token_[id] = token;
    m->has_id_[id] = 1;
  }

  auto opt_string = [&](const char* key, std::string* out) -> Status {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return Status::ok();
    if (!it->is_string()) return invalid_argument(where + "." + key + ": expected a string or null");
    *out = it->get<std::string>();
    return Status::ok();
  };
  std::string unk;
  MOEX_RETURN_IF_ERROR(opt_string("unk_token", &unk));
  MOEX_RETURN_IF_ERROR(opt_string("continuing_subword_prefix", &m->continuing_subword_prefix_));
  MOEX_RETURN_IF_ERROR(opt_string("end_of_word_suffix", &m->end_of_word_suffix_));
  if (!unk.empty()) {
    auto it = m->vocab_.find(unk);
    if (it == m->vocab_.end()) return invalid_argument(where + ".unk_token: '" + unk + "' is not in the vocab");
    m->unk_id_ = it->second;
  }
  MOEX_ASSIGN_OR_RETURN(m->fuse_unk_, json_bool(j, "fuse_unk", false, where));
  MOEX_ASSIGN_OR_RETURN(m->byte_fallback_, json_bool(j, "byte_fallback", false, where));
  MOEX_ASSIGN_OR_RETURN(m->ignore_merges_, json_bool(j, "ignore_merges", false, where));
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = m->vocab_.find(name);
    m->byte_token_[b] = it == m->vocab_.end() ? -1 : it->second;
  }

  MOEX_ASSIGN_OR_RETURN(const Json* merges, json_array(j, "merges", where));
  m->merges_.reserve(merges->size() * 2);
  const size_t prefix_len = m->continuing_subword_prefix_.size();
  for (size_t i = 0; i < merges->size(); ++i) {
    const Json& e = (*merges)[i];
    const std::string at = where + ".merges[" + std::to_string(i) + "]";
    std::string a, b;
    if (e.is_string()) {  // legacy "a b"
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        return invalid_argument(at + ": expected \"left right\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      return invalid_argument(at + ": expected \"left right\" or [left, right]");
    }
    auto ia = m->vocab_.find(a), ib = m->vocab_.find(b);
    if (ia == m->vocab_.end() || ib == m->vocab_.end())
      return invalid_argument(at + ": '" + (ia == m->vocab_.end() ? a : b) + "' is not in the vocab");
    const std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
    auto im = m->vocab_.find(merged);
    if (im == m->vocab_.end()) return invalid_argument(at + ": merged token '" + merged + "' is not in the vocab");
    const uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
    m->merges_[key] = MergeInfo{static_cast<uint32_t>(i), im->second};  // a later duplicate wins, as in HF
  }
  return m;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= has_id_.size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::MergeInfo* BpeModel::find_merge(int32_t a, int32_t b) const {
  auto it = merges_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::tokenize(const std::string& word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() < kCacheMaxWordBytes) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (word.size() < kCacheMaxWordBytes) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(word, std::move(ids));
  }
}

void BpeModel::merge_word(const std::string& word, std::vector<int32_t>& out) const {
  // 1. One symbol per character (with prefix/suffix), byte fallback or unk otherwise.
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };
  int32_t pending_unk = -1;  // an unk not yet added (fused over runs)
  std::string s;
  for (size_t i = 0; i < word.size();) {
    char32_t cp;
    const size_t len = utf8_decode(word, i, &cp);
    s.assign(word, i, len);
    if (i > 0 && !continuing_subword_prefix_.empty()) s.insert(0, continuing_subword_prefix_);
    if (i + len == word.size()) s += end_of_word_suffix_;
    i += len;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : s) all = all && byte_token_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // HF does not flush a pending unk here: it is added after these bytes.
        for (char c : s) add(byte_token_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk >= 0 && !fuse_unk_) add(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) add(pending_unk);

  // 2. Merge by rank.
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeInfo* mi = find_merge(symbols[i].id, symbols[i + 1].id))
      queue.push(Candidate{mi->rank, static_cast<int32_t>(i), mi->new_id});
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.live || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const MergeInfo* mi = find_merge(left.id, right.id);
    if (mi == nullptr || mi->new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    right.live = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const MergeInfo* p = find_merge(symbols[left.prev].id, left.id))
        queue.push(Candidate{p->rank, left.prev, p->new_id});
    }
    if (left.next >= 0) {
      if (const MergeInfo* n = find_merge(left.id, symbols[left.next].id))
        queue.push(Candidate{n->rank, top.pos, n->new_id});
    }
  }
  for (const Symbol& sym : symbols)
    if (sym.live) out.push_back(sym.id);
}

}  // namespace moex::tokenizer_detail
