#include "kolos/data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "kolos/data/file_io.h"

namespace kolos::data {

namespace {

constexpr const char* kFormat = "kolos-tokens-v1";

template <typename T>
T field(const nlohmann::json& object, const std::string& path, const char* key, const char* expected) {
  const auto it = object.find(key);
  KOLOS_CHECK(it != object.end(), "{}: missing key \"{}\" (expected {}; re-run kolos prepare)", path, key, expected);
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InputError(fmt::format("{}: key \"{}\" is {}, expected {} (re-run kolos prepare)", path, key, it->dump(),
                                 expected));
  }
}

int64_t count_field(const nlohmann::json& object, const std::string& path, const char* key) {
  const auto it = object.find(key);
  KOLOS_CHECK(it != object.end() && it->is_number_integer() && it->get<int64_t>() >= 0,
              "{}: key \"{}\" is {}, expected a non-negative integer (re-run kolos prepare)", path, key,
              it == object.end() ? "missing" : it->dump());
  return it->get<int64_t>();
}

}  // namespace

TokenMeta read_token_meta(const std::string& dir) {
  const std::string path = dir + "/meta.json";
  KOLOS_CHECK(std::filesystem::exists(path), "{}: not found (expected a token directory written by kolos prepare)",
              path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_whole_file(path, "token metadata"));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON ({}); re-run kolos prepare", path, e.what()));
  }
  KOLOS_CHECK(j.is_object(), "{}: expected a JSON object", path);
  const auto format = field<std::string>(j, path, "format", "a string");
  KOLOS_CHECK(format == kFormat, "{}: format is \"{}\", expected \"{}\"", path, format, kFormat);

  TokenMeta meta;
  meta.tokenizer = field<std::string>(j, path, "tokenizer", "\"byte\", \"gpt2\" or \"sentencepiece\"");
  KOLOS_CHECK(meta.tokenizer == "byte" || meta.tokenizer == "gpt2" || meta.tokenizer == "sentencepiece",
              "{}: tokenizer is \"{}\", expected \"byte\", \"gpt2\" or \"sentencepiece\"", path, meta.tokenizer);
  meta.tokenizer_files = field<std::vector<std::string>>(j, path, "tokenizer_files", "a list of file names");
  meta.vocab = count_field(j, path, "vocab");
  KOLOS_CHECK(meta.vocab > 0, "{}: vocab is 0, expected a positive vocabulary size", path);
  meta.dtype = field<std::string>(j, path, "dtype", "\"uint16\" or \"uint32\"");
  KOLOS_CHECK(meta.dtype == "uint16" || meta.dtype == "uint32", "{}: dtype is \"{}\", expected \"uint16\" or \"uint32\"",
              path, meta.dtype);
  KOLOS_CHECK(meta.dtype == "uint32" || meta.vocab <= 65536, "{}: dtype uint16 cannot hold a vocabulary of {}", path,
              meta.vocab);
  meta.train_tokens = count_field(j, path, "train_tokens");
  meta.val_tokens = count_field(j, path, "val_tokens");
  meta.train_bytes = count_field(j, path, "train_bytes");
  meta.val_bytes = count_field(j, path, "val_bytes");
  const auto baselines = j.find("baselines");
  KOLOS_CHECK(baselines != j.end() && baselines->is_object(),
              "{}: missing key \"baselines\" (expected {{\"unigram_bpb\": x, \"bigram_bpb\": y}})", path);
  meta.unigram_bpb = field<double>(*baselines, path, "unigram_bpb", "a number");
  meta.bigram_bpb = field<double>(*baselines, path, "bigram_bpb", "a number");
  meta.sources = field<std::vector<std::string>>(j, path, "sources", "a list of input paths");
  return meta;
}

