// A Hugging Face `tokenizer.json` reader and tokenizer that reproduces the `tokenizers` library's
// ids and strings exactly for the families moex runs:
//   - byte-level BPE (GPT-2 byte map) behind Split / ByteLevel pre-tokenizers (Qwen2/3,
//     DeepSeek-V3, GPT-2-style tokenizers trained with `tokenizers`);
//   - Llama/Mistral-style BPE with byte fallback (Mixtral): Prepend+Replace normalizers or a
//     Metaspace pre-tokenizer, decoders Replace/ByteFallback/Fuse/Strip/Metaspace.
// Pipeline (as HF): added tokens are cut out of the raw text, the rest is normalized, added tokens
// marked `normalized` are cut out of that, then pre-tokenized, then BPE'd word by word (cached),
// then the post-processor adds BOS etc. when asked.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace moex {

namespace tokenizer_detail {
struct TokenizerImpl;
}

class StreamDecoder;

class Tokenizer {
 public:
  // Reads and validates the file; unknown model/normalizer/pre-tokenizer/decoder/post-processor
  // types and malformed fields are errors naming the field.
  static Expected<Tokenizer> load(const std::string& tokenizer_json_path);
  // Same, from the JSON text (`origin` names it in error messages).
  static Expected<Tokenizer> from_json(std::string_view json_text, const std::string& origin);

  // Text that is not valid UTF-8 is first made valid (each bad sequence -> U+FFFD).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const;
  // Unknown ids are skipped (as HF does); invalid UTF-8 produced by byte tokens becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  // 1 + the largest id of the model vocabulary and the added tokens (rows an embedding needs).
  int64_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

 private:
  friend class StreamDecoder;
  const tokenizer_detail::TokenizerImpl& impl() const { return *impl_; }
  explicit Tokenizer(std::shared_ptr<const tokenizer_detail::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const tokenizer_detail::TokenizerImpl> impl_;  // immutable, shared by copies
};

// Incremental detokenizer for generation. push(id) returns the text that became complete with
// this id: never a partial UTF-8 character, never text a later id could still change. The
// concatenation of everything push() and flush() return equals tokenizer.decode(all ids).
// Keeps only a short window of ids (the last emitted chunk plus the pending ones).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}
  std::string push(int32_t id);
  // Whatever is still pending (an unfinished UTF-8 sequence decodes to U+FFFD as in decode()).
  std::string flush();

 private:
  const Tokenizer* tokenizer_;  // not owned; must outlive the decoder
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;    // window: [0, prefix_index_) already emitted, the rest pending
  std::string prefix_;          // decode(ids_[0, prefix_index_))
  size_t prefix_index_ = 0;
};

}  // namespace moex
