// Helpers for the model tests: the HF reference outputs stored beside each fixture, a page
// allocator and ForwardBatch builder, and a safetensors writer for broken checkpoint copies.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/model.h"

namespace moex::testing {

std::string fixture_dir(const std::string& name);  // tests/fixtures/models/<name>

struct Reference {
  std::vector<int32_t> prompt;     // [P]
  std::vector<float> logits;       // [P, vocab] HF fp32 logits at every prompt position
  std::vector<float> logits_bf16;  // [P, vocab] HF native bf16 run (bf16 fixtures only)
  std::vector<int32_t> generated;  // [16] HF greedy continuation
  std::vector<float> rope_inv_freq;  // [rot_dim / 2] HF's rotary_emb.inv_freq
  float rope_attention_scaling = 0;  // HF's rotary_emb.attention_scaling
  int64_t vocab = 0;
};
Reference load_reference(const std::string& fixture);

// ||a - b|| / ||b||.
double rel_l2(const float* a, const float* b, size_t n);

// Hands out pages in a scrambled order so that a sequence's pages are not contiguous.
class PagePool {
 public:
  // Pages [first, first + count) of the cache.
  PagePool(int first, int count, uint64_t seed);
  int32_t take();

 private:
  std::vector<int32_t> free_;
};

struct Sequence {
  std::vector<int32_t> pages;
  int32_t len = 0;  // tokens already cached
};

// One step over several sequences: sequence i appends chunks[i]. The logits rows are every row
// when all_rows, else each sequence's last row.
ForwardBatch make_batch(std::vector<Sequence*> seqs, const std::vector<std::vector<int32_t>>& chunks,
                        int page_size, PagePool& pool, bool all_rows);

int32_t argmax(const float* row, int64_t n);

// Greedy decoding: prefill the prompt in chunks of the given sizes (summing to its length), then
// one token per step; returns `steps` generated tokens.
std::vector<int32_t> greedy(Model& model, const std::vector<int32_t>& prompt, const std::vector<int>& chunks,
                            int steps, int page_size, PagePool& pool);

// Copies a fixture directory's config.json and rewrites its model.safetensors through `edit`
// (name -> (shape, raw bytes); dtype kept per tensor).
struct RawTensor {
  std::string dtype;  // safetensors spelling
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
std::map<std::string, RawTensor> read_raw_tensors(const std::string& file);
void write_checkpoint(const std::string& dir, const std::string& config_json_src,
                      const std::map<std::string, RawTensor>& tensors);
std::string make_temp_dir();
void remove_dir(const std::string& dir);

}  // namespace moex::testing
