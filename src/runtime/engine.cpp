#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

namespace moex {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Engine::~Engine() = default;

Expected<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  if (options.device == "cpu") {
    engine->backend_ = make_cpu_backend(options.threads);
  } else if (options.device == "cpu-bf16") {
    engine->backend_ = make_cpu_backend(options.threads, DType::kBF16);
  } else if (options.device == "cuda") {
    MOEX_ASSIGN_OR_RETURN(engine->backend_, make_cuda_backend(0));
  } else {
    return invalid_argument("unknown device '" + options.device + "' (expected cpu, cpu-bf16 or cuda)");
  }
  if (options.max_context <= 0) return invalid_argument("max_context must be positive");

  LoadOptions load;
  load.random_weights = options.random_weights;
  load.seed = options.weight_seed;
  MOEX_ASSIGN_OR_RETURN(engine->model_, Model::load(options.model_dir, *engine->backend_, load));

  const std::string tokenizer_path = (std::filesystem::path(options.model_dir) / "tokenizer.json").string();
  if (std::filesystem::exists(tokenizer_path)) {
    MOEX_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load(tokenizer_path));
    engine->tokenizer_.emplace(std::move(tok));
  }
  engine->eos_ids_ = engine->model_->config().eos_token_ids;

  const int page_size = options.page_size > 0 ? options.page_size : (options.device == "cuda" ? 64 : 16);
  const int num_pages = int((options.max_context + page_size - 1) / page_size);
  MOEX_RETURN_IF_ERROR(engine->model_->allocate_kv_cache(num_pages, page_size));
  engine->pages_ = std::make_unique<PagePool>(num_pages, page_size);
  engine->load_seconds_ = seconds_since(t0);
  return engine;
}

Status Engine::build_batch(const std::vector<Sequence*>& seqs, bool all_logits, ForwardBatch* batch) {
  const int page_size = pages_->page_size();
  batch->query_start.assign(1, 0);
  int max_pages = 1;
  for (Sequence* seq : seqs) {
    const int64_t total = int64_t(seq->tokens.size());
    if (total <= seq->cached) return invalid_argument("engine step: a sequence has no new tokens");
    MOEX_RETURN_IF_ERROR(pages_->reserve(&seq->pages, total));
    max_pages = std::max(max_pages, int(seq->pages.size()));
    for (int64_t pos = seq->cached; pos < total; ++pos) {
      const int32_t row = int32_t(batch->tokens.size());
      batch->tokens.push_back(seq->tokens[size_t(pos)]);
      batch->positions.push_back(int32_t(pos));
      batch->slot_mapping.push_back(seq->pages[size_t(pos / page_size)] * page_size + int32_t(pos % page_size));
      if (all_logits || pos == total - 1) batch->logits_rows.push_back(row);
    }
    batch->query_start.push_back(int32_t(batch->tokens.size()));
    batch->seq_lens.push_back(int32_t(total));
  }
  batch->max_pages_per_seq = max_pages;
  batch->block_table.assign(seqs.size() * size_t(max_pages), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::copy(seqs[i]->pages.begin(), seqs[i]->pages.end(), batch->block_table.begin() + int64_t(i) * max_pages);
  }
  return Status::ok();
}

Status Engine::step(const std::vector<Sequence*>& seqs, std::vector<float>* last_logits) {
  ForwardBatch batch;
  MOEX_RETURN_IF_ERROR(build_batch(seqs, /*all_logits=*/false, &batch));
  MOEX_RETURN_IF_ERROR(model_->forward(batch, last_logits));
  for (Sequence* seq : seqs) seq->cached = int64_t(seq->tokens.size());
  return Status::ok();
}

Status Engine::step_all_logits(Sequence* seq, std::vector<float>* logits) {
  ForwardBatch batch;
  MOEX_RETURN_IF_ERROR(build_batch({seq}, /*all_logits=*/true, &batch));
  MOEX_RETURN_IF_ERROR(model_->forward(batch, logits));
  seq->cached = int64_t(seq->tokens.size());
  return Status::ok();
}

Expected<GenerateStats> Engine::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                         const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) return invalid_argument("generate: the prompt has no tokens");
  const int64_t vocab = model_->config().vocab_size;
  for (int32_t id : prompt) {
    if (id < 0 || id >= vocab) return invalid_argument("generate: prompt token id " + std::to_string(id) + " outside the vocabulary");
  }
  GenerateStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  Sampler sampler(options.sampling);
  Sequence seq;
  std::vector<float> logits;
  Status status;

  // Prefill, optionally in chunks: only the last chunk's logits matter.
  auto t0 = std::chrono::steady_clock::now();
  const int64_t chunk = options_.max_prefill_chunk > 0 ? options_.max_prefill_chunk : int64_t(prompt.size());
  for (int64_t begin = 0; begin < int64_t(prompt.size()) && status.is_ok(); begin += chunk) {
    const int64_t end = std::min<int64_t>(int64_t(prompt.size()), begin + chunk);
    seq.tokens.insert(seq.tokens.end(), prompt.begin() + begin, prompt.begin() + end);
    status = step({&seq}, &logits);
  }
  stats.prefill_seconds = seconds_since(t0);

  auto t1 = std::chrono::steady_clock::now();
  while (status.is_ok() && stats.generated_tokens < options.max_new_tokens) {
    const int32_t next = sampler.sample(logits.data(), vocab);
    ++stats.generated_tokens;
    if (on_token) on_token(next);
    if (options.stop_at_eos && std::find(eos_ids_.begin(), eos_ids_.end(), next) != eos_ids_.end()) {
      stats.stopped_at_eos = true;
      break;
    }
    if (stats.generated_tokens == options.max_new_tokens) break;
    seq.tokens.push_back(next);
    const auto ts = std::chrono::steady_clock::now();
    status = step({&seq}, &logits);
    stats.step_seconds.push_back(seconds_since(ts));
  }
  stats.decode_seconds = seconds_since(t1);
  release(&seq);
  if (!status.is_ok()) return status;
  return stats;
}

Expected<double> Engine::mean_nll(const std::vector<int32_t>& tokens, int64_t window, int64_t* scored) {
  if (window < 2) return invalid_argument("perplexity window must be at least 2 tokens");
  if (tokens.size() < 2) return invalid_argument("perplexity needs at least 2 tokens of text");
  const int64_t vocab = model_->config().vocab_size;
  double total_nll = 0.0;
  int64_t count = 0;
  std::vector<float> logits;
  for (size_t begin = 0; begin + 1 < tokens.size(); begin += size_t(window)) {
    const size_t end = std::min(tokens.size(), begin + size_t(window));
    if (end - begin < 2) break;
    Sequence seq;
    seq.tokens.assign(tokens.begin() + int64_t(begin), tokens.begin() + int64_t(end));
    Status status = step_all_logits(&seq, &logits);
    release(&seq);
    MOEX_RETURN_IF_ERROR(status);
    // Row i predicts token i + 1 (log-softmax in fp64).
    for (size_t i = 0; i + 1 < seq.tokens.size(); ++i) {
      const float* row = logits.data() + i * size_t(vocab);
      const float max_logit = *std::max_element(row, row + vocab);
      double sum = 0.0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - double(max_logit));
      total_nll += std::log(sum) + double(max_logit) - double(row[seq.tokens[i + 1]]);
      ++count;
    }
  }
  if (scored) *scored = count;
  return total_nll / double(count);
}

}  // namespace moex
