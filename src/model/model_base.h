// Machinery shared by the forward passes of every family: weight loading (from safetensors or
// seeded random values), step descriptors on the device, per-step scratch tensors, and the MLP /
// MoE blocks that are the same op sequence in all three families. The attention and the layer
// loop live in src/model/archs/<family>.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"
#include "model/weights/safetensors.h"

namespace moex {

// Where weights come from: a checkpoint (validated shape, stored dtype kept), or seeded random
// values (std 0.02 like HF's init, norms 1) in the dtype config.json declares.
class WeightLoader {
 public:
  WeightLoader(Backend& backend, const ModelConfig& config, const SafetensorsCheckpoint* ckpt, uint64_t seed);

  // A 2-D or 1-D weight uploaded as stored. `is_norm`: random init gives ones.
  Expected<Tensor> load(const std::string& name, std::vector<int64_t> shape, bool is_norm = false);
  // An f32 copy of a 1-D tensor (e.g. e_score_correction_bias); random init gives 0.1 N-ish values.
  Expected<Tensor> load_f32(const std::string& name, std::vector<int64_t> shape);
  // Rows of several tensors stacked into one: e.g. gate [I, H] then up [I, H] -> [2I, H].
  Expected<Tensor> load_stacked(const std::vector<std::string>& names, const std::vector<int64_t>& part_shape);
  // 2-D tensors of different row counts and the same columns, rows concatenated in order:
  // e.g. q [Q, H], k [K, H], v [K, H] -> [Q + 2K, H] (one projection GEMM instead of three).
  Expected<Tensor> load_concat(const std::vector<std::string>& names, const std::vector<int64_t>& rows, int64_t cols);
  // Host fp32 copy of a tensor (for precomputation such as MLA absorption).
  Expected<std::vector<float>> read_f32(const std::string& name, const std::vector<int64_t>& shape);
  // Uploads host bytes as a new device tensor. `is_weight`: counted in stored_bytes (false for
  // derived tables such as RoPE frequencies).
  Expected<Tensor> upload(const void* host, DType dtype, std::vector<int64_t> shape, bool is_weight = true);

  // dtype a tensor is uploaded in: as stored in the checkpoint, else the config's dtype.
  DType weight_dtype_for(const std::string& name) const;
  // dtype a weight stored as `stored` is kept in on this backend.
  DType storage_dtype(DType stored) const;
  std::vector<Buffer>& buffers() { return buffers_; }
  int64_t stored_bytes() const { return stored_bytes_; }

 private:
  // Host bytes of one tensor in weight_dtype_ (checkpoint) or freshly generated (random).
  Status read_host(const std::string& name, const std::vector<int64_t>& shape, bool is_norm,
                   std::vector<uint8_t>* out, DType* dtype);
  // Random init of a non-norm tensor on the backend itself (no host copy): dst [n] in dtype,
  // the same values read_host generates.
  Status fill_random(const std::string& name, void* dst, DType dtype, int64_t n);
  // Keeps `buf` alive as a tensor of `shape`; `is_weight`: its bytes count in stored_bytes.
  Tensor keep(Buffer buf, DType dtype, const std::vector<int64_t>& shape, bool is_weight = true);

  Backend& backend_;
  const ModelConfig& config_;
  const SafetensorsCheckpoint* ckpt_;  // null: random weights
  uint64_t seed_;
  DType weight_dtype_ = DType::kF32;
  std::vector<Buffer> buffers_;
  int64_t stored_bytes_ = 0;
};

// Tensors allocated for one step; freed when the step ends.
class Workspace {
 public:
  explicit Workspace(Backend& backend) : backend_(backend) {}
  Expected<Tensor> make(DType dtype, std::initializer_list<int64_t> shape);
  // From now on make() hands out the buffers it made so far again, in the same order (a request
  // of another size is an error): a step replayed from a captured graph finds its tensors at
  // the addresses the graph recorded.
  void rewind() {
    replaying_ = true;
    next_ = 0;
  }
  int64_t bytes() const { return bytes_; }  // allocated so far

