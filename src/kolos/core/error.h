// Two error channels, as in the PyTorch C++ frontend:
//  - InputError: the user gave something wrong (flag, config key or value, file, layout). Exit code 2, one line
//    that names the culprit and what was expected.
//  - PeerError: another rank failed or timed out. Exit code 3, naming the rank.
//  - anything else (std::logic_error from KOLOS_ASSERT, c10::Error ...) is an internal error: exit code 1.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kolos {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& what) : std::runtime_error(what) {}
};

class PeerError : public std::runtime_error {
 public:
  explicit PeerError(const std::string& what) : std::runtime_error(what) {}
};

// Thrown by `train` when SIGINT/SIGTERM asked it to stop; carries the exit code (130 or 143).
class Interrupted : public std::runtime_error {
 public:
  explicit Interrupted(int exit_code) : std::runtime_error("interrupted"), exit_code(exit_code) {}
  int exit_code;
};

namespace exit_code {
constexpr int kOk = 0;
constexpr int kInternal = 1;
constexpr int kBadInput = 2;
constexpr int kPeerFailed = 3;
constexpr int kVerifyFailed = 4;
}  // namespace exit_code

}  // namespace kolos

// Bad input: throws kolos::InputError with a formatted message. Use for everything a user can get wrong.
#define KOLOS_CHECK(cond, ...)                                  \
  do {                                                          \
    if (!(cond)) throw ::kolos::InputError(fmt::format(__VA_ARGS__)); \
  } while (0)

// Broken invariant inside kolos: throws std::logic_error (exit code 1) with the location.
#define KOLOS_ASSERT(cond, ...)                                                                    \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      throw std::logic_error(fmt::format("internal error at {}:{}: {}", __FILE__, __LINE__,       \
                                         fmt::format(__VA_ARGS__)));                               \
  } while (0)
