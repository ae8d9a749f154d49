#include "model/model_base.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "core/random.h"

namespace moex {
namespace {
double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}


// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to hardware_concurrency
// threads; small ranges stay on the calling thread (thread start costs ~tens of us).
void parallel_chunks(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  constexpr int64_t kMinChunk = int64_t(1) << 18;
  const int64_t hw = std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency()));
  const int64_t workers = std::min<int64_t>(hw, (n + kMinChunk - 1) / kMinChunk);
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  const int64_t chunk = (n + workers - 1) / workers;
  std::vector<std::thread> threads;
  threads.reserve(size_t(workers - 1));
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t begin = w * chunk, end = std::min(n, begin + chunk);
    if (begin < end) threads.emplace_back(fn, begin, end);
  }
  fn(0, std::min(n, chunk));
  for (std::thread& t : threads) t.join();
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Uniform values with std 0.02 (HF's initializer_range): half width 0.02 * sqrt(3).
const float kRandomHalfWidth = 0.02f * std::sqrt(3.0f);

}  // namespace

Tensor with_device(Tensor t, DeviceType device) {
  t.device = device;
  return t;
}

Tensor columns(const Tensor& t, int64_t col, int64_t cols) { return t.slice(t.ndim - 1, col, col + cols); }

Tensor view3(const Tensor& base, int64_t offset, int64_t d0, int64_t s0, int64_t d1, int64_t s1, int64_t d2) {
  Tensor t = base;
  t.data = static_cast<char*>(base.data) + offset * int64_t(dtype_size(base.dtype));
  t.ndim = 3;
  t.shape[0] = d0;
  t.shape[1] = d1;
  t.shape[2] = d2;
  t.stride[0] = s0;
  t.stride[1] = s1;
  t.stride[2] = 1;
  return t;
}

// ---------------------------------------------------------------------------------------------
// WeightLoader

WeightLoader::WeightLoader(Backend& backend, const ModelConfig& config, const SafetensorsCheckpoint* ckpt,
                           uint64_t seed)
    : backend_(backend), config_(config), ckpt_(ckpt), seed_(seed) {
  if (config.torch_dtype == "bfloat16") weight_dtype_ = DType::kBF16;
  else if (config.torch_dtype == "float16") weight_dtype_ = DType::kF16;
  weight_dtype_ = storage_dtype(weight_dtype_);
}

DType WeightLoader::storage_dtype(DType stored) const {
  // A bf16 backend (the GPU) keeps weights in bf16, as vLLM's dtype=auto casts fp32
  // checkpoints to half precision; the CPU reference computes on the checkpoint's values.
  return backend_.activation_dtype() == DType::kBF16 ? DType::kBF16 : stored;
}

DType WeightLoader::weight_dtype_for(const std::string& name) const {
  if (ckpt_ != nullptr) {
    if (const TensorInfo* info = ckpt_->find(name)) return storage_dtype(info->dtype);
  }
  return weight_dtype_;
}

Status WeightLoader::read_host(const std::string& name, const std::vector<int64_t>& shape, bool is_norm,
                               std::vector<uint8_t>* out, DType* dtype) {
  const int64_t n = numel_of(shape);
  if (ckpt_ == nullptr) {
    // Uniform values with std 0.02 (HF's initializer_range), hashed from seed, name and index so
    // that any subset of tensors is reproducible on its own.
    *dtype = weight_dtype_;
    out->resize(size_t(n) * dtype_size(*dtype));
    const uint64_t base = splitmix64(seed_ ^ fnv1a(name));
    const float half_width = kRandomHalfWidth;
    const DType dt = *dtype;
    void* dst = out->data();  // [n] in dt
    // Each value depends on its index only, so any split over threads gives the same bits;
    // full-size checkpoints (30B+ values) are otherwise minutes of one core.
    parallel_chunks(n, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float v = is_norm ? 1.0f : float(uniform_element(base, uint64_t(i), half_width));
        store_from_f32(dst, dt, size_t(i), v);
      }
    });
    return Status::ok();
  }
  MOEX_ASSIGN_OR_RETURN(Tensor view, ckpt_->get(name, shape));
  if (view.dtype != DType::kF32 && view.dtype != DType::kBF16 && view.dtype != DType::kF16) {
    return unsupported("checkpoint tensor " + name + " has dtype " + std::string(dtype_name(view.dtype)) +
                       "; moex loads f32, bf16 and f16 weights");
  }
  *dtype = storage_dtype(view.dtype);
  if (*dtype == view.dtype) {
    out->resize(view.nbytes());
    std::memcpy(out->data(), view.data, view.nbytes());
    return Status::ok();
  }
  out->resize(size_t(n) * dtype_size(*dtype));
  for (size_t i = 0; i < size_t(n); ++i) store_from_f32(out->data(), *dtype, i, load_as_f32(view.data, view.dtype, i));
  return Status::ok();
}

