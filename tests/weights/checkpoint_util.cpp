#include "weights/checkpoint_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace moex::testing {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "moex_weights_XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

uint64_t fresh_seed() {
  std::random_device rd;
  const uint64_t seed = (uint64_t(rd()) << 32) ^ rd();
  std::fprintf(stderr, "[ seed     ] %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

size_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  if (dtype == "F8_E4M3" || dtype == "U8") return 1;
  if (dtype == "I64") return 8;
  throw std::runtime_error("no size for dtype " + dtype);
}

FakeTensor random_tensor(std::mt19937_64& rng, const std::string& name, const std::string& dtype,
                         const std::vector<int64_t>& shape) {
  FakeTensor t{name, dtype, shape, {}};
  size_t numel = 1;
  for (int64_t d : shape) numel *= size_t(d);
  t.bytes.resize(numel * safetensors_dtype_size(dtype));
  for (uint8_t& b : t.bytes) b = uint8_t(rng());
  return t;
}

FakeTensor random_tensor(std::mt19937_64& rng, const std::string& name) {
  static const char* kDtypes[] = {"F32", "F16", "BF16", "F8_E4M3", "I32", "I64", "U8"};
  const std::string dtype = kDtypes[rng() % 7];
  std::vector<int64_t> shape(rng() % 5);
  for (int64_t& d : shape) d = int64_t(1 + rng() % 9);
  return random_tensor(rng, name, dtype, shape);
}

std::string safetensors_header(const std::vector<FakeTensor>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const FakeTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';  // the reference writer pads to 8 bytes
  return text;
}

void write_raw_safetensors(const std::string& path, const std::string& header, const std::vector<uint8_t>& data,
                           std::optional<uint64_t> header_len) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header_len.value_or(header.size());
  for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void write_safetensors(const std::string& path, const std::vector<FakeTensor>& tensors) {
  std::vector<uint8_t> data;
  for (const FakeTensor& t : tensors) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  write_raw_safetensors(path, safetensors_header(tensors), data);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

uint64_t file_size(const std::string& path) { return fs::file_size(path); }

void truncate_file(const std::string& path, uint64_t size) { fs::resize_file(path, size); }

}  // namespace moex::testing
