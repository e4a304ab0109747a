// `kolos run`: starts the local processes of a distributed run and watches them.
//
// On each machine (node) it starts `nproc_per_node` copies of `command`; copy `local` gets the torchrun variables
//   RANK = node_rank * nproc_per_node + local, WORLD_SIZE = nnodes * nproc_per_node,
//   LOCAL_RANK = local, LOCAL_WORLD_SIZE = nproc_per_node, GROUP_RANK = node_rank,
//   MASTER_ADDR / MASTER_PORT (--master, or 127.0.0.1 and a port that was free at start when it is absent),
//   KOLOS_RUN = 1, KOLOS_RESTART_COUNT = restarts so far,
// which kolos::dist::read_dist_env() reads back. Each copy leads its own process group, so signalling the group
// reaches everything the copy started.
//
// Contract:
//  - Output: global rank 0's stdout/stderr are passed through untouched; other ranks' output is discarded, unless
//    `tee`, where every rank's lines go to kolos run's stdout/stderr, each prefixed "[rank R] " and written whole
//    (lines of different ranks never mix mid-line; a last line without a newline gets one). Rank 0's stdin is
//    kolos run's unless that is a terminal; other ranks read /dev/null.
//  - SIGINT, SIGTERM and SIGHUP sent to kolos run are forwarded to every rank's process group; the run then ends
//    with the ranks' status (the first non-zero one in rank order, 128+N for a rank killed by signal N: 130 for
//    SIGINT, 143 for SIGTERM) and is not restarted. A third such signal sends SIGKILL.
//  - A rank that exits non-zero or is killed by a signal: one line on stderr,
//    "kolos run: rank R exited with status S" or "kolos run: rank R was killed by signal SIGNAME"; the other
//    ranks' groups get SIGTERM, and SIGKILL `stop_grace_s` later if still alive. Then, while fewer than
//    `max_restarts` restarts were made, every rank is started again (same command: its --resume continues from the
//    latest checkpoint); otherwise launch() returns 3 (exit_code::kPeerFailed).
//  - When every rank has been reaped, every rank's process group is SIGKILLed, so nothing a rank started outlives
//    the attempt; kolos run is a child subreaper (PR_SET_CHILD_SUBREAPER), so the descendants orphaned by that are
//    reaped too (waiting at most 2 s). Every rank is reaped before launch() returns, also when it throws. Ranks get
//    PR_SET_PDEATHSIG=SIGKILL, so they also end if kolos run itself is killed.
//  - launch() returns 0 when every rank exited 0.
// Not thread-safe: launch() blocks SIGCHLD/SIGINT/SIGTERM/SIGHUP in the calling thread and must be the only thing
// running in the process (it is `kolos run`'s whole job).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kolos::dist {

struct LauncherOptions {
  int nproc_per_node = 1;        // -n: processes on this machine, >= 1
  int nnodes = 1;                // --nnodes: machines in the run, >= 1
  int node_rank = 0;             // --node-rank: this machine, 0 <= node_rank < nnodes
  std::string master_addr;       // --master HOST: empty = 127.0.0.1 and a free port (only with nnodes == 1)
  int master_port = 0;           // --master :PORT
  int max_restarts = 0;          // --max-restarts: group restarts after a failure, >= 0
  bool tee = false;              // --tee: every rank's output, prefixed "[rank R] "
  double stop_grace_s = 10.0;    // SIGTERM → SIGKILL delay when stopping the survivors of a failure
  std::vector<std::string> command;  // the program and its arguments, looked up in PATH
};

// Checks the options; throws InputError naming the flag (-n, --nnodes, --node-rank, --master, --max-restarts, --).
void validate(const LauncherOptions& options);

// Runs the command as described above; returns the exit code for `kolos run` (0, 3, or the ranks' status after a
// forwarded signal). Validates first.
int launch(const LauncherOptions& options);

// "HOST:PORT" (or "[IPv6]:PORT") → {host, port}; throws InputError naming --master.
std::pair<std::string, int> parse_master(const std::string& text);

// A TCP port that nothing listens on right now (bound to port 0 and released). Another process may take it
// before the ranks do; the window is short.
int find_free_port();

}  // namespace kolos::dist
