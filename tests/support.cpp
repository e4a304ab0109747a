#include "tests/support.h"

#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

namespace kolos::test {

namespace {
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace

RunResult run_shell(const std::string& command) {
  RunResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = pclose(pipe);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) r.exit_code = 128 + WTERMSIG(status);
  return r;
}

RunResult run_kolos(const std::vector<std::string>& args) {
  std::string cmd = shell_quote(KOLOS_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  return run_shell("cd " + shell_quote(KOLOS_SOURCE_DIR) + " && " + cmd);
}

TempDir::TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::path(KOLOS_BINARY).parent_path().string() + "/test-tmp/" + tag + "-" + std::to_string(getpid()) + "-" +
          std::to_string(counter++);
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string last_json_line(const std::string& text) {
  std::istringstream in(text);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') continue;
    if (nlohmann::json::accept(line)) last = line;
  }
  return last;
}

double rel_diff(const at::Tensor& got, const at::Tensor& want) {
  const double norm = want.norm().item<double>();
  return (got - want).norm().item<double>() / (norm > 0 ? norm : 1.0);
}

bool have_python_torch() {
  static const bool ok = run_shell("/usr/bin/python3 -c 'import torch'").exit_code == 0;
  return ok;
}

std::string default_data_dir() { return std::string(KOLOS_SOURCE_DIR) + "/.cache/data/moby-dick-byte"; }

std::string in_private_tmpfs(const std::string& dir, const std::string& size, const std::function<std::string()>& body) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return std::string("threw: pipe: ") + std::strerror(errno);
  const pid_t child = ::fork();
  if (child < 0) return std::string("threw: fork: ") + std::strerror(errno);
  if (child == 0) {
    std::string report;
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0) {
      report = std::string("skip: cannot mount a tmpfs here: ") + std::strerror(errno);
    } else {
      try {
        report = body();
      } catch (const std::exception& e) {
        report = std::string("threw: ") + e.what();
      }
    }
    (void)!::write(pipe_fds[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string report;
  char buffer[4096];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0;) report.append(buffer, n);
  ::close(pipe_fds[0]);
  int status = 0;
  if (::waitpid(child, &status, 0) != child) return "threw: waitpid failed";
  if (!WIFEXITED(status)) return "threw: the child died with signal " + std::to_string(WTERMSIG(status));
  return report;
}

}  // namespace kolos::test
