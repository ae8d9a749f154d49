// The engine: a model on a backend, its tokenizer, a page pool, and the step loop
// (schedule -> run -> sample). Sequences are plain token lists plus the pages they own.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "runtime/page_pool.h"
#include "runtime/sampler.h"

namespace moex {

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";    // "cpu" (fp32 reference), "cpu-bf16" (bf16 activations) or "cuda"
  int threads = 0;               // CPU backend threads; 0 = OpenMP default
  bool random_weights = false;   // config.json only; weights seeded random
  uint64_t weight_seed = 0;
  int page_size = 0;             // 0 = backend default (16 on CPU, 64 on CUDA)
  int64_t max_context = 4096;    // KV capacity in tokens over all live sequences
  int64_t max_prefill_chunk = 0; // > 0: split long prompts into chunks of this many tokens
};

struct Sequence {
  std::vector<int32_t> tokens;  // prompt + generated
  std::vector<int32_t> pages;   // KV pages owned
  int64_t cached = 0;           // tokens already in the KV cache
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  std::vector<double> step_seconds;  // one per decode step
  bool stopped_at_eos = false;
};

class Engine {
 public:
  static Expected<std::unique_ptr<Engine>> create(const EngineOptions& options);
  ~Engine();

  Model& model() { return *model_; }
  Backend& backend() { return *backend_; }
  const Tokenizer* tokenizer() const { return tokenizer_ ? &*tokenizer_ : nullptr; }
  double load_seconds() const { return load_seconds_; }
  const std::vector<int64_t>& eos_ids() const { return eos_ids_; }

  // Runs the tokens of each sequence that are not cached yet (prefill or decode, mixed) and
  // returns fp32 logits of each sequence's last token, [seqs.size(), vocab] row-major.
  Status step(const std::vector<Sequence*>& seqs, std::vector<float>* last_logits);
  // Runs one step like step() and samples each sequence's next token with its sampler
  // (samplers[i] for seqs[i]): on the device when the backend is not the CPU (one
  // Backend::sample over all rows, B ids copied back instead of B x vocab logits), else on the
  // host from the fp32 logits. Either way a non-greedy row takes exactly one draw from its
  // sampler's stream, so a seed gives the same tokens on both up to boundary rounding.
  Status step_sample(const std::vector<Sequence*>& seqs, const std::vector<Sampler*>& samplers,
                     std::vector<int32_t>* next);
  // Runs `seq`'s uncached tokens and returns logits of every one of them, [new_tokens, vocab].
  Status step_all_logits(Sequence* seq, std::vector<float>* logits);
  void release(Sequence* seq) { pages_->release(&seq->pages); seq->cached = 0; }

  // Batch-1 generation with streaming: `on_token` sees each new id as it is sampled.
  Expected<GenerateStats> generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                   const std::function<void(int32_t)>& on_token);

  // Mean negative log-likelihood (nats) of `tokens` scored in non-overlapping windows of
  // `window` tokens, each window a fresh sequence (its first token is context only).
  Expected<double> mean_nll(const std::vector<int32_t>& tokens, int64_t window, int64_t* scored = nullptr);

 private:
  Engine() = default;
  Status build_batch(const std::vector<Sequence*>& seqs, bool all_logits, ForwardBatch* batch);
  // The device half of step_sample: samples the [rows, vocab] logits on the backend.
  Status sample_on_device(const Tensor& logits, const std::vector<Sampler*>& samplers, std::vector<int32_t>* next);

  EngineOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  std::optional<Tokenizer> tokenizer_;
  std::unique_ptr<PagePool> pages_;
  std::vector<int64_t> eos_ids_;
  double load_seconds_ = 0;
};

}  // namespace moex
