#include "kolos/data/file_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kolos/core/error.h"

namespace kolos::data {

std::string read_whole_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  KOLOS_CHECK(!std::filesystem::is_directory(path, ec), "{} {}: is a directory, expected a file", what, path);
  std::ifstream in(path, std::ios::binary);
  KOLOS_CHECK(in.good(), "{} {}: cannot open ({})", what, path, std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  KOLOS_CHECK(!in.bad(), "{} {}: read error", what, path);
  return out.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    KOLOS_CHECK(out.good(), "cannot write {} ({})", tmp, std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    KOLOS_CHECK(out.good(), "cannot write {} (disk full?)", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  KOLOS_CHECK(!ec, "cannot rename {} to {} ({})", tmp, path, ec.message());
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  write_file_atomic(to, read_whole_file(from, "tokenizer file"));
}

}  // namespace kolos::data
