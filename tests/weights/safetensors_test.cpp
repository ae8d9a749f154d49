#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include "model/weights/mapped_file.h"
#include "model/weights/safetensors.h"
#include "weights/checkpoint_util.h"

namespace moex {
namespace {

using testing::FakeTensor;
using testing::TempDir;

// A refusal: the expected code, one line, naming every string in `names`.
void expect_refused(const Status& s, StatusCode code, std::initializer_list<std::string> names) {
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(int(s.code()), int(code)) << s.message();
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
  for (const std::string& n : names) EXPECT_NE(s.message().find(n), std::string::npos) << "missing '" << n << "' in: " << s.message();
}

std::vector<FakeTensor> random_tensors(std::mt19937_64& rng, const std::string& prefix, int count) {
  std::vector<FakeTensor> ts;
  for (int i = 0; i < count; ++i) ts.push_back(testing::random_tensor(rng, prefix + ".t" + std::to_string(i)));
  return ts;
}

// Every tensor is present with its dtype, shape, bytes, and a contiguous view into the file.
void expect_holds(const SafetensorsCheckpoint& ckpt, const std::vector<FakeTensor>& ts, const std::string& file) {
  for (const FakeTensor& t : ts) {
    SCOPED_TRACE(t.name);
    const TensorInfo* info = ckpt.find(t.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->file, file);
    DType want{};
    ASSERT_TRUE(dtype_from_safetensors(t.dtype, &want));
    EXPECT_EQ(info->dtype, want);
    EXPECT_EQ(info->shape, t.shape);
    EXPECT_EQ(info->view.ndim, int(t.shape.size()));
    EXPECT_TRUE(info->view.is_contiguous());
    ASSERT_EQ(info->view.nbytes(), t.bytes.size());
    if (!t.bytes.empty()) {  // a zero-element tensor has no bytes (and memcmp wants non-null pointers)
      EXPECT_EQ(std::memcmp(info->view.data, t.bytes.data(), t.bytes.size()), 0);
    }
    Expected<Tensor> got = ckpt.get(t.name, t.shape);
    ASSERT_TRUE(got.has_value()) << got.status().message();
    EXPECT_EQ(got->data, info->view.data);
  }
}

TEST(Safetensors, SingleFileHoldsEveryTensor) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  std::vector<FakeTensor> ts = random_tensors(rng, "model", 3 + int(rng() % 6));
  ts.push_back(testing::random_tensor(rng, "model.empty", "BF16", {0, 7}));  // zero bytes
  const std::string path = dir.file("model.safetensors");
  testing::write_safetensors(path, ts);

  Expected<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open_file(path);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
  EXPECT_EQ(ckpt->tensors().size(), ts.size());  // __metadata__ is not a tensor
  EXPECT_FALSE(ckpt->contains("__metadata__"));
  expect_holds(*ckpt, ts, path);

  // open_dir without an index reads the same file.
  Expected<SafetensorsCheckpoint> by_dir = SafetensorsCheckpoint::open_dir(dir.path());
  ASSERT_TRUE(by_dir.has_value()) << by_dir.status().message();
  expect_holds(*by_dir, ts, path);

  // Moving the checkpoint keeps the mapping alive.
  SafetensorsCheckpoint moved = std::move(ckpt.value());
  expect_holds(moved, ts, path);
}

std::string shape_text(int64_t a, int64_t b) {
  std::string s("[");
  s += std::to_string(a);
  s += ", ";
  s += std::to_string(b);
  s += "]";
  return s;
}

TEST(Safetensors, GetChecksShapeAndName) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  const int64_t rows = 2 + int64_t(rng() % 30), cols = 2 + int64_t(rng() % 30);
  const std::string path = dir.file("w.safetensors");
  testing::write_safetensors(path, {testing::random_tensor(rng, "layers.0.wq", "BF16", {rows, cols})});
  Expected<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open_file(path);
  ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
  EXPECT_TRUE(ckpt->get("layers.0.wq", {rows, cols}).has_value());
  const std::string found = shape_text(rows, cols);
  const std::string wanted = shape_text(cols, rows + 1);
  expect_refused(ckpt->get("layers.0.wq", {cols, rows + 1}).status(), StatusCode::kInvalidArgument,
                 {path, "layers.0.wq", found, wanted});
  expect_refused(ckpt->get("layers.0.wq", {rows * cols}).status(), StatusCode::kInvalidArgument, {"layers.0.wq"});
  expect_refused(ckpt->get("layers.0.wk", {rows, cols}).status(), StatusCode::kNotFound, {path, "layers.0.wk"});
}

