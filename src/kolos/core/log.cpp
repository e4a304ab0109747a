#include "kolos/core/log.h"

#include <cstdio>

namespace kolos::log {

namespace {
Level g_level = Level::kInfo;
}

void set_level(Level level) { g_level = level; }
Level level() { return g_level; }

void write(Level lvl, const std::string& message) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "[kolos %s] %s\n", names[static_cast<int>(lvl)], message.c_str());
  std::fflush(stderr);
}

}  // namespace kolos::log