Expected<Tensor> WeightLoader::upload(const void* host, DType dtype, std::vector<int64_t> shape, bool is_weight) {
  const size_t bytes = size_t(numel_of(shape)) * dtype_size(dtype);
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(bytes));
  MOEX_RETURN_IF_ERROR(backend_.copy_from_host(buf.data(), host, bytes));
  return keep(std::move(buf), dtype, shape, is_weight);
}

Tensor WeightLoader::keep(Buffer buf, DType dtype, const std::vector<int64_t>& shape, bool is_weight) {
  Tensor t = Tensor::make(buf.data(), dtype, shape, backend_.device());
  if (is_weight) stored_bytes_ += int64_t(buf.bytes());
  buffers_.push_back(std::move(buf));
  return t;
}

Status WeightLoader::fill_random(const std::string& name, void* dst, DType dtype, int64_t n) {
  return backend_.random_uniform({.out = Tensor::make(dst, dtype, {n}, backend_.device()),
                                  .stream = splitmix64(seed_ ^ fnv1a(name)),
                                  .half_width = kRandomHalfWidth});
}

Expected<Tensor> WeightLoader::load(const std::string& name, std::vector<int64_t> shape, bool is_norm) {
  if (ckpt_ == nullptr && !is_norm) {  // random weights: generated in place
    const size_t bytes = size_t(numel_of(shape)) * dtype_size(weight_dtype_);
    MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(bytes));
    MOEX_RETURN_IF_ERROR(fill_random(name, buf.data(), weight_dtype_, numel_of(shape)));
    return keep(std::move(buf), weight_dtype_, shape);
  }
  std::vector<uint8_t> host;
  DType dtype;
  MOEX_RETURN_IF_ERROR(read_host(name, shape, is_norm, &host, &dtype));
  return upload(host.data(), dtype, shape);
}

Expected<std::vector<float>> WeightLoader::read_f32(const std::string& name, const std::vector<int64_t>& shape) {
  std::vector<uint8_t> host;
  DType dtype;
  MOEX_RETURN_IF_ERROR(read_host(name, shape, false, &host, &dtype));
  std::vector<float> f(size_t(numel_of(shape)));
  for (size_t i = 0; i < f.size(); ++i) f[i] = load_as_f32(host.data(), dtype, i);
  return f;
}

Expected<Tensor> WeightLoader::load_f32(const std::string& name, std::vector<int64_t> shape) {
  std::vector<float> f;
  if (ckpt_ == nullptr) {
    f.resize(size_t(numel_of(shape)));
    const uint64_t base = splitmix64(seed_ ^ fnv1a(name));
    float* dst = f.data();  // [numel]
    parallel_chunks(int64_t(f.size()), [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dst[i] = 0.1f * float(int64_t(splitmix64(base + uint64_t(i)) % 2001) - 1000) / 1000.f;
      }
    });
  } else {
    MOEX_ASSIGN_OR_RETURN(f, read_f32(name, shape));
  }
  return upload(f.data(), DType::kF32, shape);
}

