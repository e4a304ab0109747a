// Matrix-product throughput of this machine as LibTorch runs it, and which BLAS LibTorch calls.
//
// The fp32 rate is the denominator of MFU (DESIGN: the best at::mm of 2048×2048 fp32 on all cores); `kolos bench
// gemm` prints it, and the trainer may measure it once at start-up with run_gemm_bench(2048, 0, options) with
// options.bf16 = false.
#pragma once

#include <cstdint>
#include <string>

namespace kolos::train {

struct GemmBenchOptions {
  int warmup = 2;    // untimed products before timing (thread start-up, page faults of the output)
  int repeats = 5;   // timed products; the best one counts
  bool bf16 = true;  // also time bf16 (oneDNN); off when only the fp32 rate is wanted
};

struct GemmBenchResult {
  int64_t n = 0;             // the matrices are n×n; one product is 2·n³ flops
  int threads = 0;           // intra-op threads (at::get_num_threads()) during the measurement
  int blas_threads = -1;     // OpenBLAS's own thread count, -1 when the BLAS is not OpenBLAS
  double fp32_gflops = 0;    // best of the repeats, GFLOP/s (10⁹ flop/s)
  double fp32_best_ms = 0;
  double bf16_gflops = 0;    // 0 when not measured
  double bf16_best_ms = 0;
  std::string blas;          // resolved path of the library that provides sgemm_, "" when none is loaded
  std::string blas_config;   // openblas_get_config() and core name when the BLAS is OpenBLAS, else ""
};

// Sets LibTorch's intra-op threads to `threads` (≤ 0: every core this process may run on) and OpenBLAS's threads to
// the same, then times at::mm_out of two n×n random matrices in fp32 (and bf16). The thread counts stay set
// afterwards. Blocks for roughly (warmup + repeats) × 2n³ / rate seconds per dtype. Not thread-safe.
GemmBenchResult run_gemm_bench(int64_t n, int threads, const GemmBenchOptions& options = {});

// Cores this process may run on (its CPU affinity mask), at least 1.
int available_cores();

// Sets OpenBLAS's own thread pool to `threads` (at::set_num_threads does not reach it); no-op for other BLAS.
void set_blas_threads(int threads);

// Resolved path of the shared object that provides the BLAS `sgemm_` LibTorch calls (Debian: libblas.so.3 through
// the alternatives system, e.g. .../openblas-pthread/libblas.so.3, or .../blas/libblas.so.3 for the slow
// reference BLAS); "" when no BLAS is loaded.
std::string blas_library();

// libgomp reads OMP_WAIT_POLICY once, when it is loaded (before main), so setenv() inside the process is too late.
// When OMP_WAIT_POLICY is unset this sets it to PASSIVE and re-executes the current process (/proc/self/exe, same
// arguments, same pid) so that OpenMP threads sleep instead of spinning against OpenBLAS's threads on few cores;
// it returns only when no re-execution was needed or it failed. Call it first thing in a command, before any
// threads are started. Returns a description for the output, e.g. "PASSIVE (set by kolos: was unset)".
std::string ensure_passive_omp_wait();

}  // namespace kolos::train
