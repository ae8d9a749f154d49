// Read-only access to the tensors of a checkpoint: one .safetensors file, or the shards named by
// model.safetensors.index.json. Files are memory-mapped; tensors are CPU views into the mapping.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace moex {

struct TensorInfo {
  std::string name;
  std::string file;  // the shard holding it
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  Tensor view;  // CPU view into the mapped file (contiguous)
};

class MappedFile;

class SafetensorsCheckpoint {
 public:
  // Opens <dir>/model.safetensors.index.json if present, else every <dir>/*.safetensors.
  // Validates each header: JSON well-formed, known dtypes, shape x dtype size == byte range,
  // ranges inside the file and not overlapping. With an index: every shard it names exists and
  // holds the tensors listed for it. A tensor name found in two files is refused.
  static Expected<SafetensorsCheckpoint> open_dir(const std::string& dir);
  static Expected<SafetensorsCheckpoint> open_file(const std::string& path);

  SafetensorsCheckpoint();
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept;
  ~SafetensorsCheckpoint();

  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo* find(const std::string& name) const;
  // The tensor, checked against the expected shape: a message names the tensor and both shapes.
  Expected<Tensor> get(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  // The directory or file this checkpoint was opened from (used in messages).
  const std::string& source() const { return source_; }
  size_t num_files() const { return files_.size(); }

 private:
  // Maps `path`, validates its header and adds its tensors; refuses names already present.
  Status add_file(const std::string& path);

  std::string source_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace moex
