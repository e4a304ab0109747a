// `kolos bench gemm|train`: benchmarks that print a human summary and, as their last line, one JSON object.
#include <cmath>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/dist/bench_comm.h"
#include "kolos/memory/bench_io.h"
#include "kolos/optim/bench_optim.h"
#include "kolos/train/bench_train.h"
#include "kolos/train/gemm_bench.h"

namespace kolos::app {

namespace {

const char* kBenchUsage =
    "usage: kolos bench BENCHMARK [ARGS...]\n"
    "\n"
    "benchmarks (each prints a summary, then one JSON object as its last line):\n"
    "  gemm    at::mm throughput, fp32 and bf16, on all cores; the BLAS LibTorch uses (the fp32 rate is MFU's\n"
    "          denominator)\n"
    "  train   training-step throughput, MFU and peak memory of a model\n"
    "  comm    all-reduce / all-gather / reduce-scatter bandwidth over the world group\n"
    "          (under a launcher: kolos run -n 2 -- kolos bench comm)\n"
    "  io      sequential O_DIRECT write and read bandwidth of a disk through the NVMe tier's IO layer\n"
    "  optim   the fused AdamW step (fp32 or bf16) on 124M parameters against the memory-bandwidth floor\n"
    "  tp      1D, 2D, 2.5D and 3D tensor parallelism on one model: parameter, activation and collective bytes\n"
    "          per rank (starts its own processes: kolos bench tp --ranks 8)\n"
    "\n"
    "`kolos bench BENCHMARK --help` describes each.\n";

double round_to(double x, int digits) { return std::round(x * std::pow(10, digits)) / std::pow(10, digits); }

int gemm_main(int argc, char** argv) {
  CLI::App app{"Times at::mm of two n×n matrices in fp32 and bf16 on all cores (best of --repeats after --warmup)\n"
               "and reports which BLAS LibTorch calls. Prints a summary, then one JSON line:\n"
               "{\"fp32_gflops\", \"bf16_gflops\", \"threads\", \"blas\", \"n\", ...}.",
               "bench gemm"};
  int64_t n = 2048;
  int threads = 0;
  train::GemmBenchOptions options;
  bool no_bf16 = false;
  app.add_option("-n,--size", n, "matrix size n (the matrices are n×n)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "intra-op threads; 0: every core this process may use")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--repeats", options.repeats, "timed products per dtype; the best counts")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup", options.warmup, "untimed products per dtype before timing")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_flag("--no-bf16", no_bf16, "time fp32 only");
  if (!parse_args(app, argc, argv)) return 0;
  options.bf16 = !no_bf16;

  // Before any OpenMP thread starts; may re-execute this process with OMP_WAIT_POLICY=PASSIVE.
  const std::string wait_policy = train::ensure_passive_omp_wait();
  const train::GemmBenchResult r = train::run_gemm_bench(n, threads, options);

  std::printf("kolos bench gemm: at::mm of %lldx%lld matrices, best of %d after %d warm-up products\n",
              static_cast<long long>(n), static_cast<long long>(n), options.repeats, options.warmup);
  std::printf("  threads          %d intra-op (at::set_num_threads)%s\n", r.threads,
              r.blas_threads > 0 ? fmt::format(", {} OpenBLAS", r.blas_threads).c_str() : "");
  std::printf("  BLAS             %s\n", r.blas.empty() ? "none loaded" : r.blas.c_str());
  if (!r.blas_config.empty()) std::printf("                   %s\n", r.blas_config.c_str());
  if (r.blas.find("/blas/libblas") != std::string::npos)
    std::printf("  warning          this is the reference BLAS (slow); install libopenblas0-pthread\n");
  std::printf("  OMP_WAIT_POLICY  %s\n", wait_policy.c_str());
  std::printf("  fp32             %8.1f GFLOP/s  (%.2f ms per product)\n", r.fp32_gflops, r.fp32_best_ms);
  if (options.bf16)
    std::printf("  bf16             %8.1f GFLOP/s  (%.2f ms per product)\n", r.bf16_gflops, r.bf16_best_ms);

  nlohmann::ordered_json out = {{"fp32_gflops", round_to(r.fp32_gflops, 1)},
                        {"bf16_gflops", options.bf16 ? nlohmann::ordered_json(round_to(r.bf16_gflops, 1)) : nlohmann::ordered_json()},
                        {"threads", r.threads},
                        {"blas", r.blas},
                        {"n", r.n},
                        {"blas_threads", r.blas_threads},
                        {"blas_config", r.blas_config},
                        {"omp_wait_policy", wait_policy},
                        {"fp32_ms", round_to(r.fp32_best_ms, 2)},
                        {"bf16_ms", options.bf16 ? nlohmann::ordered_json(round_to(r.bf16_best_ms, 2))
                                                 : nlohmann::ordered_json()}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int bench_main(int argc, char** argv) {
  const std::string which = argc >= 2 ? argv[1] : "";
  if (which == "--help" || which == "-h" || which == "help") {
    std::fputs(kBenchUsage, stdout);
    return 0;
  }
  if (which == "gemm") return gemm_main(argc - 1, argv + 1);
  // `kolos bench train` lives in the library (src/kolos/train/bench_train.cpp): it builds a Trainer.
  if (which == "train") return train::bench_train_main(argc - 1, argv + 1);
  if (which == "comm") return dist::bench_comm_main(argc - 1, argv + 1);
  if (which == "io") return memory::bench_io_main(argc - 1, argv + 1);
  if (which == "optim") return optim::bench_optim_main(argc - 1, argv + 1);
  if (which == "tp") return bench_tp_main(argc - 1, argv + 1);
  throw InputError(which.empty() ? "kolos bench: which benchmark? expected gemm, train, comm, io, optim or tp (see kolos bench --help)"
                                 : fmt::format("kolos bench: unknown benchmark \"{}\" (expected gemm, train, comm, io, optim or tp; see "
                                               "kolos bench --help)",
                                               which));
}

}  // namespace kolos::app