Expected<Tensor> WeightLoader::load_stacked(const std::vector<std::string>& names,
                                            const std::vector<int64_t>& part_shape) {
  // One device buffer; each part is read and copied into its rows so that host memory holds
  // one part at a time (a full-size expert layer is tens of GB).
  const int64_t part_numel = numel_of(part_shape);
  std::vector<int64_t> shape = part_shape;  // the parts' rows stacked
  shape[0] *= int64_t(names.size());
  if (ckpt_ == nullptr) {  // random weights: each part generated in place
    const size_t part_bytes = size_t(part_numel) * dtype_size(weight_dtype_);
    MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(part_bytes * names.size()));
    for (size_t i = 0; i < names.size(); ++i)
      MOEX_RETURN_IF_ERROR(fill_random(names[i], static_cast<char*>(buf.data()) + i * part_bytes, weight_dtype_, part_numel));
    return keep(std::move(buf), weight_dtype_, shape);
  }
  std::vector<uint8_t> host;
  DType dtype;
  MOEX_RETURN_IF_ERROR(read_host(names[0], part_shape, false, &host, &dtype));
  const size_t part_bytes = size_t(part_numel) * dtype_size(dtype);
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(part_bytes * names.size()));
  for (size_t i = 0; i < names.size(); ++i) {
    DType part_dtype = dtype;
    if (i > 0) MOEX_RETURN_IF_ERROR(read_host(names[i], part_shape, false, &host, &part_dtype));
    if (part_dtype != dtype) {
      return invalid_argument("checkpoint tensor " + names[i] + " is " + std::string(dtype_name(part_dtype)) +
                              " but " + names[0] + " is " + std::string(dtype_name(dtype)) +
                              "; tensors packed together must share a dtype");
    }
    MOEX_RETURN_IF_ERROR(backend_.copy_from_host(static_cast<char*>(buf.data()) + i * part_bytes, host.data(),
                                                 part_bytes));
  }
  return keep(std::move(buf), dtype, shape);
}

Expected<Tensor> WeightLoader::load_concat(const std::vector<std::string>& names, const std::vector<int64_t>& rows,
                                           int64_t cols) {
  if (names.empty() || names.size() != rows.size()) return invalid_argument("load_concat: one row count per tensor");
  int64_t total = 0;
  for (int64_t r : rows) total += r;
  // dtype: the first part's (random weights: the config's); other parts are converted to it
  // (separate projections of one checkpoint may be stored in different dtypes).
  const DType dtype = weight_dtype_for(names[0]);
  const size_t es = dtype_size(dtype);
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(size_t(total * cols) * es));
  char* dst = static_cast<char*>(buf.data());  // [total, cols]
  std::vector<uint8_t> host;
  for (size_t i = 0; i < names.size(); ++i) {
    const size_t bytes = size_t(rows[i] * cols) * es;
    if (ckpt_ == nullptr) {
      MOEX_RETURN_IF_ERROR(fill_random(names[i], dst, dtype, rows[i] * cols));
    } else {
      DType part_dtype;
      MOEX_RETURN_IF_ERROR(read_host(names[i], {rows[i], cols}, false, &host, &part_dtype));
      if (part_dtype != dtype) {
        std::vector<uint8_t> converted(bytes);  // [rows[i], cols] in dtype
        for (size_t j = 0; j < size_t(rows[i] * cols); ++j)
          store_from_f32(converted.data(), dtype, j, load_as_f32(host.data(), part_dtype, j));
        host.swap(converted);
      }
      MOEX_RETURN_IF_ERROR(backend_.copy_from_host(dst, host.data(), bytes));
    }
    dst += bytes;
  }
  return keep(std::move(buf), dtype, {total, cols});
}

// ---------------------------------------------------------------------------------------------
// Workspace

Expected<Tensor> Workspace::make(DType dtype, std::initializer_list<int64_t> shape) {
  std::vector<int64_t> s(shape);
  const size_t bytes = std::max<size_t>(1, size_t(numel_of(s)) * dtype_size(dtype));
  if (replaying_) {
    if (next_ >= buffers_.size() || buffers_[next_].bytes() != bytes) {
      return invalid_argument("Workspace replay: request " + std::to_string(next_) + " of " + std::to_string(bytes) +
                              " bytes does not match the recorded step");
    }
    return Tensor::make(buffers_[next_++].data(), dtype, s, backend_.device());
  }
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(bytes));
  bytes_ += int64_t(bytes);
  Tensor t = Tensor::make(buf.data(), dtype, s, backend_.device());
  buffers_.push_back(std::move(buf));
  return t;
}

// ---------------------------------------------------------------------------------------------
// ModelBase: loading

void ModelBase::count(const Tensor& t, bool active) {
  if (t.empty()) return;  // a weight the variant does not have
  counts_.total += t.numel();
  if (active) counts_.active_per_token += t.numel();
}

void ModelBase::count_experts(const MoeWeights& w) {
  const int64_t per_expert = (w.w13.numel() + w.w2.numel()) / w.w13.size(0);
  const int64_t bias = w.bias.empty() ? 0 : w.bias.numel();
  counts_.total += w.w13.numel() + w.w2.numel() + w.router.numel() + bias;
  counts_.active_per_token += per_expert * config_.num_experts_per_tok + w.router.numel() + bias;
  if (!w.shared.w13.empty()) {
    count(w.shared.w13, true);
    count(w.shared.w2, true);
  }
}

