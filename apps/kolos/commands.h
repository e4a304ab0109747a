// The subcommands of the `kolos` binary. Each takes the arguments after its name (argv[0] is the command name),
// returns the process exit code, and throws InputError / PeerError for main() to turn into exit codes 2 / 3.
#pragma once

#include <CLI/CLI.hpp>

#include "kolos/core/cli.h"

namespace kolos::app {

int train_main(int argc, char** argv);
int prepare_main(int argc, char** argv);
int generate_main(int argc, char** argv);
int plot_main(int argc, char** argv);
int bench_main(int argc, char** argv);
int run_main(int argc, char** argv);
int verify_main(int argc, char** argv);
int bench_tp_main(int argc, char** argv);  // kolos bench tp (bench_tp.cpp)

using kolos::parse_args;

}  // namespace kolos::app