 private:
  Backend& backend_;
  std::vector<Buffer> buffers_;
  int64_t bytes_ = 0;
  bool replaying_ = false;
  size_t next_ = 0;
};

// A ForwardBatch uploaded to the device.
struct StepInputs {
  int64_t num_tokens = 0;
  Tensor tokens;        // [n] i32
  Tensor positions;     // [n] i32
  Tensor slot_mapping;  // [n] i32
  Tensor logits_rows;   // [r] i32
  ops::PagedSeqs seqs;  // block_table [s, max_pages], seq_lens [s], query_start [s + 1]
};

// Dense SwiGLU MLP; also DeepSeek's shared experts.
struct MlpWeights {
  Tensor w13;  // [2 * inter, hidden]: gate rows then up rows
  Tensor w2;   // [hidden, inter]
};

struct MoeWeights {
  Tensor router;  // [E, hidden]
  Tensor bias;    // [E] f32 e_score_correction_bias (DeepSeek-V3), else empty
  Tensor w13;     // [E, 2 * inter, hidden]
  Tensor w2;      // [E, hidden, inter]
  MlpWeights shared;  // empty w13 when the family has none
};

// False when the environment sets MOEX_FUSED_SMALL_OPS=0 (see ModelBase::fuse_small_ops_).
bool fused_small_ops_from_env();
// Whether decode steps replay captured graphs (ModelBase::forward_graph): MOEX_CUDA_GRAPHS=0
// turns them off, =1 on (on the CPU too, where each shape runs eagerly on its rewound
// workspace: the test of that path); unset, they are on for a CUDA backend. Read when a model
// is built.
bool step_graphs_wanted(DeviceType device);

// Parts of Model every family shares. A family implements load_layers, the KV cache layout and
// run_layers (the per-layer forward pass).
class ModelBase : public Model {
 public:
  ModelBase(Backend& backend, ModelConfig config)
      : backend_(backend), config_(std::move(config)), use_step_graphs_(step_graphs_wanted(backend.device())) {}

  Status load_weights(const SafetensorsCheckpoint* ckpt, uint64_t seed);

  const ModelConfig& config() const override { return config_; }
  ParamCounts param_counts() const override { return counts_; }
  int page_size() const override { return page_size_; }
  Status forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  Status forward_consume(const ForwardBatch& batch, const LogitsConsumer& consume) override;
  void set_profiling(bool on) override;
  ModelProfile profile() const override { return profile_; }

 private:
  // embedding -> run_layers -> final norm -> lm_head of the uploaded step; returns the logits
  // [rows, vocab] f32 (empty when rows is 0). No host synchronisation, no other host input than
  // the shapes: this is what a decode graph captures.
  Expected<Tensor> forward_body(const StepInputs& step, Workspace& ws, int64_t rows);
  // A decode step (one query row per sequence) through the graph of its shape: the first step of
  // a shape runs eagerly and records its workspace, the second is captured, later ones replay.
  // Where the backend cannot capture, the shape keeps running eagerly on its workspace.
  Status forward_graph(const ForwardBatch& batch, const LogitsConsumer& consume);
  struct StepGraphEntry {
    explicit StepGraphEntry(Backend& b) : ws(b) {}
    int64_t tokens = 0, seqs = 0, max_pages = 0, rows = 0;  // the key
    Workspace ws;
    Tensor out;                         // [rows, vocab] f32 inside ws
    std::unique_ptr<StepGraph> graph;   // set from the second step of the shape on
    uint64_t generation = 0;            // backend capture_generation() when graph was captured
    int refusals = 0;                   // captures refused; eager for good after two
    bool recorded = false, eager_only = false;
  };
  // Keeps at most kMaxStepGraphs shapes and kStepGraphBytes of their workspaces (the oldest go).
  static constexpr size_t kMaxStepGraphs = 32;
  static constexpr int64_t kStepGraphBytes = int64_t(4) << 30;
  std::vector<std::unique_ptr<StepGraphEntry>> step_graphs_;  // most recent last

 protected:
  virtual Status load_layers(WeightLoader& loader) = 0;
  // hidden [n, hidden] in: embeddings; out: the last layer's residual stream.
  virtual Status run_layers(const StepInputs& step, Workspace& ws, const Tensor& hidden) = 0;
  virtual bool kv_cache_ready() const = 0;

