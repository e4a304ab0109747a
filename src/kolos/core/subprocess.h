// Running other processes from a command: the commands that start kolos itself (verify, bench tp) and the
// benchmarks that run a reference program and read its JSON.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace kolos {

// The path of the running executable (/proc/self/exe); InputError naming `who` when it cannot be read.
std::string self_executable(const char* who);

// Runs `command` through the shell and returns the last line of its stdout that parses as a JSON object;
// InputError naming `who`, the command, its status and its output when it fails or prints no JSON object.
nlohmann::json run_json_command(const std::string& command, const char* who);

}  // namespace kolos