void write_token_meta(const std::string& dir, const TokenMeta& meta) {
  const nlohmann::json j = {
      {"format", kFormat},
      {"tokenizer", meta.tokenizer},
      {"tokenizer_files", meta.tokenizer_files},
      {"vocab", meta.vocab},
      {"dtype", meta.dtype},
      {"train_tokens", meta.train_tokens},
      {"val_tokens", meta.val_tokens},
      {"train_bytes", meta.train_bytes},
      {"val_bytes", meta.val_bytes},
      {"baselines", {{"unigram_bpb", meta.unigram_bpb}, {"bigram_bpb", meta.bigram_bpb}}},
      {"sources", meta.sources},
  };
  write_file_atomic(dir + "/meta.json", j.dump(2) + "\n");
}

TokenFile::TokenFile(const std::string& path, const std::string& dtype, int64_t expected_tokens) {
  KOLOS_CHECK(dtype == "uint16" || dtype == "uint32", "{}: token dtype \"{}\", expected \"uint16\" or \"uint32\"", path,
              dtype);
  width_ = dtype == "uint16" ? 2 : 4;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KOLOS_CHECK(fd >= 0, "{}: cannot open token file ({}); re-run kolos prepare", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(fmt::format("{}: not a regular file (expected a token file written by kolos prepare)", path));
  }
  const auto bytes = static_cast<int64_t>(st.st_size);
  if (bytes % width_ != 0 || (expected_tokens >= 0 && bytes != expected_tokens * width_)) {
    ::close(fd);
    throw InputError(expected_tokens >= 0
                         ? fmt::format("{}: {} bytes, expected {} ({} tokens of {}, as meta.json says); re-run kolos "
                                       "prepare",
                                       path, bytes, expected_tokens * width_, expected_tokens, dtype)
                         : fmt::format("{}: {} bytes is not a whole number of {} tokens", path, bytes, dtype));
  }
  size_ = bytes / width_;
  map_bytes_ = static_cast<size_t>(bytes);
  if (map_bytes_ > 0) {
    void* map = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    KOLOS_CHECK(map != MAP_FAILED, "{}: cannot memory-map ({})", path, std::strerror(err));
    map_ = map;
  } else {
    ::close(fd);
  }
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

TokenFile::TokenFile(TokenFile&& other) noexcept
    : map_(other.map_), map_bytes_(other.map_bytes_), width_(other.width_), size_(other.size_) {
  other.map_ = nullptr;
  other.map_bytes_ = 0;
  other.size_ = 0;
}

TokenFile& TokenFile::operator=(TokenFile&& other) noexcept {
  if (this != &other) {
    if (map_) ::munmap(map_, map_bytes_);
    map_ = other.map_;
    map_bytes_ = other.map_bytes_;
    width_ = other.width_;
    size_ = other.size_;
    other.map_ = nullptr;
    other.map_bytes_ = 0;
    other.size_ = 0;
  }
  return *this;
}

// Token files are little-endian; so are the machines kolos runs on (x86-64, aarch64), so ids are read in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "token files are read in place as little-endian ids");
int32_t TokenFile::operator[](int64_t i) const {
  KOLOS_ASSERT(i >= 0 && i < size_, "token index {} outside [0, {})", i, size_);
  if (width_ == 2) return static_cast<const uint16_t*>(map_)[i];
  return static_cast<int32_t>(static_cast<const uint32_t*>(map_)[i]);
}

void TokenFile::read(int64_t start, int64_t count, int64_t* out) const {
  KOLOS_ASSERT(start >= 0 && count >= 0 && start + count <= size_, "token range [{}, {}) outside [0, {})", start,
               start + count, size_);
  if (width_ == 2) {
    const auto* ids = static_cast<const uint16_t*>(map_) + start;
    for (int64_t i = 0; i < count; ++i) out[i] = ids[i];
  } else {
    const auto* ids = static_cast<const uint32_t*>(map_) + start;
    for (int64_t i = 0; i < count; ++i) out[i] = ids[i];
  }
}

}  // namespace kolos::data