// Writes shards of random tensors and the index that maps them.
struct ShardedFixture {
  std::vector<std::vector<FakeTensor>> shards;
  nlohmann::json index;
  std::string shard_name(size_t i) const {
    return "model-0000" + std::to_string(i + 1) + "-of-0000" + std::to_string(shards.size()) + ".safetensors";
  }
  ShardedFixture(std::mt19937_64& rng, const TempDir& dir, int num_shards) {
    index["metadata"] = {{"total_size", 0}};
    for (int s = 0; s < num_shards; ++s) shards.push_back(random_tensors(rng, "shard" + std::to_string(s), 1 + int(rng() % 4)));
    for (size_t s = 0; s < shards.size(); ++s) {
      testing::write_safetensors(dir.file(shard_name(s)), shards[s]);
      for (const FakeTensor& t : shards[s]) index["weight_map"][t.name] = shard_name(s);
    }
  }
  void write_index(const TempDir& dir) const { testing::write_text(dir.file("model.safetensors.index.json"), index.dump()); }
};

TEST(Safetensors, ShardedIndexOpensEveryShard) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  ShardedFixture fx(rng, dir, 2 + int(rng() % 3));
  fx.write_index(dir);
  // A stray file next to the index is ignored: the index names the shards.
  testing::write_text(dir.file("stray.safetensors"), "not a checkpoint");
  Expected<SafetensorsCheckpoint> ckpt = SafetensorsCheckpoint::open_dir(dir.path());
  ASSERT_TRUE(ckpt.has_value()) << ckpt.status().message();
  EXPECT_EQ(ckpt->num_files(), fx.shards.size());
  size_t total = 0;
  for (size_t s = 0; s < fx.shards.size(); ++s) {
    expect_holds(*ckpt, fx.shards[s], dir.file(fx.shard_name(s)));
    total += fx.shards[s].size();
  }
  EXPECT_EQ(ckpt->tensors().size(), total);
}

TEST(Safetensors, IndexProblemsAreRefused) {
  std::mt19937_64 rng(testing::fresh_seed());
  const std::string index_name = "model.safetensors.index.json";
  {  // A tensor listed in the index that its shard lacks.
    TempDir dir;
    ShardedFixture fx(rng, dir, 2);
    fx.index["weight_map"]["model.ghost"] = fx.shard_name(1);
    fx.write_index(dir);
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt,
                   {index_name, "model.ghost", fx.shard_name(1)});
  }
  {  // A tensor listed under the wrong shard.
    TempDir dir;
    ShardedFixture fx(rng, dir, 2);
    const std::string moved = fx.shards[0][0].name;
    fx.index["weight_map"][moved] = fx.shard_name(1);
    fx.write_index(dir);
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt, {moved, fx.shard_name(1)});
  }
  {  // A shard file that does not exist.
    TempDir dir;
    ShardedFixture fx(rng, dir, 2);
    fx.index["weight_map"]["model.extra"] = "model-00009-of-00009.safetensors";
    fx.write_index(dir);
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kNotFound,
                   {index_name, "model-00009-of-00009.safetensors"});
  }
  {  // The same tensor in two shards.
    TempDir dir;
    ShardedFixture fx(rng, dir, 2);
    FakeTensor dup = fx.shards[0][0];
    fx.shards[1].push_back(dup);
    testing::write_safetensors(dir.file(fx.shard_name(1)), fx.shards[1]);
    fx.write_index(dir);
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt,
                   {dup.name, fx.shard_name(0), fx.shard_name(1)});
  }
  {  // A shard path escaping the directory, a malformed index, an index without weight_map.
    TempDir dir;
    ShardedFixture fx(rng, dir, 1);
    fx.index["weight_map"]["model.up"] = "../elsewhere.safetensors";
    fx.write_index(dir);
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt, {"../elsewhere.safetensors"});
    testing::write_text(dir.file(index_name), "{\"weight_map\": {");
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt, {index_name});
    testing::write_text(dir.file(index_name), "{\"metadata\": {}}");
    expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt, {index_name, "weight_map"});
  }
}