Expected<MlpWeights> ModelBase::load_mlp(WeightLoader& loader, const std::string& prefix, int64_t inter) {
  const int64_t h = config_.hidden_size;
  MlpWeights w;
  MOEX_ASSIGN_OR_RETURN(w.w13, loader.load_stacked({prefix + ".gate_proj.weight", prefix + ".up_proj.weight"},
                                                   {inter, h}));
  MOEX_ASSIGN_OR_RETURN(w.w2, loader.load(prefix + ".down_proj.weight", {h, inter}));
  return w;
}

Expected<MoeWeights> ModelBase::load_moe(WeightLoader& loader, const std::string& prefix,
                                         const std::string& gate_name, const std::string& up_name,
                                         const std::string& down_name) {
  const int64_t e_count = config_.num_experts, h = config_.hidden_size, inter = config_.moe_intermediate_size;
  MoeWeights w;
  MOEX_ASSIGN_OR_RETURN(w.router, loader.load(prefix + ".gate.weight", {e_count, h}));
  std::vector<std::string> gate_up, down;
  for (int64_t e = 0; e < e_count; ++e) {
    const std::string ep = prefix + ".experts." + std::to_string(e) + ".";
    gate_up.push_back(ep + gate_name + ".weight");  // rows [0, inter) of expert e's w13
    gate_up.push_back(ep + up_name + ".weight");    // rows [inter, 2 inter)
    down.push_back(ep + down_name + ".weight");
  }
  MOEX_ASSIGN_OR_RETURN(Tensor w13, loader.load_stacked(gate_up, {inter, h}));
  MOEX_ASSIGN_OR_RETURN(Tensor w2, loader.load_stacked(down, {h, inter}));
  w.w13 = w13.reshape({e_count, 2 * inter, h});
  w.w2 = w2.reshape({e_count, h, inter});
  return w;
}

Status ModelBase::load_weights(const SafetensorsCheckpoint* ckpt, uint64_t seed) {
  WeightLoader loader(backend_, config_, ckpt, seed);
  const int64_t v = config_.vocab_size, h = config_.hidden_size;
  MOEX_ASSIGN_OR_RETURN(embed_, loader.load("model.embed_tokens.weight", {v, h}));
  count(embed_, false);
  MOEX_RETURN_IF_ERROR(load_layers(loader));
  MOEX_ASSIGN_OR_RETURN(final_norm_, loader.load("model.norm.weight", {h}, true));
  count(final_norm_, true);
  if (config_.tie_word_embeddings) {
    lm_head_ = embed_;
    counts_.active_per_token += lm_head_.numel();  // read per token, stored once
  } else {
    MOEX_ASSIGN_OR_RETURN(lm_head_, loader.load("lm_head.weight", {v, h}));
    count(lm_head_, true);
  }
  counts_.bytes = loader.stored_bytes();
  weight_buffers_ = std::move(loader.buffers());
  return Status::ok();
}

void ModelBase::reset_cache(int num_pages, int page_size) {
  step_graphs_.clear();  // they captured the old cache's addresses
  cache_buffers_.clear();
  num_pages_ = num_pages;
  page_size_ = page_size;
}

Expected<Tensor> ModelBase::make_cache(std::initializer_list<int64_t> shape) {
  std::vector<int64_t> s(shape);
  const DType act = backend_.activation_dtype();
  const size_t bytes = size_t(numel_of(s)) * dtype_size(act);
  MOEX_ASSIGN_OR_RETURN(Buffer buf, backend_.alloc(bytes));
  // Zeros, so that a bug reading an unwritten slot gives wrong numbers, never NaN/garbage noise
  // that differs run to run.
  MOEX_RETURN_IF_ERROR(backend_.fill(buf.data(), 0, bytes));
  Tensor t = Tensor::make(buf.data(), act, s, backend_.device());
  cache_buffers_.push_back(std::move(buf));
  return t;
}

// ---------------------------------------------------------------------------------------------
// ModelBase: the step

