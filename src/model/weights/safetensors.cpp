// safetensors layout: [u64 little-endian header length N][N bytes of JSON][data section].
// The JSON maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end)} with offsets
// relative to the start of the data section; "__metadata__" holds free-form strings.
#include "model/weights/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "model/weights/mapped_file.h"

namespace moex {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The reference implementation refuses headers above 100 MB; real ones are well under 1 MB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr char kIndexName[] = "model.safetensors.index.json";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// A JSON value that must be a non-negative integer.
bool read_u64(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) { *out = v.get<uint64_t>(); return true; }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) { *out = uint64_t(v.get<int64_t>()); return true; }
  return false;
}

// Parses JSON without exceptions; `dup_key` receives the first repeated top-level key (nlohmann
// would otherwise keep the last silently, hiding a tensor listed twice).
json parse_json_checked(const char* begin, const char* end, std::string* dup_key) {
  std::set<std::string> keys;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.insert(k).second && dup_key->empty()) *dup_key = k;
    }
    return true;
  };
  return json::parse(begin, end, callback, /*allow_exceptions=*/false);
}

struct Range {
  uint64_t begin, end;
  const std::string* name;
};

// Validates one entry of a header and fills `info` (without its view).
Status parse_entry(const std::string& path, const std::string& name, const json& entry, uint64_t data_size,
                   TensorInfo* info, Range* range) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!entry.is_object()) return corrupt(where + ": entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return corrupt(where + ": missing \"" + key + "\"");
  }
  const json& dt = entry["dtype"];
  if (!dt.is_string()) return corrupt(where + ": \"dtype\" is not a string");
  if (!dtype_from_safetensors(dt.get_ref<const std::string&>(), &info->dtype)) {
    return unsupported(where + ": unknown dtype \"" + dt.get<std::string>() + "\"");
  }
  const json& shape = entry["shape"];
  if (!shape.is_array()) return corrupt(where + ": \"shape\" is not an array");
  if (shape.size() > size_t(Tensor::kMaxDims)) {
    return unsupported(where + ": " + std::to_string(shape.size()) + " dimensions (at most " +
                       std::to_string(Tensor::kMaxDims) + " supported)");
  }
  // numel stays below 2^62 so that numel * dtype size cannot overflow.
  constexpr uint64_t kLimit = uint64_t(1) << 62;
  uint64_t numel = 1;
  info->shape.clear();
  for (const json& d : shape) {
    uint64_t n = 0;
    if (!read_u64(d, &n) || n >= kLimit) return corrupt(where + ": shape " + shape.dump() + " is not a list of sizes");
    info->shape.push_back(int64_t(n));
    if (n != 0 && numel > kLimit / n) return corrupt(where + ": shape " + shape.dump() + " is too large");
    numel *= n;
  }
  const json& offs = entry["data_offsets"];
  uint64_t begin = 0, end = 0;
  if (!offs.is_array() || offs.size() != 2 || !read_u64(offs[0], &begin) || !read_u64(offs[1], &end) || begin > end) {
    return corrupt(where + ": \"data_offsets\" " + offs.dump() + " is not [begin, end] with begin <= end");
  }
  const uint64_t bytes = numel * dtype_size(info->dtype);
  if (end - begin != bytes) {
    return corrupt(where + ": shape " + shape_str(info->shape) + " of " + dt.get<std::string>() + " needs " +
                   std::to_string(bytes) + " bytes but data_offsets " + offs.dump() + " span " +
                   std::to_string(end - begin));
  }
  if (end > data_size) {
    return corrupt(where + ": data_offsets " + offs.dump() + " run past the data section of " +
                   std::to_string(data_size) + " bytes");
  }
  info->name = name;
  info->file = path;
  *range = {begin, end, &info->name};
  return Status::ok();
}

// Validates the header of a mapped file and appends its tensors (views into the mapping).
Status parse_header(const MappedFile& file, std::vector<TensorInfo>* out) {
  const std::string& path = file.path();
  if (file.size() < 8) {
    return corrupt(path + ": " + std::to_string(file.size()) + " bytes is too short for a safetensors header");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file.data()[i];  // little-endian on any host
  if (n > file.size() - 8) {
    return corrupt(path + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(file.size()) + " bytes)");
  }
  if (n > kMaxHeaderBytes) return corrupt(path + ": header length " + std::to_string(n) + " exceeds 100 MB");
  const char* text = reinterpret_cast<const char*>(file.data()) + 8;
  std::string dup;
  const json header = parse_json_checked(text, text + n, &dup);
  if (header.is_discarded()) return corrupt(path + ": header is not well-formed JSON");
  if (!header.is_object()) return corrupt(path + ": header is not a JSON object");
  if (!dup.empty()) return corrupt(path + ": tensor '" + dup + "' appears twice in the header");

  const uint8_t* data = file.data() + 8 + n;
  const uint64_t data_size = file.size() - 8 - n;
  std::vector<TensorInfo> infos;
  std::vector<Range> ranges;
  infos.reserve(header.size());
  ranges.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;  // free-form strings (format, ...): not tensors
    TensorInfo info;
    Range range{};
    MOEX_RETURN_IF_ERROR(parse_entry(path, name, entry, data_size, &info, &range));
    Tensor& v = info.view;
    v.data = const_cast<uint8_t*>(data + range.begin);  // read-only mapping: views must not be written
    v.dtype = info.dtype;
    v.device = DeviceType::kCpu;
    v.ndim = int(info.shape.size());
    int64_t stride = 1;
    for (int d = v.ndim - 1; d >= 0; --d) {
      v.shape[d] = info.shape[size_t(d)];
      v.stride[d] = stride;
      stride *= v.shape[d];
    }
    infos.push_back(std::move(info));
    ranges.push_back(range);
  }
  // Ranges point at infos' names: fix them up now that `infos` no longer reallocates.
  for (size_t i = 0; i < ranges.size(); ++i) ranges[i].name = &infos[i].name;
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  const Range* prev = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;  // empty tensors occupy no bytes
    if (prev != nullptr && r.begin < prev->end) {
      return corrupt(path + ": tensors '" + *prev->name + "' [" + std::to_string(prev->begin) + ", " +
                     std::to_string(prev->end) + ") and '" + *r.name + "' [" + std::to_string(r.begin) + ", " +
                     std::to_string(r.end) + ") overlap");
    }
    prev = &r;
  }
  for (TensorInfo& info : infos) out->push_back(std::move(info));
  return Status::ok();
}

