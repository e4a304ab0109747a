// Whole-file reads and atomic writes for the data layer (token directories, tokenizer files).
#pragma once

#include <string>

namespace kolos::data {

// The bytes of `path`. InputError "<what> <path>: <reason>" when it cannot be read (missing, a directory ...).
std::string read_whole_file(const std::string& path, const std::string& what);

// Writes `bytes` to `path` + ".tmp" and renames it to `path`, so a reader never sees a partial file.
// InputError naming the path when it cannot be written.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Copies `from` to `to` through a temporary name and a rename (InputError naming the failing path).
void copy_file_atomic(const std::string& from, const std::string& to);

}  // namespace kolos::data
