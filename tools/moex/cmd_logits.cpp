// moex logits: one teacher-forced prefill of a token id sequence; per position, the argmax and
// the top-5 (or all) fp32 logits, for comparisons with another implementation
// (tools/hf_random_parity.py).
//
// Input (--prompt-ids-file): token ids as decimal integers separated by whitespace or commas.
// Output (--out), little-endian, no padding:
//   char    magic[8]          "MOEXLOGT"
//   int32   version           1
//   int32   tokens            T
//   int32   vocab             V
//   int32   k                 top-k kept per position (5, or V with --full)
//   int32   full              1 with --full, else 0
//   int32   argmax[T]         first index of the maximum logit of each position
//   if full:  float32 logits[T, V]
//   else:     int32 topk_ids[T, k], float32 topk_logits[T, k]   (descending by logit)
// Row t holds the logits that predict token t + 1 (position t sees tokens 0..t).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

#include "cli_common.h"

namespace moex::cli {
namespace {

constexpr int32_t kTopK = 5;

Expected<std::vector<int32_t>> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot open --prompt-ids-file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::replace(text.begin(), text.end(), ',', ' ');
  std::stringstream items(text);
  std::vector<int32_t> ids;
  std::string item;
  while (items >> item) {
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(int32_t(v));
    } catch (const std::exception&) {
      return invalid_argument("--prompt-ids-file " + path + ": '" + item + "' is not a token id");
    }
  }
  if (ids.empty()) return invalid_argument("--prompt-ids-file " + path + " holds no token ids");
  return ids;
}

template <typename T>
void put(std::vector<char>* buf, const T* data, size_t count) {
  const char* p = reinterpret_cast<const char*>(data);
  buf->insert(buf->end(), p, p + count * sizeof(T));
}

}  // namespace

int run_logits(const ModelFlags& flags, const std::string& ids_file, const std::string& out_path, bool full) {
  auto ids_or = read_ids(ids_file);
  if (!ids_or) return report(ids_or.status());
  const std::vector<int32_t>& ids = *ids_or;
  ModelFlags sized = flags;
  sized.max_context = std::max<int64_t>(flags.max_context, int64_t(ids.size()));
  auto engine_or = Engine::create(engine_options(sized));
  if (!engine_or) return report(engine_or.status());
  Engine& engine = **engine_or;
  const int64_t vocab = engine.model().config().vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= vocab) {
      return report(invalid_argument("--prompt-ids-file " + ids_file + ": id " + std::to_string(ids[i]) + " at index " +
                                     std::to_string(i) + " is outside the vocabulary (" + std::to_string(vocab) + ")"));
    }
  }

  Sequence seq;
  seq.tokens = ids;
  std::vector<float> logits;  // [T, vocab]
  const Status status = engine.step_all_logits(&seq, &logits);
  engine.release(&seq);
  if (!status.is_ok()) return report(status);
  const int64_t t_count = int64_t(ids.size());
  if (int64_t(logits.size()) != t_count * vocab) {
    return report(internal_error("moex logits: the forward returned " + std::to_string(logits.size()) +
                                 " logits, expected " + std::to_string(t_count * vocab)));
  }

  const int32_t k = full ? int32_t(vocab) : int32_t(std::min<int64_t>(kTopK, vocab));
  std::vector<int32_t> argmax(static_cast<size_t>(t_count));                   // [T]
  std::vector<int32_t> top_ids(full ? 0 : size_t(t_count * k));     // [T, k]
  std::vector<float> top_logits(full ? 0 : size_t(t_count * k));    // [T, k]
  std::vector<int32_t> order(static_cast<size_t>(vocab));  // [vocab]
  for (int64_t t = 0; t < t_count; ++t) {
    const float* row = logits.data() + t * vocab;  // [vocab]
    argmax[size_t(t)] = int32_t(std::max_element(row, row + vocab) - row);
    if (full) continue;
    std::iota(order.begin(), order.end(), 0);
    // Ties keep the lower id first, like the argmax.
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int32_t j = 0; j < k; ++j) {
      top_ids[size_t(t * k + j)] = order[size_t(j)];
      top_logits[size_t(t * k + j)] = row[order[size_t(j)]];
    }
  }

  std::vector<char> buf;
  buf.insert(buf.end(), {'M', 'O', 'E', 'X', 'L', 'O', 'G', 'T'});
  const int32_t header[5] = {1, int32_t(t_count), int32_t(vocab), k, full ? 1 : 0};
  put(&buf, header, 5);
  put(&buf, argmax.data(), argmax.size());
  if (full) {
    put(&buf, logits.data(), logits.size());
  } else {
    put(&buf, top_ids.data(), top_ids.size());
    put(&buf, top_logits.data(), top_logits.size());
  }
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  if (!out) return report(not_found("cannot create --out file " + out_path));
  out.write(buf.data(), std::streamsize(buf.size()));
  out.close();
  if (!out) return report(internal_error("failed writing --out file " + out_path));
  std::printf("[moex] logits of %lld positions (%s, %s) written to %s in %.2f s load\n", (long long)t_count,
              engine.model().config().model_type.c_str(), engine.backend().name().c_str(), out_path.c_str(),
              engine.load_seconds());
  return 0;
}

}  // namespace moex::cli
