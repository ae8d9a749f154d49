#include "model/model_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/weights/safetensors.h"

namespace moex::testing {

std::string fixture_dir(const std::string& name) { return std::string(MOEX_SOURCE_DIR) + "/tests/fixtures/models/" + name; }

namespace {

template <class T>
std::vector<T> read_as(const SafetensorsCheckpoint& ck, const std::string& name) {
  const TensorInfo* info = ck.find(name);
  if (info == nullptr) return {};
  const Tensor& v = info->view;
  std::vector<T> out(size_t(v.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.dtype == DType::kI64) out[i] = T(static_cast<const int64_t*>(v.data)[i]);
    else out[i] = T(load_as_f32(v.data, v.dtype, i));
  }
  return out;
}

}  // namespace

Reference load_reference(const std::string& fixture) {
  auto ck = SafetensorsCheckpoint::open_file(fixture_dir(fixture) + "/expected.safetensors");
  if (!ck) throw std::runtime_error(ck.status().message());
  Reference r;
  r.prompt = read_as<int32_t>(*ck, "prompt_ids");
  r.logits = read_as<float>(*ck, "logits");
  r.logits_bf16 = read_as<float>(*ck, "logits_bf16");
  r.generated = read_as<int32_t>(*ck, "generated_ids");
  r.rope_inv_freq = read_as<float>(*ck, "rope_inv_freq");
  r.rope_attention_scaling = read_as<float>(*ck, "rope_attention_scaling").at(0);
  r.vocab = int64_t(r.logits.size() / r.prompt.size());
  return r;
}

double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

PagePool::PagePool(int first, int count, uint64_t seed) {
  for (int i = first; i < first + count; ++i) free_.push_back(i);
  std::mt19937_64 rng(seed);
  std::shuffle(free_.begin(), free_.end(), rng);
}

int32_t PagePool::take() {
  if (free_.empty()) throw std::runtime_error("PagePool: out of pages");
  int32_t p = free_.back();
  free_.pop_back();
  return p;
}

ForwardBatch make_batch(std::vector<Sequence*> seqs, const std::vector<std::vector<int32_t>>& chunks,
                        int page_size, PagePool& pool, bool all_rows) {
  ForwardBatch b;
  b.query_start.push_back(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    for (size_t j = 0; j < chunks[i].size(); ++j) {
      const int32_t pos = s.len + int32_t(j);
      while (int32_t(s.pages.size()) * page_size <= pos) s.pages.push_back(pool.take());
      b.tokens.push_back(chunks[i][j]);
      b.positions.push_back(pos);
      b.slot_mapping.push_back(s.pages[size_t(pos / page_size)] * page_size + pos % page_size);
      if (all_rows) b.logits_rows.push_back(int32_t(b.tokens.size()) - 1);
    }
    s.len += int32_t(chunks[i].size());
    b.query_start.push_back(int32_t(b.tokens.size()));
    b.seq_lens.push_back(s.len);
    if (!all_rows) b.logits_rows.push_back(int32_t(b.tokens.size()) - 1);
    b.max_pages_per_seq = std::max(b.max_pages_per_seq, int(s.pages.size()));
  }
  b.block_table.assign(seqs.size() * size_t(b.max_pages_per_seq), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::copy(seqs[i]->pages.begin(), seqs[i]->pages.end(), b.block_table.begin() + long(i) * b.max_pages_per_seq);
  }
  return b;
}

int32_t argmax(const float* row, int64_t n) { return int32_t(std::max_element(row, row + n) - row); }

std::vector<int32_t> greedy(Model& model, const std::vector<int32_t>& prompt, const std::vector<int>& chunks,
                            int steps, int page_size, PagePool& pool) {
  const int64_t vocab = model.config().vocab_size;
  Sequence seq;
  std::vector<float> logits;
  size_t done = 0;
  for (int c : chunks) {
    std::vector<int32_t> chunk(prompt.begin() + long(done), prompt.begin() + long(done) + c);
    done += size_t(c);
    Status st = model.forward(make_batch({&seq}, {chunk}, page_size, pool, false), &logits);
    if (!st.is_ok()) throw std::runtime_error(st.message());
  }
  std::vector<int32_t> out;
  out.push_back(argmax(logits.data(), vocab));
  while (int(out.size()) < steps) {
    Status st = model.forward(make_batch({&seq}, {{out.back()}}, page_size, pool, false), &logits);
    if (!st.is_ok()) throw std::runtime_error(st.message());
    out.push_back(argmax(logits.data(), vocab));
  }
  return out;
}

std::map<std::string, RawTensor> read_raw_tensors(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  in.read(header.data(), long(header_len));
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<std::string, RawTensor> out;
  const nlohmann::json j = nlohmann::json::parse(header);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") continue;
    RawTensor t;
    t.dtype = v["dtype"].get<std::string>();
    t.shape = v["shape"].get<std::vector<int64_t>>();
    const size_t b = v["data_offsets"][0].get<size_t>(), e = v["data_offsets"][1].get<size_t>();
    t.bytes.assign(data.begin() + long(b), data.begin() + long(e));
    out[name] = std::move(t);
  }
  return out;
}

void write_checkpoint(const std::string& dir, const std::string& config_json_src,
                      const std::map<std::string, RawTensor>& tensors) {
  std::filesystem::copy_file(config_json_src, dir + "/config.json", std::filesystem::copy_options::overwrite_existing);
  nlohmann::json header = nlohmann::json::object();
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while (text.size() % 8) text += ' ';
  std::ofstream out(dir + "/model.safetensors", std::ios::binary);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), long(text.size()));
  for (const auto& [name, t] : tensors) out.write(reinterpret_cast<const char*>(t.bytes.data()), long(t.bytes.size()));
}

std::string make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "moex_model_XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

void remove_dir(const std::string& dir) { std::filesystem::remove_all(dir); }

}  // namespace moex::testing
