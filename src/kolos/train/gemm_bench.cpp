#include "kolos/train/gemm_bench.h"

#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kolos/core/error.h"
#include "kolos/core/timer.h"

namespace kolos::train {

namespace {

// Set in the environment of the re-executed process so that it can say who set OMP_WAIT_POLICY.
constexpr const char* kSetByKolos = "KOLOS_SET_OMP_WAIT_POLICY";

// OpenBLAS's own entry points, looked up at run time: the BLAS behind libblas.so.3 may be another one.
template <typename F>
F openblas_function(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}

// Best wall time in ms of `repeats` calls of at::mm_out(out, a, b) after `warmup` untimed ones.
double best_mm_ms(const at::Tensor& a, const at::Tensor& b, const GemmBenchOptions& options) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  for (int i = 0; i < options.warmup; ++i) at::mm_out(out, a, b);
  double best = 1e300;
  for (int i = 0; i < options.repeats; ++i) {
    Timer timer;
    at::mm_out(out, a, b);
    best = std::min(best, timer.ms());
  }
  return best;
}

}  // namespace

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
}

std::string blas_library() {
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info;
  if (sgemm && dladdr(sgemm, &info) && info.dli_fname) {
    char resolved[PATH_MAX];
    return realpath(info.dli_fname, resolved) ? resolved : info.dli_fname;
  }
  // Not in the global scope (loaded with RTLD_LOCAL?): the mapped files still show it.
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string file = line.substr(slash);
    const std::string base = file.substr(file.rfind('/') + 1);
    if (base.rfind("libblas.so", 0) == 0 || base.rfind("libopenblas", 0) == 0 || base.rfind("libmkl_rt", 0) == 0)
      return file;
  }
  return "";
}

std::string ensure_passive_omp_wait() {
  if (const char* policy = std::getenv("OMP_WAIT_POLICY")) {
    return std::getenv(kSetByKolos) ? fmt::format("{} (set by kolos: was unset)", policy)
                                    : fmt::format("{} (from the environment)", policy);
  }
  std::ifstream cmdline_file("/proc/self/cmdline", std::ios::binary);
  const std::string cmdline((std::istreambuf_iterator<char>(cmdline_file)), {});
  std::vector<std::string> args;
  for (size_t start = 0; start < cmdline.size();) {
    const size_t end = cmdline.find('\0', start);
    args.push_back(cmdline.substr(start, end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (args.empty()) return "unset (could not read /proc/self/cmdline to re-execute with PASSIVE)";
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv(kSetByKolos, "1", 1);
  std::fflush(stdout);
  std::fflush(stderr);
  execv("/proc/self/exe", argv.data());
  // Still here: exec failed. The variable is set for child processes, but this process's OpenMP already started.
  unsetenv(kSetByKolos);
  return fmt::format("default (re-executing with PASSIVE failed: {})", std::strerror(errno));
}

void set_blas_threads(int threads) {
  if (auto set = openblas_function<void (*)(int)>("openblas_set_num_threads")) set(threads);
}

GemmBenchResult run_gemm_bench(int64_t n, int threads, const GemmBenchOptions& options) {
  KOLOS_CHECK(n > 0, "gemm benchmark: matrix size must be positive, got {}", n);
  KOLOS_CHECK(options.repeats > 0 && options.warmup >= 0,
              "gemm benchmark: need repeats > 0 and warmup >= 0, got {} and {}", options.repeats, options.warmup);
  GemmBenchResult r;
  r.n = n;
  at::set_num_threads(threads > 0 ? threads : available_cores());
  r.threads = at::get_num_threads();

  // at::set_num_threads sets OpenMP's count (and MKL's) but not OpenBLAS's, which does the fp32 products here.
  r.blas = blas_library();
  set_blas_threads(r.threads);
  if (auto get = openblas_function<int (*)()>("openblas_get_num_threads")) r.blas_threads = get();
  if (auto config = openblas_function<char* (*)()>("openblas_get_config")) {
    r.blas_config = config();
    if (auto core = openblas_function<char* (*)()>("openblas_get_corename"))
      r.blas_config += fmt::format(" (core {})", core());
  }

  const double gflop = 2.0 * static_cast<double>(n) * n * n / 1e9;
  const at::Tensor a = at::randn({n, n});
  const at::Tensor b = at::randn({n, n});
  r.fp32_best_ms = best_mm_ms(a, b, options);
  r.fp32_gflops = gflop / (r.fp32_best_ms / 1e3);
  if (options.bf16) {
    r.bf16_best_ms = best_mm_ms(a.to(at::kBFloat16), b.to(at::kBFloat16), options);
    r.bf16_gflops = gflop / (r.bf16_best_ms / 1e3);
  }
  return r;
}

}  // namespace kolos::train
