#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
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

Status Engine::step_sample(const std::vector<Sequence*>& seqs, const std::vector<Sampler*>& samplers,
                           std::vector<int32_t>* next) {
  if (samplers.size() != seqs.size()) return invalid_argument("engine step_sample: one sampler per sequence is needed");
  for (const Sampler* s : samplers) MOEX_RETURN_IF_ERROR(validate(s->params()));
  next->clear();
  if (backend_->device() == DeviceType::kCpu) {
    std::vector<float> logits;  // [seqs, vocab]
    MOEX_RETURN_IF_ERROR(step(seqs, &logits));
    const int64_t vocab = model_->config().vocab_size;
    for (size_t i = 0; i < seqs.size(); ++i) next->push_back(samplers[i]->sample(logits.data() + i * size_t(vocab), vocab));
    return Status::ok();
  }
  ForwardBatch batch;
  MOEX_RETURN_IF_ERROR(build_batch(seqs, /*all_logits=*/false, &batch));
  MOEX_RETURN_IF_ERROR(model_->forward_consume(
      batch, [&](const Tensor& logits) { return sample_on_device(logits, samplers, next); }));
  for (Sequence* seq : seqs) seq->cached = int64_t(seq->tokens.size());
  return Status::ok();
}

Status Engine::sample_on_device(const Tensor& logits, const std::vector<Sampler*>& samplers,
                                std::vector<int32_t>* next) {
  const int64_t rows = logits.shape[0];
  if (rows != int64_t(samplers.size())) return internal_error("engine sample_on_device: logits rows != samplers");
  // One upload of the per-row parameters: [rows] i64 draws, f32 temperature, i32 top_k, f32 top_p.
  const size_t n = size_t(rows);
  std::vector<uint64_t> draws(n, 0);
  std::vector<float> temperature(n), top_p(n);
  std::vector<int32_t> top_k(n);
  for (int64_t b = 0; b < rows; ++b) {
    Sampler& s = *samplers[size_t(b)];
    temperature[size_t(b)] = s.params().temperature;
    top_k[size_t(b)] = s.params().top_k;
    top_p[size_t(b)] = s.params().top_p;
    if (!s.greedy()) draws[size_t(b)] = s.next_draw();  // the draw Sampler::sample would take
  }
  std::vector<uint8_t> host(n * 24);
  std::memcpy(host.data(), draws.data(), n * 8);
  std::memcpy(host.data() + n * 8, temperature.data(), n * 4);
  std::memcpy(host.data() + n * 12, top_k.data(), n * 4);
  std::memcpy(host.data() + n * 16, top_p.data(), n * 4);
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_->alloc(host.size()));  // the params, then [rows] i32 ids
  MOEX_RETURN_IF_ERROR(backend_->copy_from_host(buf.data(), host.data(), n * 20));
  char* base = static_cast<char*>(buf.data());
  const DeviceType dev = backend_->device();
  ops::SampleParams p;
  p.logits = logits;
  p.uniform = Tensor::make(base, DType::kI64, {rows}, dev);
  p.temperature = Tensor::make(base + n * 8, DType::kF32, {rows}, dev);
  p.top_k = Tensor::make(base + n * 12, DType::kI32, {rows}, dev);
  p.top_p = Tensor::make(base + n * 16, DType::kF32, {rows}, dev);
  p.out_ids = Tensor::make(base + n * 20, DType::kI32, {rows}, dev);
  MOEX_RETURN_IF_ERROR(backend_->sample(p));
  next->resize(n);
  MOEX_RETURN_IF_ERROR(backend_->copy_to_host(next->data(), p.out_ids.data, n * sizeof(int32_t)));
  for (int64_t b = 0; b < rows; ++b) {
    if ((*next)[size_t(b)] < 0) return internal_error("engine: the device sampler rejected row " + std::to_string(b));
  }
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
  MOEX_RETURN_IF_ERROR(validate(options.sampling));
  GenerateStats stats;
  stats.prompt_tokens = int64_t(prompt.size());
  Sampler sampler(options.sampling);
  Sequence seq;
  std::vector<float> logits;
  std::vector<int32_t> next;  // [1] the sampled id of each step
  Status status;

  // Prefill, optionally in chunks: only the last chunk is sampled.
  auto t0 = std::chrono::steady_clock::now();
  const int64_t chunk = options_.max_prefill_chunk > 0 ? options_.max_prefill_chunk : int64_t(prompt.size());
  for (int64_t begin = 0; begin < int64_t(prompt.size()) && status.is_ok(); begin += chunk) {
    const int64_t end = std::min<int64_t>(int64_t(prompt.size()), begin + chunk);
    seq.tokens.insert(seq.tokens.end(), prompt.begin() + begin, prompt.begin() + end);
    status = end == int64_t(prompt.size()) ? step_sample({&seq}, {&sampler}, &next) : step({&seq}, &logits);
  }
  stats.prefill_seconds = seconds_since(t0);

  // Each decode step includes sampling its token (on the device for GPU backends).
  auto t1 = std::chrono::steady_clock::now();
  while (status.is_ok() && stats.generated_tokens < options.max_new_tokens) {
    if (next.size() != 1) {
      status = internal_error("generate: the sampler returned no token");
      break;
    }
    const int32_t id = next[0];
    ++stats.generated_tokens;
    if (on_token) on_token(id);
    if (options.stop_at_eos && std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end()) {
      stats.stopped_at_eos = true;
      break;
    }
    if (stats.generated_tokens == options.max_new_tokens) break;
    seq.tokens.push_back(id);
    const auto ts = std::chrono::steady_clock::now();
    status = step_sample({&seq}, {&sampler}, &next);
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
