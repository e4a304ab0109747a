// `kolos bench optim`: the fused AdamW step (adamw_kernel.h) against the memory-bandwidth floor.
//
// The step is memory-bound: per parameter it moves bytes_per_param bytes (fp32: read p, g, m, v and write p, m, v
// = 28 B; bf16: read p, m, v and a bf16 g, write p, m, v and the bf16 copy of p = 28 B as well). The floor is the
// time those bytes take at the machine's copy bandwidth:
//   copy bandwidth = (bytes read + bytes written) ÷ time of one memcpy of copy_bytes (≥ 512 MiB), split into
//                    `threads` contiguous slices copied in parallel on the same thread pool as the step;
//   floor          = params × bytes_per_param ÷ copy bandwidth.
// Both figures are medians of timed repetitions after untimed warm-up ones (which also fault the pages in).
#pragma once

#include <cstdint>
#include <string>

namespace kolos::optim {

struct OptimBenchOptions {
  int64_t params = 124'000'000;  // elements of the flat parameter buffer
  int threads = 0;               // intra-op threads; 0: every core this process may use
  int steps = 10;                // timed steps; the median counts
  int warmup = 3;                // untimed steps before (page faults, thread start-up)
  std::string dtype = "fp32";    // "fp32": adamw_step_fp32; "bf16": adamw_step_bf16grad with a bf16 copy out
  std::string isa;               // kernel path ("avx512", "avx2", "scalar"); "" for the dispatched one
  int64_t copy_bytes = int64_t(512) << 20;  // size of the copy that measures the bandwidth
  int copy_repeats = 5;          // timed copies (after one warm-up copy); the median counts
};

struct OptimBenchResult {
  std::string dtype, isa;
  int64_t params = 0;
  int threads = 0;
  int64_t bytes_per_param = 0;  // 28 for both dtypes (see the header comment)
  double step_ms_median = 0, step_ms_min = 0;
  int64_t copy_bytes = 0;       // bytes copied per copy (read and written once each)
  double copy_gbps = 0;         // (bytes read + written) ÷ median copy time, 10⁹ B/s
  double floor_ms = 0;          // params × bytes_per_param ÷ copy bandwidth
  double ratio_to_floor = 0;    // step_ms_median ÷ floor_ms (goal ≤ 1.5)
  double params_per_s = 0;      // params ÷ median step time
  double step_gbps = 0;         // params × bytes_per_param ÷ median step time, 10⁹ B/s
};

// Sets LibTorch's intra-op threads (they stay set), measures the copy bandwidth, then allocates the step's buffers
// (16 B per parameter for fp32, 16 B + 4 B for bf16; the copy's buffers are freed first), touches them on the
// threads that will update them, and times options.warmup + options.steps steps. Throws InputError for bad options.
OptimBenchResult run_optim_bench(const OptimBenchOptions& options);

// The command: argv[0] is "optim". Prints a summary, then one JSON line. Returns the exit code.
int bench_optim_main(int argc, char** argv);

}  // namespace kolos::optim