// A shard name from an index must stay inside the checkpoint directory.
bool is_plain_relative(const std::string& name) {
  const fs::path p(name);
  if (name.empty() || p.is_absolute()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

SafetensorsCheckpoint::SafetensorsCheckpoint() = default;
SafetensorsCheckpoint::SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept = default;
SafetensorsCheckpoint& SafetensorsCheckpoint::operator=(SafetensorsCheckpoint&&) noexcept = default;
SafetensorsCheckpoint::~SafetensorsCheckpoint() = default;

Status SafetensorsCheckpoint::add_file(const std::string& path) {
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::open(path));
  std::vector<TensorInfo> infos;
  MOEX_RETURN_IF_ERROR(parse_header(*file, &infos));
  for (TensorInfo& info : infos) {
    auto it = tensors_.find(info.name);
    if (it != tensors_.end()) {
      return corrupt(path + ": tensor '" + info.name + "' is also in " + it->second.file);
    }
    std::string name = info.name;
    tensors_.emplace(std::move(name), std::move(info));
  }
  files_.push_back(std::move(file));
  return Status::ok();
}

Expected<SafetensorsCheckpoint> SafetensorsCheckpoint::open_file(const std::string& path) {
  try {
    SafetensorsCheckpoint ckpt;
    ckpt.source_ = path;
    MOEX_RETURN_IF_ERROR(ckpt.add_file(path));
    return ckpt;
  } catch (const std::exception& e) {  // e.g. bad_alloc: never let it escape the API
    return internal_error(path + ": " + e.what());
  }
}

Expected<SafetensorsCheckpoint> SafetensorsCheckpoint::open_dir(const std::string& dir) {
  try {
    SafetensorsCheckpoint ckpt;
    ckpt.source_ = dir;
    std::error_code ec;
    const fs::path index_path = fs::path(dir) / kIndexName;
    if (fs::exists(index_path, ec)) {
      const std::string index_name = index_path.string();
      MOEX_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> index_file, MappedFile::open(index_name));
      const char* text = reinterpret_cast<const char*>(index_file->data());
      std::string dup;
      const json index = parse_json_checked(text, text + index_file->size(), &dup);
      if (index.is_discarded() || !index.is_object()) return corrupt(index_name + ": not a well-formed JSON object");
      if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
        return corrupt(index_name + ": missing \"weight_map\" object");
      }
      // Shards in first-listed order, each with the tensors the index assigns to it.
      std::vector<std::string> shards;
      std::map<std::string, std::vector<std::string>> listed;
      for (const auto& [name, shard] : index["weight_map"].items()) {
        if (!shard.is_string()) return corrupt(index_name + ": weight_map entry for '" + name + "' is not a string");
        const std::string& s = shard.get_ref<const std::string&>();
        if (!is_plain_relative(s)) {
          return corrupt(index_name + ": shard '" + s + "' for tensor '" + name + "' is not a file in " + dir);
        }
        auto [it, added] = listed.try_emplace(s);
        if (added) shards.push_back(s);
        it->second.push_back(name);
      }
      if (shards.empty()) return corrupt(index_name + ": weight_map is empty");
      for (const std::string& s : shards) {
        const std::string shard_path = (fs::path(dir) / s).string();
        if (!fs::exists(shard_path, ec)) {
          return not_found(index_name + ": shard '" + s + "' (holding '" + listed[s].front() + "') not found");
        }
        MOEX_RETURN_IF_ERROR(ckpt.add_file(shard_path));
      }
      for (const std::string& s : shards) {
        const std::string shard_path = (fs::path(dir) / s).string();
        for (const std::string& name : listed[s]) {
          auto it = ckpt.tensors_.find(name);
          if (it == ckpt.tensors_.end() || it->second.file != shard_path) {
            return corrupt(index_name + ": tensor '" + name + "' is listed in shard '" + s + "' but not found there");
          }
        }
      }
      return ckpt;
    }
    std::vector<std::string> paths;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".safetensors") paths.push_back(it->path().string());
    }
    if (ec) return io_error(dir + ": cannot list directory: " + ec.message());
    if (paths.empty()) return not_found(dir + ": no " + kIndexName + " and no *.safetensors files");
    std::sort(paths.begin(), paths.end());  // deterministic order whatever the file system lists
    for (const std::string& p : paths) MOEX_RETURN_IF_ERROR(ckpt.add_file(p));
    return ckpt;
  } catch (const std::exception& e) {
    return internal_error(dir + ": " + e.what());
  }
}

const TensorInfo* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Expected<Tensor> SafetensorsCheckpoint::get(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) return not_found(source_ + ": tensor '" + name + "' not found");
  if (info->shape != expected_shape) {
    return invalid_argument(info->file + ": tensor '" + name + "' has shape " + shape_str(info->shape) +
                            ", expected " + shape_str(expected_shape));
  }
  return info->view;
}

}  // namespace moex
