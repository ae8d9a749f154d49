// A loaded model: weights resident on one backend, a paged KV cache, and one forward pass per
// architecture family (src/model/archs/). The runtime (src/runtime/) owns sequences, page
// allocation and sampling; it describes each step with a ForwardBatch.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/status.h"
#include "model/config/config.h"

namespace moex {

struct LoadOptions {
  // Instantiate every tensor with seeded random values instead of reading safetensors
  // (like a dummy load format): full-size shapes run without files.
  bool random_weights = false;
  uint64_t seed = 0;
};

// One engine step, described on the host. Sequences are laid out one after another:
// sequence i owns token rows [query_start[i], query_start[i+1]).
struct ForwardBatch {
  std::vector<int32_t> tokens;        // [n]
  std::vector<int32_t> positions;     // [n] position of each token in its sequence
  std::vector<int32_t> slot_mapping;  // [n] KV cache slot each token writes (page * page_size + offset)
  std::vector<int32_t> query_start;   // [num_seqs + 1]
  std::vector<int32_t> seq_lens;      // [num_seqs] tokens cached for the sequence after this step
  std::vector<int32_t> block_table;   // [num_seqs, max_pages_per_seq] row-major, unused entries 0
  int max_pages_per_seq = 0;
  std::vector<int32_t> logits_rows;   // token rows whose logits are wanted (e.g. each sequence's last)
};

struct ParamCounts {
  int64_t total = 0;              // every parameter
  int64_t active_per_token = 0;   // embedding row excluded: the weights one token's forward reads
  int64_t bytes = 0;              // weight bytes as stored
};

// Profiling mode (off by default): host-clock seconds accumulated over forward() calls, the
// backend synchronized at every region boundary so device work lands in the region that queued
// it. Regions: attention (input norm through the attention residual add), moe (router, experts,
// shared experts and their residual add), other (everything else: step upload, embedding,
// post-attention norms, dense-MLP layers, final norm, lm_head, logits copy). Their sum is the
// whole forward() time.
struct ModelProfile {
  int64_t forwards = 0;   // forward() calls accumulated
  double forward_s = 0;   // wall time of those calls
  double attention_s = 0, moe_s = 0, other_s = 0;   // over all layers and calls
  std::vector<double> layer_attention_s;  // [num_layers]
  std::vector<double> layer_moe_s;        // [num_layers] 0 for dense layers
  std::vector<double> layer_other_s;      // [num_layers] other time inside the layer loop
};

class Model {
 public:
  virtual ~Model() = default;

  // Reads <dir>/config.json and the safetensors, validates every tensor the architecture needs
  // (name, shape, dtype), and uploads weights to `backend`.
  static Expected<std::unique_ptr<Model>> load(const std::string& dir, Backend& backend,
                                               const LoadOptions& options = {});

  virtual const ModelConfig& config() const = 0;
  virtual ParamCounts param_counts() const = 0;
  // Bytes of KV cache one token needs across all layers (for memory planning).
  virtual int64_t kv_bytes_per_token() const = 0;
  // (Re)allocates the paged KV cache of every layer.
  virtual Status allocate_kv_cache(int num_pages, int page_size) = 0;
  virtual int page_size() const = 0;
  // Runs one step and returns fp32 logits [batch.logits_rows.size(), vocab] on the host.
  virtual Status forward(const ForwardBatch& batch, std::vector<float>* logits) = 0;
  // Runs one step like forward() but hands the fp32 logits [batch.logits_rows.size(), vocab],
  // still on the backend, to `consume` (e.g. a device sampler that copies back only ids) before
  // the step's scratch is freed. Not called when there are no logits rows.
  using LogitsConsumer = std::function<Status(const Tensor& logits)>;
  virtual Status forward_consume(const ForwardBatch& batch, const LogitsConsumer& consume) = 0;
  // Turning profiling on clears the accumulated profile; off leaves it readable. Off costs one
  // branch per region boundary and changes no results.
  virtual void set_profiling(bool on) { (void)on; }
  virtual ModelProfile profile() const { return {}; }
};

}  // namespace moex
