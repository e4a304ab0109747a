// kolos run: starts the local processes of a distributed run (see src/kolos/dist/launcher.h for the contract).
#include <cstring>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/dist/launcher.h"

namespace kolos::app {

int run_main(int argc, char** argv) {
  CLI::App app{"Start N processes of a distributed run on this machine, each with the torchrun variables (RANK, "
               "WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Usage: kolos run -n N [flags] "
               "-- CMD ARGS...  A failed rank stops the others; the run then exits 3.",
               "run"};
  dist::LauncherOptions options;
  std::string master;
  app.add_option("-n,--nproc-per-node", options.nproc_per_node, "processes to start on this machine (default 1)");
  app.add_option("--nnodes", options.nnodes, "machines in the run (default 1; more need --master)");
  app.add_option("--node-rank", options.node_rank, "this machine's index, 0 .. nnodes-1 (default 0)");
  CLI::Option* master_flag = app.add_option("--master", master, "HOST:PORT of node 0's rendezvous (default: 127.0.0.1 and a free port)");
  app.add_option("--max-restarts", options.max_restarts,
                 "restart the whole group this many times after a rank fails (the command's --resume continues)");
  app.add_flag("--tee", options.tee, "show every rank's output, each line prefixed \"[rank R] \" (default: rank 0's)");

  // Everything after the first "--" is the command: never parsed as kolos run's own flags.
  int split = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      split = i;
      break;
    }
  }
  const char* usage = "kolos run: expected `--` and then the command, e.g. kolos run -n 2 -- kolos train";
  try {
    if (!parse_args(app, split, argv)) return 0;
  } catch (const InputError& e) {
    if (split == argc) throw InputError(fmt::format("{}; {}", e.what(), usage));  // the command without `--`
    throw;
  }
  KOLOS_CHECK(split < argc, "{}", usage);
  options.command.assign(argv + split + 1, argv + argc);
  if (master_flag->count() > 0) std::tie(options.master_addr, options.master_port) = dist::parse_master(master);
  return dist::launch(options);
}

}  // namespace kolos::app