Status ModelBase::upload_step(const ForwardBatch& b, Workspace& ws, StepInputs* step) {
  const int64_t n = int64_t(b.tokens.size());
  const int64_t num_seqs = int64_t(b.seq_lens.size());
  const int64_t num_slots = int64_t(num_pages_) * page_size_;
  if (n == 0) return invalid_argument("ForwardBatch.tokens is empty");
  if (int64_t(b.positions.size()) != n || int64_t(b.slot_mapping.size()) != n) {
    return invalid_argument("ForwardBatch: positions and slot_mapping must have one entry per token (" +
                            std::to_string(n) + ")");
  }
  if (num_seqs == 0 || int64_t(b.query_start.size()) != num_seqs + 1 || b.query_start.front() != 0 ||
      b.query_start.back() != n) {
    return invalid_argument("ForwardBatch.query_start must be [num_seqs + 1] from 0 to the token count");
  }
  if (b.max_pages_per_seq <= 0 || int64_t(b.block_table.size()) != num_seqs * b.max_pages_per_seq) {
    return invalid_argument("ForwardBatch.block_table must be [num_seqs, max_pages_per_seq]");
  }
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int32_t q_len = b.query_start[size_t(i + 1)] - b.query_start[size_t(i)];
    if (q_len < 0 || b.seq_lens[size_t(i)] < q_len || b.seq_lens[size_t(i)] > b.max_pages_per_seq * page_size_) {
      return invalid_argument("ForwardBatch.seq_lens[" + std::to_string(i) + "] is inconsistent with its queries or pages");
    }
  }
  for (int32_t p : b.block_table) {
    if (p < 0 || p >= num_pages_) return invalid_argument("ForwardBatch.block_table names page " + std::to_string(p) + " outside the cache");
  }
  for (int64_t t = 0; t < n; ++t) {
    if (b.tokens[size_t(t)] < 0 || b.tokens[size_t(t)] >= config_.vocab_size) {
      return invalid_argument("ForwardBatch.tokens[" + std::to_string(t) + "] is outside the vocabulary");
    }
    if (b.slot_mapping[size_t(t)] < 0 || b.slot_mapping[size_t(t)] >= num_slots) {
      return invalid_argument("ForwardBatch.slot_mapping[" + std::to_string(t) + "] is outside the cache");
    }
  }
  for (int32_t r : b.logits_rows) {
    if (r < 0 || r >= n) return invalid_argument("ForwardBatch.logits_rows names row " + std::to_string(r) + " outside the batch");
  }
  auto upload = [&](const std::vector<int32_t>& host, std::initializer_list<int64_t> shape, Tensor* out) -> Status {
    MOEX_ASSIGN_OR_RETURN(*out, ws.make(DType::kI32, shape));
    if (host.empty()) return Status::ok();
    return backend_.copy_from_host(out->data, host.data(), host.size() * sizeof(int32_t));
  };
  step->num_tokens = n;
  MOEX_RETURN_IF_ERROR(upload(b.tokens, {n}, &step->tokens));
  MOEX_RETURN_IF_ERROR(upload(b.positions, {n}, &step->positions));
  MOEX_RETURN_IF_ERROR(upload(b.slot_mapping, {n}, &step->slot_mapping));
  MOEX_RETURN_IF_ERROR(upload(b.logits_rows, {int64_t(b.logits_rows.size())}, &step->logits_rows));
  MOEX_RETURN_IF_ERROR(upload(b.block_table, {num_seqs, b.max_pages_per_seq}, &step->seqs.block_table));
  MOEX_RETURN_IF_ERROR(upload(b.seq_lens, {num_seqs}, &step->seqs.seq_lens));
  MOEX_RETURN_IF_ERROR(upload(b.query_start, {num_seqs + 1}, &step->seqs.query_start));
  step->seqs.page_size = page_size_;
  return Status::ok();
}

Status ModelBase::forward(const ForwardBatch& batch, std::vector<float>* logits) {
  logits->clear();
  return forward_consume(batch, [&](const Tensor& out) -> Status {  // out [rows, vocab] f32
    logits->resize(size_t(out.numel()));
    return backend_.copy_to_host(logits->data(), out.data, logits->size() * sizeof(float));
  });
}

