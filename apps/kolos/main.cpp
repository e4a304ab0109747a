// kolos: one binary, one subcommand per task. Exit codes (DESIGN): 0 ok, 2 bad input, 3 peer failed,
// 4 verify out of tolerance, 1 internal error, 130/143 interrupted.
#include <cstdio>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#include <malloc.h>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/train/gemm_bench.h"

namespace {

const char* kUsage =
    "usage: kolos COMMAND [ARGS...]\n"
    "\n"
    "commands:\n"
    "  train      train a model (default: the tiny recipe on the demo corpus)\n"
    "  prepare    tokenize text files into token files (train/validation split, baselines)\n"
    "  generate   sample text from a checkpoint\n"
    "  plot       draw loss and tokens/s of a run directory as a PNG\n"
    "  bench      benchmarks: gemm, train, comm, io, optim\n"
    "  run        start N processes of a distributed run: kolos run -n N -- kolos train ...\n"
    "  verify     check parallel layouts against one process (exit 4 when out of tolerance)\n"
    "\n"
    "`kolos COMMAND --help` describes each command.\n";

int dispatch(int argc, char** argv) {
  using namespace kolos::app;
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return kolos::exit_code::kBadInput;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "train") return train_main(argc - 1, argv + 1);
  if (cmd == "prepare") return prepare_main(argc - 1, argv + 1);
  if (cmd == "generate") return generate_main(argc - 1, argv + 1);
  if (cmd == "plot") return plot_main(argc - 1, argv + 1);
  if (cmd == "bench") return bench_main(argc - 1, argv + 1);
  if (cmd == "run") return run_main(argc - 1, argv + 1);
  if (cmd == "verify") return verify_main(argc - 1, argv + 1);
  throw kolos::InputError(fmt::format(
      "unknown command \"{}\" (expected train, run, verify, prepare, generate, plot or bench; see kolos --help)", cmd));
}

}  // namespace

int main(int argc, char** argv) {
  // OpenMP threads must sleep, not spin, when OpenBLAS's threads share the cores (re-executes once if unset).
  kolos::train::ensure_passive_omp_wait();
  // Training allocates and frees the same large activation buffers every step. Keep freed memory in the heap
  // (no mmap for large blocks, no trimming) so the next step reuses warm pages instead of faulting in fresh ones.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  try {
    return dispatch(argc, argv);
  } catch (const kolos::InputError& e) {
    std::fprintf(stderr, "kolos: error: %s\n", e.what());
    return kolos::exit_code::kBadInput;
  } catch (const kolos::PeerError& e) {
    std::fprintf(stderr, "kolos: peer failure: %s\n", e.what());
    return kolos::exit_code::kPeerFailed;
  } catch (const kolos::Interrupted& e) {
    return e.exit_code;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "kolos: internal error (torch): %s\n", e.what_without_backtrace());
    return kolos::exit_code::kInternal;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kolos: internal error: %s\n", e.what());
    return kolos::exit_code::kInternal;
  }
}
