#include "kolos/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors stores little-endian data; add byte swapping");

namespace kolos::checkpoint {

namespace {

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, before allocating for one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"}, {at::kLong, "I64"},
    {at::kInt, "I32"},    {at::kShort, "I16"}, {at::kChar, "I8"},   {at::kByte, "U8"},      {at::kBool, "BOOL"},
};

const char* dtype_name(at::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d.name;
  return nullptr;
}

bool dtype_from_name(const std::string& name, at::ScalarType* type) {
  for (const auto& d : kDtypes)
    if (name == d.name) {
      *type = d.type;
      return true;
    }
  return false;
}

std::string dtype_list() {
  std::string out;
  for (const auto& d : kDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and returns close()'s errno (0 on success): NFS and friends report write errors only here.
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// Writes all `size` bytes; returns 0 or the errno of the failing write.
int write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

// Reads exactly `size` bytes at `offset`; returns false on a short read (the caller names what was truncated).
bool read_all(int fd, void* data, size_t size, uint64_t offset, int* error) {
  char* p = static_cast<char*>(data);
  *error = 0;
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, std::min<size_t>(size, size_t{1} << 30), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = n < 0 ? errno : 0;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

struct Entry {
  std::string name;
  at::ScalarType type;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// Parses and checks one tensor entry of the header; the data area holds `data_bytes` bytes.
Entry parse_entry(const std::string& path, const std::string& name, const json& info, uint64_t data_bytes) {
  const auto where = [&] { return fmt::format("safetensors file {}: tensor \"{}\"", path, name); };
  KOLOS_CHECK(info.is_object(), "{}: expected an object with dtype, shape and data_offsets, found {}", where(),
              info.dump());
  Entry e;
  e.name = name;

  const auto dtype = info.find("dtype");
  KOLOS_CHECK(dtype != info.end() && dtype->is_string(), "{}: missing or non-string \"dtype\"", where());
  KOLOS_CHECK(dtype_from_name(dtype->get<std::string>(), &e.type), "{}: unknown dtype \"{}\" (kolos reads {})",
              where(), dtype->get<std::string>(), dtype_list());

  const auto shape = info.find("shape");
  KOLOS_CHECK(shape != info.end() && shape->is_array(), "{}: missing or non-array \"shape\"", where());
  uint64_t numel = 1;
  for (const auto& dim : *shape) {
    KOLOS_CHECK(dim.is_number_unsigned(), "{}: shape {} has a dimension that is not a non-negative integer",
                where(), shape->dump());
    const uint64_t size = dim.get<uint64_t>();
    KOLOS_CHECK(size <= static_cast<uint64_t>(INT64_MAX) && !__builtin_mul_overflow(numel, size, &numel),
                "{}: shape {} is too large", where(), shape->dump());
    e.shape.push_back(static_cast<int64_t>(size));
  }

  const auto offsets = info.find("data_offsets");
  KOLOS_CHECK(offsets != info.end() && offsets->is_array() && offsets->size() == 2 &&
                  (*offsets)[0].is_number_unsigned() && (*offsets)[1].is_number_unsigned(),
              "{}: \"data_offsets\" must be [begin, end] with non-negative integers, found {}", where(),
              offsets == info.end() ? std::string("nothing") : offsets->dump());
  e.begin = (*offsets)[0].get<uint64_t>();
  e.end = (*offsets)[1].get<uint64_t>();
  KOLOS_CHECK(e.begin <= e.end && e.end <= data_bytes,
              "{}: data_offsets [{}, {}] lie outside the data area of {} bytes (file truncated or header corrupt)",
              where(), e.begin, e.end, data_bytes);

  const uint64_t itemsize = c10::elementSize(e.type);
  uint64_t nbytes = 0;
  KOLOS_CHECK(!__builtin_mul_overflow(numel, itemsize, &nbytes) && nbytes == e.end - e.begin,
              "{}: shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", where(), shape->dump(),
              dtype->get<std::string>(), numel * itemsize, e.begin, e.end, e.end - e.begin);
  return e;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  // 1. Contiguous CPU copies (no copy when already so) and the header describing them in name order.
  std::vector<at::Tensor> data;
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    KOLOS_CHECK(name != kMetadataKey, "cannot save {}: \"{}\" is reserved for metadata, not a tensor name", path,
                kMetadataKey);
    KOLOS_CHECK(tensor.defined(), "cannot save {}: tensor \"{}\" is undefined", path, name);
    const char* dtype = dtype_name(tensor.scalar_type());
    KOLOS_CHECK(dtype != nullptr, "cannot save {}: tensor \"{}\" has dtype {}, safetensors stores {}", path, name,
                c10::toString(tensor.scalar_type()), dtype_list());
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(std::move(t));
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  // 2. The header is padded with spaces so that the data starts 8-byte aligned.
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const json::type_error& e) {  // JSON strings must be UTF-8
    throw InputError(fmt::format("cannot save {}: a tensor name or metadata string is not valid UTF-8 ({})", path,
                                 e.what()));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  // 3. Write, fsync, close: every step can be where a full disk shows up.
  FileDescriptor fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  KOLOS_CHECK(fd.get() >= 0, "cannot write safetensors file {}: {}", path, std::strerror(errno));
  const auto fail = [&](const char* what, int error) {
    // Leave no truncated checkpoint behind, but never unlink something that is not a regular file (/dev/full).
    struct stat st;
    if (::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode)) ::unlink(path.c_str());
    throw InputError(fmt::format("cannot write safetensors file {}: {} failed: {}{}", path, what,
                                 std::strerror(error), error == ENOSPC ? " (disk full?)" : ""));
  };
  if (int e = write_all(fd.get(), &header_size, sizeof(header_size))) fail("write", e);
  if (int e = write_all(fd.get(), header_text.data(), header_text.size())) fail("write", e);
  for (const auto& t : data)
    if (int e = write_all(fd.get(), t.data_ptr(), t.numel() * t.element_size())) fail("write", e);
  if (::fsync(fd.get()) != 0) fail("fsync", errno);
  if (int e = fd.close())
    throw InputError(fmt::format("cannot write safetensors file {}: close failed: {}", path, std::strerror(e)));
}

TensorMap load_safetensors(const std::string& path, Metadata* metadata) {
  // 1. The 8-byte header length, checked against the file size before anything is allocated.
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  KOLOS_CHECK(fd.get() >= 0, "cannot open safetensors file {}: {}", path, std::strerror(errno));
  struct stat st;
  KOLOS_CHECK(::fstat(fd.get(), &st) == 0, "cannot stat safetensors file {}: {}", path, std::strerror(errno));
  KOLOS_CHECK(S_ISREG(st.st_mode), "safetensors file {} is not a regular file", path);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  KOLOS_CHECK(file_size >= 8, "safetensors file {} is truncated: {} bytes, shorter than the 8-byte header length",
              path, file_size);
  uint64_t header_size = 0;
  int error = 0;
  KOLOS_CHECK(read_all(fd.get(), &header_size, 8, 0, &error), "cannot read safetensors file {}: {}", path,
              std::strerror(error));
  KOLOS_CHECK(header_size <= file_size - 8 && header_size <= kMaxHeaderBytes,
              "safetensors file {} is truncated or not a safetensors file: header length {} but the file has {} "
              "bytes",
              path, header_size, file_size);

  // 2. The JSON header.
  std::string header_text(header_size, '\0');
  KOLOS_CHECK(read_all(fd.get(), header_text.data(), header_size, 8, &error), "cannot read safetensors file {}: {}",
              path, std::strerror(error));
  json header;
  try {
    header = json::parse(header_text);
  } catch (const json::parse_error& e) {
    throw InputError(fmt::format("safetensors file {} has a malformed JSON header: {}", path, e.what()));
  }
  KOLOS_CHECK(header.is_object(), "safetensors file {}: the header is not a JSON object", path);

  // 3. Every entry checked on its own, then all together: sorted by offset they must tile the data area.
  const uint64_t data_start = 8 + header_size;
  const uint64_t data_bytes = file_size - data_start;
  std::vector<Entry> entries;
  Metadata meta;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      KOLOS_CHECK(info.is_object(), "safetensors file {}: \"{}\" must be an object of strings", path, kMetadataKey);
      for (const auto& [key, value] : info.items()) {
        KOLOS_CHECK(value.is_string(), "safetensors file {}: metadata \"{}\" is not a string: {}", path, key,
                    value.dump());
        meta[key] = value.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, name, info, data_bytes));
  }
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : by_offset) {
    KOLOS_CHECK(e->begin >= covered, "safetensors file {}: tensors \"{}\" and \"{}\" overlap (data_offsets [{}, {}])",
                path, previous ? previous->name : "", e->name, e->begin, e->end);
    KOLOS_CHECK(e->begin == covered, "safetensors file {}: tensor \"{}\" starts at {}, leaving a gap after byte {}",
                path, e->name, e->begin, covered);
    covered = e->end;
    previous = e;
  }
  KOLOS_CHECK(covered == data_bytes,
              "safetensors file {}: the tensors cover {} bytes of data but the file holds {} after the header "
              "(trailing garbage or a corrupt header)",
              path, covered, data_bytes);

  // 4. The data, straight into freshly allocated tensors.
  TensorMap tensors;
  for (const auto& e : entries) {
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.type));
    KOLOS_CHECK(read_all(fd.get(), t.data_ptr(), e.end - e.begin, data_start + e.begin, &error),
                "safetensors file {}: cannot read tensor \"{}\": {}", path, e.name,
                error ? std::strerror(error) : "file truncated while reading");
    tensors.emplace(e.name, std::move(t));
  }
  if (metadata) *metadata = std::move(meta);
  return tensors;
}

}  // namespace kolos::checkpoint