  // Blocks shared by the families: y = block(x), x [n, hidden] -> y [n, hidden]. The caller adds
  // y to the residual stream (one add, as HF does, so rounding matches on bf16 backends).
  Expected<Tensor> mlp_block(const MlpWeights& w, const Tensor& x, Workspace& ws);
  // Router (f32 logits) -> route -> fused_moe, plus the shared experts when present.
  Expected<Tensor> moe_block(const MoeWeights& w, const Tensor& x, Workspace& ws);
  // The feed-forward half of a layer: hidden += attn_out; x_norm = rms_norm(hidden, post_attn_norm);
  // returns ffn(x_norm) [n, hidden], ffn being moe_block (is_moe) or mlp_block. The caller adds it
  // to hidden later, fused with the next norm: norm_residual() at the next layer's input norm,
  // add_residual() after the last layer. x_norm [n, hidden] is scratch. Profiled per layer.
  Expected<Tensor> ffn_branch(const Tensor& post_attn_norm, bool is_moe, const MoeWeights& moe, const MlpWeights& mlp,
                              const Tensor& hidden, const Tensor& attn_out, const Tensor& x_norm, Workspace& ws,
                              int64_t layer);
  // hidden += branch (skipped when branch is empty), then x_norm = rms_norm(hidden, weight): one
  // add_rms_norm launch when small ops are fused, else add then rms_norm (the same values).
  Status norm_residual(const Tensor& hidden, const Tensor& branch, const Tensor& weight, const Tensor& x_norm);
  // hidden += branch (skipped when branch is empty): the add left pending after the last layer.
  Status add_residual(const Tensor& hidden, const Tensor& branch);
  Expected<MlpWeights> load_mlp(WeightLoader& loader, const std::string& prefix, int64_t inter);
  // Routed experts `<prefix>.experts.E.{gate,up,down}<suffix>`, packed into w13 / w2.
  Expected<MoeWeights> load_moe(WeightLoader& loader, const std::string& prefix, const std::string& gate_name,
                                const std::string& up_name, const std::string& down_name);

  // A zero-filled KV cache tensor in the activation dtype, owned by the model.
  Expected<Tensor> make_cache(std::initializer_list<int64_t> shape);
  // Frees the previous cache and records the new geometry.
  void reset_cache(int num_pages, int page_size);

  // Profiling (see ModelProfile): attributes the time since the previous boundary to `region` of
  // layer `layer` (-1: outside the layer loop). A no-op returning ok while profiling is off.
  enum class ProfileRegion { kAttention, kMoe, kOther };
  Status lap(ProfileRegion region, int64_t layer) {
    if (!profiling_) return Status::ok();
    return lap_slow(region, layer);
  }

  // Adds a weight to the parameter counts. `active`: read by every token's forward.
  void count(const Tensor& t, bool active);
  void count_experts(const MoeWeights& w);

  Backend& backend_;
  ModelConfig config_;
  // Small ops run as the fused ops of ops/fused.h (fewer launches, the same values on every
  // backend); MOEX_FUSED_SMALL_OPS=0 in the environment at construction selects the separate ops.
  bool fuse_small_ops_ = fused_small_ops_from_env();
  bool use_step_graphs_ = false;  // step_graphs_wanted() at construction
  std::vector<Buffer> weight_buffers_;
  std::vector<Buffer> cache_buffers_;
  ParamCounts counts_;
  int page_size_ = 0;
  int num_pages_ = 0;
  ops::RouteParams routing_;  // the family's routing settings; tensors filled per call

  Tensor embed_;       // [vocab, hidden]
  Tensor final_norm_;  // [hidden]
  Tensor lm_head_;     // [vocab, hidden] (the embedding when tied)

 private:
  Status lap_slow(ProfileRegion region, int64_t layer);
  bool profiling_ = false;
  ModelProfile profile_;
  double last_lap_s_ = 0;  // steady-clock seconds of the previous boundary

  Status upload_step(const ForwardBatch& batch, Workspace& ws, StepInputs* step);
};

// Views used by the forward passes.
Tensor with_device(Tensor t, DeviceType device);
// Rows [n, cols] of a [n, row_stride] tensor starting at column `col`.
Tensor columns(const Tensor& t, int64_t col, int64_t cols);
// A strided 3-D view: [d0, d1, d2] with explicit element strides.
Tensor view3(const Tensor& base, int64_t offset, int64_t d0, int64_t s0, int64_t d1, int64_t s1, int64_t d2);

}  // namespace moex