Status ModelBase::forward_consume(const ForwardBatch& batch, const LogitsConsumer& consume) {
  if (!kv_cache_ready()) return invalid_argument("Model::forward: call allocate_kv_cache first");
  const int64_t rows = int64_t(batch.logits_rows.size());
  bool decode = !batch.seq_lens.empty() && batch.query_start.size() == batch.seq_lens.size() + 1;
  for (size_t i = 0; decode && i + 1 < batch.query_start.size(); ++i)
    decode = batch.query_start[i + 1] - batch.query_start[i] == 1;
  // Graphs up to kMaxGraphTokens tokens: at 256 the H100 e2e step was 3-5% slower replayed than
  // eager (Qwen3-30B-A3B 44.7 vs 43.4 ms, DeepSeek-V2-Lite 26.8 vs 25.5), faster at 1-128.
  constexpr size_t kMaxGraphTokens = 128;
  if (!profiling_ && rows > 0 && decode && use_step_graphs_ && batch.tokens.size() <= kMaxGraphTokens)
    return forward_graph(batch, consume);
  if (profiling_) {  // profile: start the clock with no earlier work in flight
    MOEX_RETURN_IF_ERROR(backend_.synchronize());
    last_lap_s_ = steady_seconds();
    ++profile_.forwards;
  }
  Workspace ws(backend_);
  StepInputs step;
  MOEX_RETURN_IF_ERROR(upload_step(batch, ws, &step));
  MOEX_ASSIGN_OR_RETURN(Tensor out, forward_body(step, ws, rows));
  if (rows > 0) MOEX_RETURN_IF_ERROR(consume(out));
  MOEX_RETURN_IF_ERROR(backend_.synchronize());
  return lap(ProfileRegion::kOther, -1);  // profile
}

Expected<Tensor> ModelBase::forward_body(const StepInputs& step, Workspace& ws, int64_t rows) {
  const DType act = backend_.activation_dtype();
  const int64_t n = step.num_tokens, h = config_.hidden_size, v = config_.vocab_size;
  MOEX_ASSIGN_OR_RETURN(Tensor hidden, ws.make(act, {n, h}));  // [n, hidden] residual stream
  MOEX_RETURN_IF_ERROR(backend_.embedding({.ids = step.tokens, .table = embed_, .out = hidden}));
  MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kOther, -1));  // profile
  MOEX_RETURN_IF_ERROR(run_layers(step, ws, hidden));
  if (rows == 0) return Tensor{};
  // The final norm is per row, so pick the wanted rows first; the embedding op is a row gather.
  MOEX_ASSIGN_OR_RETURN(Tensor picked, ws.make(act, {rows, h}));  // [rows, hidden]
  MOEX_RETURN_IF_ERROR(backend_.embedding({.ids = step.logits_rows, .table = hidden, .out = picked}));
  MOEX_RETURN_IF_ERROR(backend_.rms_norm(
      {.x = picked, .weight = final_norm_, .out = picked, .eps = float(config_.rms_norm_eps)}));
  MOEX_ASSIGN_OR_RETURN(Tensor out, ws.make(DType::kF32, {rows, v}));  // [rows, vocab] f32
  MOEX_RETURN_IF_ERROR(backend_.matmul({.x = picked, .w = lm_head_, .out = out}));
  return out;
}