TEST(Safetensors, DuplicateAcrossUnindexedFilesIsRefused) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  FakeTensor t = testing::random_tensor(rng, "lm_head.weight");
  testing::write_safetensors(dir.file("a.safetensors"), {t});
  testing::write_safetensors(dir.file("b.safetensors"), {testing::random_tensor(rng, "other"), t});
  expect_refused(SafetensorsCheckpoint::open_dir(dir.path()).status(), StatusCode::kCorrupt,
                 {"lm_head.weight", "a.safetensors", "b.safetensors"});
  TempDir empty;
  expect_refused(SafetensorsCheckpoint::open_dir(empty.path()).status(), StatusCode::kNotFound, {empty.path()});
}

TEST(Safetensors, DamagedFilesAreRefused) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto open = [&] { return SafetensorsCheckpoint::open_file(path).status(); };
  std::vector<FakeTensor> ts = {testing::random_tensor(rng, "a", "F32", {3, 1 + int64_t(rng() % 8)}),
                                testing::random_tensor(rng, "b", "BF16", {2 + int64_t(rng() % 8)})};

  // Truncated: the last tensor's bytes run past the end.
  testing::write_safetensors(path, ts);
  testing::truncate_file(path, testing::file_size(path) - 1 - rng() % ts[1].bytes.size());
  expect_refused(open(), StatusCode::kCorrupt, {path, "'b'", "data section"});
  // Too short to hold the length prefix.
  testing::write_text(path, "abc");
  expect_refused(open(), StatusCode::kCorrupt, {path, "too short"});
  // Header length beyond the file.
  const std::string header = testing::safetensors_header(ts);
  std::vector<uint8_t> data;
  for (const FakeTensor& t : ts) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  testing::write_raw_safetensors(path, header, data, header.size() + data.size() + 1 + rng() % 1000);
  expect_refused(open(), StatusCode::kCorrupt, {path, "header length"});
  // Corrupt JSON.
  testing::write_raw_safetensors(path, header.substr(0, header.size() / 2), data);
  expect_refused(open(), StatusCode::kCorrupt, {path, "JSON"});
  testing::write_raw_safetensors(path, "[1, 2]  ", data);
  expect_refused(open(), StatusCode::kCorrupt, {path, "object"});
  // The same name twice in one header.
  testing::write_raw_safetensors(
      path, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      {1, 2});
  expect_refused(open(), StatusCode::kCorrupt, {path, "'a'", "twice"});
}

