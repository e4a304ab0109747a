#include "kolos/core/units.h"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "kolos/core/error.h"

namespace kolos {

int64_t parse_bytes(const std::string& text, const std::string& what) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    KOLOS_CHECK(false, "{}: expected a size like \"2GiB\" or \"512MB\", got \"{}\"", what, text);
  }
  std::string unit;
  for (size_t i = pos; i < text.size(); ++i)
    if (!std::isspace(static_cast<unsigned char>(text[i]))) unit += static_cast<char>(std::tolower(text[i]));
  double mult = 0;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "kb") mult = 1e3;
  else if (unit == "mb") mult = 1e6;
  else if (unit == "gb") mult = 1e9;
  else if (unit == "tb") mult = 1e12;
  else if (unit == "kib") mult = 1024.0;
  else if (unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  KOLOS_CHECK(mult > 0 && value >= 0, "{}: expected a size like \"2GiB\" or \"512MB\", got \"{}\"", what, text);
  return static_cast<int64_t>(value * mult);
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", bytes, units[u]);
}

static int64_t read_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n) * 1024;
  return 0;
}

int64_t peak_rss_bytes() { return read_status_kb("VmHWM:"); }
int64_t current_rss_bytes() { return read_status_kb("VmRSS:"); }

}  // namespace kolos