Status ModelBase::forward_graph(const ForwardBatch& batch_in, const LogitsConsumer& consume) {
  // The block-table width is rounded up to a power of two (extra entries name page 0 and are
  // never read: every kernel stops at its sequence's length, and no split size depends on the
  // width, so the bits are those of the exact width), so a batch whose sequences grow
  // reuses a few graphs instead of capturing one per page.
  const int width = int(std::bit_ceil(unsigned(std::max(1, batch_in.max_pages_per_seq))));
  ForwardBatch padded;
  const ForwardBatch* b = &batch_in;
  const int64_t seqs = int64_t(batch_in.seq_lens.size());
  if (width != batch_in.max_pages_per_seq && int64_t(batch_in.block_table.size()) == seqs * batch_in.max_pages_per_seq) {
    padded = batch_in;
    padded.max_pages_per_seq = width;
    padded.block_table.assign(size_t(seqs * width), 0);
    for (int64_t i = 0; i < seqs; ++i)
      std::copy_n(batch_in.block_table.begin() + i * batch_in.max_pages_per_seq, batch_in.max_pages_per_seq,
                  padded.block_table.begin() + i * width);
    b = &padded;
  }
  const ForwardBatch& batch = *b;
  const int64_t n = int64_t(batch.tokens.size());
  const int64_t rows = int64_t(batch.logits_rows.size());
  StepGraphEntry* g = nullptr;
  for (auto& e : step_graphs_)
    if (e->tokens == n && e->seqs == seqs && e->max_pages == batch.max_pages_per_seq && e->rows == rows) g = e.get();
  if (g == nullptr) {
    int64_t kept = 0;
    for (const auto& e : step_graphs_) kept += e->ws.bytes();
    while (!step_graphs_.empty() && (step_graphs_.size() >= kMaxStepGraphs || kept > kStepGraphBytes)) {
      kept -= step_graphs_.front()->ws.bytes();
      step_graphs_.erase(step_graphs_.begin());
    }
    step_graphs_.push_back(std::make_unique<StepGraphEntry>(backend_));
    g = step_graphs_.back().get();
    g->tokens = n;
    g->seqs = seqs;
    g->max_pages = batch.max_pages_per_seq;
    g->rows = rows;
  }
  if (g->recorded) g->ws.rewind();
  // A graph holds the addresses of the backend's scratch at capture time; when the scratch has
  // moved since (a larger prefill grew it), the graph is captured again.
  if (g->graph && g->generation != backend_.capture_generation()) g->graph.reset();
  StepInputs step;
  MOEX_RETURN_IF_ERROR(upload_step(batch, g->ws, &step));  // into the recorded buffers after the first step
  if (g->graph) {
    MOEX_RETURN_IF_ERROR(g->graph->replay());
  } else if (!g->recorded || g->eager_only) {
    MOEX_ASSIGN_OR_RETURN(g->out, forward_body(step, g->ws, rows));
    g->recorded = true;
  } else if (backend_.begin_capture().is_ok()) {
    Expected<Tensor> out = forward_body(step, g->ws, rows);
    Expected<std::unique_ptr<StepGraph>> graph = backend_.end_capture();
    if (out.has_value() && graph.has_value()) {
      g->graph = std::move(*graph);
      g->generation = backend_.capture_generation();
      MOEX_RETURN_IF_ERROR(g->graph->replay());
    } else {
      // The capture was refused (an op that allocates, grows the scratch or waits): this step
      // runs eagerly (growing the scratch if that was it), the next one tries again, and after
      // a second refusal the shape stays eager.
      g->eager_only = ++g->refusals >= 2;
      g->ws.rewind();
      MOEX_RETURN_IF_ERROR(upload_step(batch, g->ws, &step));
      MOEX_ASSIGN_OR_RETURN(g->out, forward_body(step, g->ws, rows));
    }
  } else {
    g->eager_only = true;
    MOEX_ASSIGN_OR_RETURN(g->out, forward_body(step, g->ws, rows));
  }
  MOEX_RETURN_IF_ERROR(consume(g->out));
  return backend_.synchronize();
}

void ModelBase::set_profiling(bool on) {
  profiling_ = on;
  if (!on) return;
  const size_t layers = size_t(std::max<int64_t>(0, config_.num_layers));
  profile_ = ModelProfile{};
  profile_.layer_attention_s.assign(layers, 0.0);
  profile_.layer_moe_s.assign(layers, 0.0);
  profile_.layer_other_s.assign(layers, 0.0);
}

Status ModelBase::lap_slow(ProfileRegion region, int64_t layer) {
  MOEX_RETURN_IF_ERROR(backend_.synchronize());
  const double now = steady_seconds(), dt = now - last_lap_s_;
  last_lap_s_ = now;
  profile_.forward_s += dt;
  const bool in_layer = layer >= 0 && size_t(layer) < profile_.layer_attention_s.size();
  switch (region) {
    case ProfileRegion::kAttention:
      profile_.attention_s += dt;
      if (in_layer) profile_.layer_attention_s[size_t(layer)] += dt;
      break;
    case ProfileRegion::kMoe:
      profile_.moe_s += dt;
      if (in_layer) profile_.layer_moe_s[size_t(layer)] += dt;
      break;
    case ProfileRegion::kOther:
      profile_.other_s += dt;
      if (in_layer) profile_.layer_other_s[size_t(layer)] += dt;
      break;
  }
  return Status::ok();
}

Expected<Tensor> ModelBase::mlp_block(const MlpWeights& w, const Tensor& x, Workspace& ws) {
  const DType act = backend_.activation_dtype();
  const int64_t n = x.size(0), h = config_.hidden_size, inter = w.w2.size(1);
  MOEX_ASSIGN_OR_RETURN(Tensor gate_up, ws.make(act, {n, 2 * inter}));  // [n, 2 inter]
  MOEX_ASSIGN_OR_RETURN(Tensor gated, ws.make(act, {n, inter}));        // [n, inter]
  MOEX_ASSIGN_OR_RETURN(Tensor down, ws.make(act, {n, h}));             // [n, hidden]
  MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x, .w = w.w13, .out = gate_up}));
  MOEX_RETURN_IF_ERROR(backend_.silu_mul({.x = gate_up, .out = gated}));
  MOEX_RETURN_IF_ERROR(backend_.matmul({.x = gated, .w = w.w2, .out = down}));
  return down;
}

