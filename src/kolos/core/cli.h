// Command-line parsing shared by every kolos command (apps/kolos and the benchmarks in the library).
#pragma once

#include <CLI/CLI.hpp>

namespace kolos {

// Parses argv with CLI11. Returns false when --help was printed (the command then returns 0); a parse error
// becomes an InputError "kolos <app name>: <what> (see kolos <app name> --help)".
bool parse_args(CLI::App& app, int argc, char** argv);

}  // namespace kolos
