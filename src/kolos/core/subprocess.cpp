#include "kolos/core/subprocess.h"

#include <climits>
#include <cstdio>
#include <unistd.h>

#include "kolos/core/error.h"

namespace kolos {

std::string self_executable(const char* who) {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  KOLOS_CHECK(n > 0, "{}: cannot find its own executable", who);
  return std::string(buf, static_cast<size_t>(n));
}

nlohmann::json run_json_command(const std::string& command, const char* who) {
  FILE* pipe = popen(command.c_str(), "r");
  KOLOS_CHECK(pipe != nullptr, "{}: cannot run {}", who, command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  nlohmann::json last;
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    auto j = nlohmann::json::parse(out.substr(start, end - start), nullptr, false);
    if (j.is_object()) last = j;
    start = end + 1;
  }
  KOLOS_CHECK(status == 0 && last.is_object(), "{}: `{}` failed (status {}); output:\n{}", who, command, status, out);
  return last;
}

}  // namespace kolos
