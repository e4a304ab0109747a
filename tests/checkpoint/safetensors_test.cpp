// safetensors reader and writer: round trips, byte layout against the format specification (bytes built by hand,
// no PyTorch or safetensors package involved), and every kind of corrupt file.
#include "kolos/checkpoint/safetensors.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "tests/support.h"

namespace kolos::checkpoint {
namespace {

using kolos::test::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A file with the given header text (not padded) followed by `data`.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// Expects load_safetensors(path) to throw InputError whose message names `path` and contains `fragment`.
void expect_load_error(const std::string& path, const std::string& fragment) {
  try {
    load_safetensors(path);
    ADD_FAILURE() << "no error reading " << path << " (expected one mentioning \"" << fragment << "\")";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  }
}

TensorMap every_dtype() {
  at::manual_seed(7);
  TensorMap t;
  t["f64"] = at::randn({3, 5}, at::kDouble);
  t["f32"] = at::randn({4, 6});
  t["f16"] = at::randn({7}).to(at::kHalf);
  t["bf16"] = at::randn({2, 3, 4}).to(at::kBFloat16);
  t["i64"] = at::randint(-(int64_t{1} << 40), int64_t{1} << 40, {5}, at::kLong);
  t["i32"] = at::randint(-100000, 100000, {2, 2}, at::kInt);
  t["i16"] = at::randint(-30000, 30000, {9}, at::kShort);
  t["i8"] = at::randint(-128, 128, {3, 3}, at::kChar);
  t["u8"] = at::randint(0, 256, {11}, at::kByte);
  t["bool"] = at::randint(0, 2, {6}, at::kByte).to(at::kBool);
  return t;
}

void expect_same(const TensorMap& expected, const TensorMap& actual) {
  ASSERT_EQ(expected.size(), actual.size());
  for (const auto& [name, t] : expected) {
    ASSERT_TRUE(actual.count(name)) << name;
    const at::Tensor& got = actual.at(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(got.is_contiguous()) << name;
    EXPECT_TRUE(at::equal(got, t)) << name;
  }
}

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir("safetensors");
  const TensorMap tensors = every_dtype();
  save_safetensors(dir / "all.safetensors", tensors);
  Metadata meta{{"stale", "value"}};
  expect_same(tensors, load_safetensors(dir / "all.safetensors", &meta));
  EXPECT_TRUE(meta.empty());  // replaced by the file's (absent) metadata
}

TEST(Safetensors, RoundTripsNonContiguousScalarAndEmptyTensors) {
  TempDir dir("safetensors");
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  TensorMap tensors;
  tensors["transposed"] = base.t();                        // strides (1, 6)
  tensors["strided"] = base.slice(1, 1, 6, 2);             // every other column, storage offset 1
  tensors["expanded"] = at::arange(3, at::kInt).expand({4, 3});  // stride 0
  tensors["scalar"] = at::scalar_tensor(2.5, at::kDouble);      // 0-d
  tensors["empty"] = at::empty({0}, at::kFloat);
  tensors["empty_2d"] = at::empty({3, 0}, at::kBFloat16);
  tensors["grad"] = at::ones({2}).requires_grad_(true);
  ASSERT_FALSE(tensors["transposed"].is_contiguous());
  save_safetensors(dir / "views.safetensors", tensors);
  const TensorMap loaded = load_safetensors(dir / "views.safetensors");
  for (auto& [name, t] : tensors) t = t.detach();
  expect_same(tensors, loaded);
  EXPECT_EQ(loaded.at("scalar").dim(), 0);
  EXPECT_FALSE(loaded.at("grad").requires_grad());
}

TEST(Safetensors, RoundTripsMetadataAndNothingElse) {
  TempDir dir("safetensors");
  const Metadata meta{{"format", "pt"}, {"step", "120"}, {"note", "quotes \" and\nnewlines, ünïcode"}};
  save_safetensors(dir / "meta.safetensors", {}, meta);
  Metadata loaded;
  EXPECT_TRUE(load_safetensors(dir / "meta.safetensors", &loaded).empty());
  EXPECT_EQ(loaded, meta);

  save_safetensors(dir / "none.safetensors", {});
  EXPECT_TRUE(load_safetensors(dir / "none.safetensors").empty());
}

// The writer's bytes follow the specification: u64 LE header length, JSON header padded with spaces to a multiple
// of 8, tensors contiguous in name order, little-endian data.
TEST(Safetensors, WriterProducesTheSpecifiedLayout) {
  TempDir dir("safetensors");
  const at::Tensor b = at::tensor({1.5f, -2.0f});
  const at::Tensor a = at::tensor(std::vector<int16_t>{1, -2}, at::kShort).reshape({1, 2});
  save_safetensors(dir / "layout.safetensors", {{"b", b}, {"a", a}}, {{"k", "v"}});
  const std::string bytes = read_bytes(dir / "layout.safetensors");
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 12);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));  // padded with spaces only
  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["a"]["dtype"], "I16");
  EXPECT_EQ(j["a"]["shape"], nlohmann::json::array({1, 2}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({0, 4}));
  EXPECT_EQ(j["b"]["dtype"], "F32");
  EXPECT_EQ(j["b"]["shape"], nlohmann::json::array({2}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json::array({4, 12}));
  EXPECT_EQ(j["__metadata__"], nlohmann::json({{"k", "v"}}));
  // int16 1, -2 then float 1.5 (0x3FC00000), -2.0 (0xC0000000), all little-endian.
  const std::string expected_data("\x01\x00\xfe\xff\x00\x00\xc0\x3f\x00\x00\x00\xc0", 12);
  EXPECT_EQ(bytes.substr(8 + n), expected_data);
}

// A file written by hand from the specification (unpadded header, tensors not in name order) reads correctly.
TEST(Safetensors, ReadsAHandWrittenFile) {
  TempDir dir("safetensors");
  const std::string header =
      R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("ids":{"dtype":"I16","shape":[1,2],"data_offsets":[0,4]},)"
      R"("flag":{"dtype":"BOOL","shape":[],"data_offsets":[12,13]},)"
      R"("__metadata__":{"format":"pt"}})";
  const std::string data("\x01\x00\xfe\xff\x00\x00\xc0\x3f\x00\x00\x00\xc0\x01", 13);
  write_bytes(dir / "hand.safetensors", file_bytes(header, data));
  Metadata meta;
  const TensorMap t = load_safetensors(dir / "hand.safetensors", &meta);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_TRUE(at::equal(t.at("weight"), at::tensor({1.5f, -2.0f})));
  EXPECT_TRUE(at::equal(t.at("ids"), at::tensor(std::vector<int16_t>{1, -2}, at::kShort).reshape({1, 2})));
  EXPECT_EQ(t.at("flag").dim(), 0);
  EXPECT_TRUE(t.at("flag").item<bool>());
  EXPECT_EQ(meta, (Metadata{{"format", "pt"}}));
}

TEST(Safetensors, CorruptFilesAreInputErrorsNamingTheFile) {
  TempDir dir("safetensors");
  const std::string good = dir / "good.safetensors";
  save_safetensors(good, {{"w", at::ones({4, 4})}});
  const std::string bytes = read_bytes(good);
  const std::string tensor_ok = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\0');

  expect_load_error(dir / "missing.safetensors", "No such file");

  write_bytes(dir / "truncated.safetensors", bytes.substr(0, bytes.size() - 5));
  expect_load_error(dir / "truncated.safetensors", "\"w\"");

  write_bytes(dir / "tiny.safetensors", "\x10\x00");
  expect_load_error(dir / "tiny.safetensors", "truncated");

  write_bytes(dir / "long_header.safetensors", le64(1000) + "{}");
  expect_load_error(dir / "long_header.safetensors", "header length 1000");

  write_bytes(dir / "huge_header.safetensors", le64(~uint64_t{0}) + "{}");
  expect_load_error(dir / "huge_header.safetensors", "header length");

  write_bytes(dir / "bad_json.safetensors", file_bytes(R"({"w": {"dtype": "F32",)", eight));
  expect_load_error(dir / "bad_json.safetensors", "malformed JSON");

  write_bytes(dir / "not_object.safetensors", file_bytes("[1, 2]", ""));
  expect_load_error(dir / "not_object.safetensors", "not a JSON object");

  write_bytes(dir / "bad_dtype.safetensors",
              file_bytes(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight));
  expect_load_error(dir / "bad_dtype.safetensors", "unknown dtype \"F33\"");

  write_bytes(dir / "no_shape.safetensors", file_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", eight));
  expect_load_error(dir / "no_shape.safetensors", "\"shape\"");

  write_bytes(dir / "negative_dim.safetensors",
              file_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight));
  expect_load_error(dir / "negative_dim.safetensors", "non-negative");

  write_bytes(dir / "shape_mismatch.safetensors",
              file_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight));
  expect_load_error(dir / "shape_mismatch.safetensors", "needs 12 bytes");

  write_bytes(dir / "out_of_range.safetensors",
              file_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", eight));
  expect_load_error(dir / "out_of_range.safetensors", "outside the data area");

  write_bytes(dir / "reversed.safetensors",
              file_bytes(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight));
  expect_load_error(dir / "reversed.safetensors", "outside the data area");

  write_bytes(dir / "overlap.safetensors",
              file_bytes("{" + tensor_ok + R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight));
  expect_load_error(dir / "overlap.safetensors", "overlap");

  write_bytes(dir / "gap.safetensors",
              file_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight));
  expect_load_error(dir / "gap.safetensors", "gap");

  write_bytes(dir / "trailing.safetensors", file_bytes("{" + tensor_ok + "}", eight + "junk"));
  expect_load_error(dir / "trailing.safetensors", "trailing");

  write_bytes(dir / "bad_metadata.safetensors", file_bytes(R"({"__metadata__":{"step":3}})", ""));
  expect_load_error(dir / "bad_metadata.safetensors", "metadata \"step\"");

  expect_load_error(dir.path(), "not a regular file");
}

TEST(Safetensors, UnwritablePathsAreInputErrorsNamingThePath) {
  TempDir dir("safetensors");
  const TensorMap tensors{{"w", at::ones({1024})}};
  const std::string no_dir = dir / "no/such/dir/x.safetensors";
  try {
    save_safetensors(no_dir, tensors);
    ADD_FAILURE() << "no error writing " << no_dir;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(no_dir), std::string::npos) << e.what();
  }
  // /dev/full accepts open() and fails every write with ENOSPC: a full disk.
  try {
    save_safetensors("/dev/full", tensors);
    ADD_FAILURE() << "no error writing /dev/full";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/full"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("disk full"), std::string::npos) << e.what();
  }
  EXPECT_THROW(save_safetensors(dir / "x.safetensors", {{"__metadata__", at::ones({1})}}), InputError);
  EXPECT_THROW(save_safetensors(dir / "x.safetensors", {{"c", at::ones({1}, at::kComplexFloat)}}), InputError);
  EXPECT_THROW(save_safetensors(dir / "x.safetensors", {}, {{"bad", "\xff\xfe"}}), InputError);
}

}  // namespace
}  // namespace kolos::checkpoint
