// Helpers shared by the tests: running the kolos binary, temporary directories, reference-Python calls.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace kolos::test {

struct RunResult {
  int exit_code = -1;  // the process's exit status, or 128+signal when killed
  std::string output;  // stdout and stderr, interleaved
};

// Runs build/kolos with `args` (each passed as one argument, no shell) from the source directory.
RunResult run_kolos(const std::vector<std::string>& args);
// Runs a shell command, capturing stdout+stderr.
RunResult run_shell(const std::string& command);

// A fresh empty directory under the build tree's test area, removed by the destructor.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Runs body() in a child process that has mounted a tmpfs of `size` (a mount option value, "64m") at `dir` in a
// mount namespace of its own (needs root or CAP_SYS_ADMIN), so the mount disappears with the child however it
// ends. Returns body's report ("" = all well; an exception it throws becomes "threw: ..."), or "skip: <why>" when
// the tmpfs cannot be mounted here. `dir` must exist.
std::string in_private_tmpfs(const std::string& dir, const std::string& size, const std::function<std::string()>& body);

// The last line of `text` that parses as a JSON object, or "" when none does.
std::string last_json_line(const std::string& text);

// True when /usr/bin/python3 can import torch (Debian's python3-torch), for reference comparisons.
bool have_python_torch();

// ‖got − want‖₂ / ‖want‖₂ (÷ 1 when want is zero): how far a parallel result is from the one-process one.
double rel_diff(const at::Tensor& got, const at::Tensor& want);

// The default demo token directory exists (prepared by `make data`).
std::string default_data_dir();

}  // namespace kolos::test