TEST(Safetensors, BadEntriesAreRefused) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  const std::string path = dir.file("entries.safetensors");
  const int64_t n = 2 + int64_t(rng() % 50);
  std::vector<uint8_t> data(size_t(n) * 8);
  for (uint8_t& b : data) b = uint8_t(rng());
  const std::string nb = std::to_string(n * 4);
  auto refused = [&](const std::string& header, StatusCode code, std::initializer_list<std::string> names) {
    SCOPED_TRACE(header);
    testing::write_raw_safetensors(path, header, data);
    expect_refused(SafetensorsCheckpoint::open_file(path).status(), code, names);
  };
  const std::string shape = std::string("[").append(std::to_string(n)).append("]");
  // Unknown dtype.
  refused(R"({"w":{"dtype":"Q4_K","shape":)" + shape + R"(,"data_offsets":[0,)" + nb + "]}}", StatusCode::kUnsupported,
          {path, "'w'", "Q4_K"});
  // Size mismatch: F32 [n] needs 4n bytes, the range holds 4n + 4.
  refused(R"({"w":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,)" + std::to_string(n * 4 + 4) + "]}}",
          StatusCode::kCorrupt, {path, "'w'", nb + " bytes"});
  // Overlapping ranges.
  refused(R"({"x":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,)" + nb + R"(]},"y":{"dtype":"F32","shape":)" +
              shape + R"(,"data_offsets":[4,)" + std::to_string(n * 4 + 4) + "]}}",
          StatusCode::kCorrupt, {path, "'x'", "'y'", "overlap"});
  // Range beyond the data section.
  refused(std::string(R"({"w":{"dtype":"I64","shape":[)") + std::to_string(n + 1) + R"(],"data_offsets":[0,)" +
              std::to_string((n + 1) * 8) + "]}}",
          StatusCode::kCorrupt, {path, "'w'", "data section"});
  // Missing fields, wrong types, begin > end, negative sizes.
  refused(R"({"w":{"dtype":"F32","shape":)" + shape + "}}", StatusCode::kCorrupt, {path, "'w'", "data_offsets"});
  refused(R"({"w":{"shape":)" + shape + R"(,"data_offsets":[0,)" + nb + "]}}", StatusCode::kCorrupt, {path, "'w'", "dtype"});
  refused(R"({"w":{"dtype":"F32","data_offsets":[0,)" + nb + "]}}", StatusCode::kCorrupt, {path, "'w'", "shape"});
  refused(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", StatusCode::kCorrupt, {path, "'w'", "shape"});
  refused(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", StatusCode::kCorrupt, {path, "'w'", "data_offsets"});
  refused(R"({"w":[1,2,3]})", StatusCode::kCorrupt, {path, "'w'"});
  refused(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1],"data_offsets":[0,1]}})", StatusCode::kUnsupported, {path, "'w'"});
  // The same layout without the fault is accepted (the checks above are not over-eager).
  testing::write_raw_safetensors(path,
                                 R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":)" + shape +
                                     R"(,"data_offsets":[0,)" + nb + R"(]},"y":{"dtype":"F32","shape":)" + shape +
                                     R"(,"data_offsets":[)" + nb + "," + std::to_string(n * 8) + "]}}",
                                 data);
  Expected<SafetensorsCheckpoint> ok = SafetensorsCheckpoint::open_file(path);
  ASSERT_TRUE(ok.has_value()) << ok.status().message();
  EXPECT_EQ(std::memcmp(ok->find("y")->view.data, data.data() + n * 4, size_t(n) * 4), 0);
}

TEST(MappedFile, MapsBytesAndRefusesMissingFiles) {
  std::mt19937_64 rng(testing::fresh_seed());
  TempDir dir;
  std::string text(1 + rng() % 5000, ' ');
  for (char& c : text) c = char('a' + rng() % 26);
  testing::write_text(dir.file("f.bin"), text);
  Expected<std::unique_ptr<MappedFile>> f = MappedFile::open(dir.file("f.bin"));
  ASSERT_TRUE(f.has_value()) << f.status().message();
  ASSERT_EQ((*f)->size(), text.size());
  EXPECT_EQ(std::memcmp((*f)->data(), text.data(), text.size()), 0);
  expect_refused(MappedFile::open(dir.file("nope.bin")).status(), StatusCode::kNotFound, {"nope.bin"});
  expect_refused(MappedFile::open(dir.path()).status(), StatusCode::kIoError, {dir.path()});
  testing::write_text(dir.file("empty.bin"), "");
  Expected<std::unique_ptr<MappedFile>> empty = MappedFile::open(dir.file("empty.bin"));
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ((*empty)->size(), 0u);
}

}  // namespace
}  // namespace moex
