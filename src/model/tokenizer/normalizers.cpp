// Normalizers found in the tokenizers moex runs: NFC/NFD/NFKC/NFKD, Sequence, Prepend, Replace.
#include "model/tokenizer/tokenizer_internal.h"

namespace moex::tokenizer_detail {

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormForm form) : form_(form) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, form_); }

 private:
  NormForm form_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string& s) const override {
    for (const auto& step : steps_) step->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix_);  // HF leaves an empty string empty
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Regex pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& s) const override { s = regex_replace(pattern_, s, content_); }

 private:
  Regex pattern_;
  std::string content_;
};

}  // namespace

Expected<std::unique_ptr<Normalizer>> make_normalizer(const Json& j, const std::string& where) {
  if (!j.is_object()) return invalid_argument(where + ": expected an object");
  MOEX_ASSIGN_OR_RETURN(const std::string type, json_string(j, "type", where));
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNfc));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNfd));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNfkc));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNfkd));
  if (type == "Sequence") {
    MOEX_ASSIGN_OR_RETURN(const Json* list, json_array(j, "normalizers", where));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      MOEX_ASSIGN_OR_RETURN(auto step, make_normalizer((*list)[i], where + ".normalizers[" + std::to_string(i) + "]"));
      steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Prepend") {
    MOEX_ASSIGN_OR_RETURN(std::string prefix, json_string(j, "prepend", where));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prefix)));
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return invalid_argument(where + ".pattern: missing");
    MOEX_ASSIGN_OR_RETURN(Regex pattern, pattern_from_json(j["pattern"], where + ".pattern"));
    MOEX_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", where));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(pattern), std::move(content)));
  }
  return unsupported(where + ".type: unsupported normalizer '" + type + "'");
}

}  // namespace moex::tokenizer_detail
