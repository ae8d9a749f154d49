// Model::load: validation errors that name the tensor, random weights, parameter counts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "backend/backend.h"
#include "model/model.h"
#include "model/model_test_util.h"

namespace moex::testing {
namespace {

class TempCopy {
 public:
  TempCopy() : dir_(make_temp_dir()) {}
  ~TempCopy() { remove_dir(dir_); }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

// Loads a copy of `fixture` whose checkpoint went through `edit`; returns the load's Status.
template <class Edit>
Status load_edited(const std::string& fixture, Edit edit) {
  auto tensors = read_raw_tensors(fixture_dir(fixture) + "/model.safetensors");
  edit(tensors);
  TempCopy tmp;
  write_checkpoint(tmp.dir(), fixture_dir(fixture) + "/config.json", tensors);
  auto backend = make_cpu_backend();
  auto m = Model::load(tmp.dir(), *backend);
  return m.status();
}

TEST(ModelLoad, UneditedCopyLoads) {
  // The writer itself is sound: a faithful copy loads.
  Status st = load_edited("deepseek_v3", [](auto&) {});
  EXPECT_TRUE(st.is_ok()) << st.message();
}

TEST(ModelLoad, MissingExpertTensorIsNamed) {
  const std::string name = "model.layers.2.mlp.experts.5.up_proj.weight";
  Status st = load_edited("qwen3_moe", [&](auto& t) { ASSERT_EQ(1u, t.erase(name)); });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(name), std::string::npos) << st.message();
}

TEST(ModelLoad, MissingMixtralExpertIsNamed) {
  const std::string name = "model.layers.1.block_sparse_moe.experts.3.w3.weight";
  Status st = load_edited("mixtral", [&](auto& t) { ASSERT_EQ(1u, t.erase(name)); });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(name), std::string::npos) << st.message();
}

TEST(ModelLoad, MissingLmHeadIsNamed) {
  Status st = load_edited("deepseek_v2", [&](auto& t) { ASSERT_EQ(1u, t.erase("lm_head.weight")); });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("lm_head.weight"), std::string::npos) << st.message();
}

TEST(ModelLoad, WrongShapeIsNamed) {
  // kv_b_proj with one row too few (a head's W_UV would be short).
  const std::string name = "model.layers.1.self_attn.kv_b_proj.weight";
  Status st = load_edited("deepseek_v3", [&](auto& t) {
    RawTensor& r = t.at(name);
    const size_t row_bytes = r.bytes.size() / size_t(r.shape[0]);
    r.shape[0] -= 1;
    r.bytes.resize(r.bytes.size() - row_bytes);
  });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(name), std::string::npos) << st.message();
}

TEST(ModelLoad, WrongRouterShapeIsNamed) {
  const std::string name = "model.layers.0.mlp.gate.weight";
  Status st = load_edited("qwen3_moe_bf16", [&](auto& t) {
    RawTensor& r = t.at(name);
    std::swap(r.shape[0], r.shape[1]);  // same bytes, transposed shape
  });
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find(name), std::string::npos) << st.message();
}

// q, k and v are loaded as one fused projection: a k_proj stored in f32 beside bf16 q/v is
// converted, not refused, and (bf16 -> f32 being exact) the logits do not change.
TEST(ModelLoad, FusedQkvAcceptsMixedDtypes) {
  const std::string name = "model.layers.0.self_attn.k_proj.weight";
  auto tensors = read_raw_tensors(fixture_dir("qwen3_moe_bf16") + "/model.safetensors");
  RawTensor& r = tensors.at(name);
  ASSERT_EQ(r.dtype, "BF16");
  std::vector<uint8_t> f32(r.bytes.size() * 2);
  for (size_t i = 0; i < r.bytes.size() / 2; ++i) {
    const uint32_t bits = uint32_t(r.bytes[2 * i] | (r.bytes[2 * i + 1] << 8)) << 16;
    std::memcpy(f32.data() + 4 * i, &bits, 4);
  }
  r.dtype = "F32";
  r.bytes = f32;
  TempCopy tmp;
  write_checkpoint(tmp.dir(), fixture_dir("qwen3_moe_bf16") + "/config.json", tensors);
  auto backend = make_cpu_backend();
  auto mixed = Model::load(tmp.dir(), *backend);
  ASSERT_TRUE(mixed.has_value()) << mixed.status().message();
  auto plain = Model::load(fixture_dir("qwen3_moe_bf16"), *backend);
  ASSERT_TRUE(plain.has_value()) << plain.status().message();
  std::vector<float> a, b;
  for (auto* m : {&*mixed, &*plain}) {
    ASSERT_TRUE((*m)->allocate_kv_cache(4, 16).is_ok());
    PagePool pool(0, 4, 16);
    Sequence s;
    const ForwardBatch batch = make_batch({&s}, {{3, 17, 40, 5}}, 16, pool, true);
    ASSERT_TRUE((*m)->forward(batch, m == &*mixed ? &a : &b).is_ok());
  }
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

TEST(ModelForward, RefusesBadBatches) {
  auto backend = make_cpu_backend();
  auto m = Model::load(fixture_dir("mixtral"), *backend);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  Model& model = **m;
  PagePool pool(0, 8, 1);
  Sequence s;
  std::vector<float> logits;
  ForwardBatch b = make_batch({&s}, {{5, 6, 7}}, 4, pool, false);
  EXPECT_FALSE(model.forward(b, &logits).is_ok());  // no KV cache yet
  ASSERT_TRUE(model.allocate_kv_cache(8, 4).is_ok());
  ForwardBatch bad = b;
  bad.tokens[1] = int32_t(model.config().vocab_size);
  Status st = model.forward(bad, &logits);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("tokens"), std::string::npos) << st.message();
  bad = b;
  bad.slot_mapping[0] = 8 * 4;
  EXPECT_FALSE(model.forward(bad, &logits).is_ok());
  bad = b;
  bad.logits_rows = {3};
  EXPECT_FALSE(model.forward(bad, &logits).is_ok());
  EXPECT_TRUE(model.forward(b, &logits).is_ok());
}

