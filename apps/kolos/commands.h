// The subcommands of the `kolos` binary. Each takes the arguments after its name (argv[0] is the command name),
// returns the process exit code, and throws InputError / PeerError for main() to turn into exit codes 2 / 3.
#pragma once

#include <CLI/CLI.hpp>

namespace kolos::app {

int train_main(int argc, char** argv);
int prepare_main(int argc, char** argv);
int generate_main(int argc, char** argv);
int plot_main(int argc, char** argv);
int bench_main(int argc, char** argv);
int run_main(int argc, char** argv);

// Parses argv with CLI11. Returns false when --help was printed (the command then returns 0); a parse error
// becomes an InputError naming the flag.
bool parse_args(CLI::App& app, int argc, char** argv);

}  // namespace kolos::app
