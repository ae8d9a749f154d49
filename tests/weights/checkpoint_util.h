// Helpers that write checkpoints (safetensors files, indexes, config.json) into a fresh temp
// directory from inside a test, so that no binary fixture is committed.
#pragma once
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace moex::testing {

// A directory under the system temp dir, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A seed from std::random_device, printed so that a failure can be replayed.
uint64_t fresh_seed();

struct FakeTensor {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel x dtype size random bytes
};

size_t safetensors_dtype_size(const std::string& dtype);
// Random dtype (from the supported ones), random shape of 0..4 dims, random contents.
FakeTensor random_tensor(std::mt19937_64& rng, const std::string& name);
FakeTensor random_tensor(std::mt19937_64& rng, const std::string& name, const std::string& dtype,
                         const std::vector<int64_t>& shape);

// The header a valid file for `tensors` has (laid out back to back in order), with metadata.
std::string safetensors_header(const std::vector<FakeTensor>& tensors);
// A valid file holding `tensors`.
void write_safetensors(const std::string& path, const std::vector<FakeTensor>& tensors);
// A file with this exact header text and data bytes; `header_len` overrides the length prefix.
void write_raw_safetensors(const std::string& path, const std::string& header, const std::vector<uint8_t>& data,
                           std::optional<uint64_t> header_len = std::nullopt);
void write_text(const std::string& path, const std::string& text);
uint64_t file_size(const std::string& path);
void truncate_file(const std::string& path, uint64_t size);

}  // namespace moex::testing