// Parameter counts computed independently from the checkpoint's tensor names.
void expect_counts_match_file(const std::string& fixture) {
  auto backend = make_cpu_backend();
  auto m = Model::load(fixture_dir(fixture), *backend);
  ASSERT_TRUE(m.has_value()) << m.status().message();
  const ModelConfig& c = (*m)->config();
  auto tensors = read_raw_tensors(fixture_dir(fixture) + "/model.safetensors");
  int64_t total = 0, active = 0, bytes = 0;
  std::map<std::string, int64_t> expert0_per_layer;  // layer prefix -> numel of expert 0
  for (const auto& [name, t] : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    total += numel;
    bytes += int64_t(t.bytes.size());
    const size_t e = name.find(".experts.");
    if (e != std::string::npos && name.find(".shared_experts.") == std::string::npos) {
      if (name.compare(e, 11, ".experts.0.") == 0) expert0_per_layer[name.substr(0, e)] += numel;
    } else if (name != "model.embed_tokens.weight") {
      active += numel;
    }
  }
  for (const auto& [layer, numel] : expert0_per_layer) active += numel * c.num_experts_per_tok;
  if (c.tie_word_embeddings) active += c.vocab_size * c.hidden_size;
  const ParamCounts pc = (*m)->param_counts();
  EXPECT_EQ(pc.total, total) << fixture;
  EXPECT_EQ(pc.active_per_token, active) << fixture;
  EXPECT_EQ(pc.bytes, bytes) << fixture;
  EXPECT_LT(pc.active_per_token, pc.total) << fixture;
}

TEST(ModelLoad, ParamCountsMatchCheckpoint) {
  for (const char* f : {"qwen3_moe", "qwen3_moe_bf16", "mixtral", "deepseek_v2", "deepseek_v2_qlora", "deepseek_v3"}) {
    expect_counts_match_file(f);
  }
}

TEST(ModelLoad, KvBytesPerToken) {
  auto backend = make_cpu_backend();
  auto q = Model::load(fixture_dir("qwen3_moe"), *backend);
  auto d = Model::load(fixture_dir("deepseek_v3"), *backend);
  ASSERT_TRUE(q.has_value() && d.has_value());
  const ModelConfig& qc = (*q)->config();
  const ModelConfig& dc = (*d)->config();
  // GQA: K and V per KV head per layer; MLA: one latent row (rank + rope) per layer. f32 on CPU.
  EXPECT_EQ((*q)->kv_bytes_per_token(), qc.num_layers * 2 * qc.num_key_value_heads * qc.head_dim * 4);
  EXPECT_EQ((*d)->kv_bytes_per_token(), dc.num_layers * (dc.kv_lora_rank + dc.qk_rope_head_dim) * 4);
}

// random_weights reads config.json only; same seed -> same logits, other seed -> other logits;
// shapes and counts equal those of the real checkpoint.
TEST(ModelLoad, RandomWeightsFromConfigOnly) {
  for (const char* fixture : {"qwen3_moe", "mixtral_swa", "deepseek_v3", "deepseek_v2"}) {
    TempCopy tmp;
    std::filesystem::copy_file(fixture_dir(fixture) + "/config.json", tmp.dir() + "/config.json");
    auto backend = make_cpu_backend();
    const uint64_t seed = std::random_device{}();
    auto run = [&](uint64_t s) {
      auto m = Model::load(tmp.dir(), *backend, {.random_weights = true, .seed = s});
      EXPECT_TRUE(m.has_value()) << m.status().message();
      std::vector<float> logits;
      if (!m.has_value()) return logits;
      EXPECT_TRUE((*m)->allocate_kv_cache(8, 4).is_ok());
      PagePool pool(0, 8, 1);
      Sequence seq;
      Status st = (*m)->forward(make_batch({&seq}, {{3, 17, 42, 99, 7}}, 4, pool, true), &logits);
      EXPECT_TRUE(st.is_ok()) << st.message();
      return logits;
    };
    std::vector<float> a = run(seed), b = run(seed), c = run(seed + 1);
    ASSERT_FALSE(a.empty());
    for (float x : a) ASSERT_TRUE(std::isfinite(x)) << fixture;
    EXPECT_EQ(a, b) << fixture;
    EXPECT_NE(a, c) << fixture;
    auto real = Model::load(fixture_dir(fixture), *backend);
    auto rnd = Model::load(tmp.dir(), *backend, {.random_weights = true, .seed = seed});
    ASSERT_TRUE(real.has_value() && rnd.has_value());
    EXPECT_EQ((*real)->param_counts().total, (*rnd)->param_counts().total) << fixture;
    EXPECT_EQ((*real)->param_counts().active_per_token, (*rnd)->param_counts().active_per_token) << fixture;
  }
}

}  // namespace
}  // namespace moex::testing