bool step_graphs_wanted(DeviceType device) {
  const char* v = std::getenv("MOEX_CUDA_GRAPHS");
  if (v == nullptr || *v == '\0') return device == DeviceType::kCuda;
  return std::strcmp(v, "0") != 0;
}

bool fused_small_ops_from_env() {
  const char* v = std::getenv("MOEX_FUSED_SMALL_OPS");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

Status ModelBase::norm_residual(const Tensor& hidden, const Tensor& branch, const Tensor& weight, const Tensor& x_norm) {
  const float eps = float(config_.rms_norm_eps);
  if (branch.empty()) return backend_.rms_norm({.x = hidden, .weight = weight, .out = x_norm, .eps = eps});
  if (fuse_small_ops_)
    return backend_.add_rms_norm({.residual = hidden, .branch = branch, .weight = weight, .out = x_norm, .eps = eps});
  MOEX_RETURN_IF_ERROR(backend_.add({.a = hidden, .b = branch, .out = hidden}));
  return backend_.rms_norm({.x = hidden, .weight = weight, .out = x_norm, .eps = eps});
}

Status ModelBase::add_residual(const Tensor& hidden, const Tensor& branch) {
  if (branch.empty()) return Status::ok();
  return backend_.add({.a = hidden, .b = branch, .out = hidden});
}

Expected<Tensor> ModelBase::ffn_branch(const Tensor& post_attn_norm, bool is_moe, const MoeWeights& moe,
                                       const MlpWeights& mlp, const Tensor& hidden, const Tensor& attn_out,
                                       const Tensor& x_norm, Workspace& ws, int64_t layer) {
  MOEX_RETURN_IF_ERROR(norm_residual(hidden, attn_out, post_attn_norm, x_norm));
  MOEX_RETURN_IF_ERROR(lap(ProfileRegion::kOther, layer));  // profile
  Tensor ffn_out;  // [n, hidden]
  if (is_moe) {
    MOEX_ASSIGN_OR_RETURN(ffn_out, moe_block(moe, x_norm, ws));
  } else {
    MOEX_ASSIGN_OR_RETURN(ffn_out, mlp_block(mlp, x_norm, ws));
  }
  MOEX_RETURN_IF_ERROR(lap(is_moe ? ProfileRegion::kMoe : ProfileRegion::kOther, layer));  // profile
  return ffn_out;
}

Expected<Tensor> ModelBase::moe_block(const MoeWeights& w, const Tensor& x, Workspace& ws) {
  const DType act = backend_.activation_dtype();
  const int64_t n = x.size(0), h = config_.hidden_size, e_count = w.router.size(0);
  const int64_t top_k = routing_.top_k;
  MOEX_ASSIGN_OR_RETURN(Tensor router_logits, ws.make(DType::kF32, {n, e_count}));  // [n, E] f32
  MOEX_ASSIGN_OR_RETURN(Tensor topk_ids, ws.make(DType::kI32, {n, top_k}));          // [n, top_k]
  MOEX_ASSIGN_OR_RETURN(Tensor topk_weights, ws.make(DType::kF32, {n, top_k}));      // [n, top_k]
  MOEX_ASSIGN_OR_RETURN(Tensor routed, ws.make(act, {n, h}));                          // [n, hidden]
  MOEX_RETURN_IF_ERROR(backend_.matmul({.x = x, .w = w.router, .out = router_logits}));
  ops::RouteParams route = routing_;
  route.logits = router_logits;
  route.bias = w.bias;
  route.topk_ids = topk_ids;
  route.topk_weights = topk_weights;
  MOEX_RETURN_IF_ERROR(backend_.route(route));
  MOEX_RETURN_IF_ERROR(backend_.fused_moe({.x = x, .topk_ids = topk_ids, .topk_weights = topk_weights,
                                           .w13 = w.w13, .w2 = w.w2, .expert_map = {}, .out = routed}));
  if (!w.shared.w13.empty()) {
    MOEX_ASSIGN_OR_RETURN(Tensor shared, mlp_block(w.shared, x, ws));  // [n, hidden]
    MOEX_RETURN_IF_ERROR(backend_.add({.a = routed, .b = shared, .out = routed}));
  }
  return routed;
}

}  // namespace moex
