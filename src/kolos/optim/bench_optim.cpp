#include "kolos/optim/bench_optim.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kolos/core/cli.h"
#include "kolos/core/error.h"
#include "kolos/core/timer.h"
#include "kolos/optim/adamw_kernel.h"
#include "kolos/train/gemm_bench.h"

namespace kolos::optim {

namespace {

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  const size_t k = x.size() / 2;
  return x.size() % 2 ? x[k] : 0.5 * (x[k - 1] + x[k]);
}

// "124M", "1.5B", "350k", "124000000": a count with an optional decimal suffix k, M, B or G (case-insensitive).
int64_t parse_count(const std::string& text, const std::string& what) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string suffix = text.substr(used);
  for (auto& ch : suffix) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double scale = 0.0;  // 0: not a known suffix
  if (suffix.empty()) scale = 1.0;
  if (suffix == "k") scale = 1e3;
  if (suffix == "m") scale = 1e6;
  if (suffix == "b" || suffix == "g") scale = 1e9;
  KOLOS_CHECK(used > 0 && scale > 0 && value * scale >= 1 && value * scale < 1e12,
              "{}: expected a count such as 124M, 1.5B or 1000000, got \"{}\"", what, text);
  return static_cast<int64_t>(std::llround(value * scale));
}

// Median seconds of one memcpy of `bytes`, split into at::get_num_threads() contiguous slices copied in parallel.
std::vector<double> time_copies(int64_t bytes, int repeats) {
  const int threads = at::get_num_threads();
  at::Tensor src = at::empty({bytes}, at::kByte), dst = at::empty({bytes}, at::kByte);
  char* s = reinterpret_cast<char*>(src.data_ptr<uint8_t>());
  char* d = reinterpret_cast<char*>(dst.data_ptr<uint8_t>());
  const int64_t slice = (bytes + threads - 1) / threads;
  auto copy = [&](bool fill) {
    at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        const int64_t begin = std::min(bytes, t * slice), len = std::min(bytes, begin + slice) - begin;
        if (fill) {
          std::memset(s + begin, 1, len);  // fault the pages in on the thread that copies them
          std::memset(d + begin, 0, len);
        }
        std::memcpy(d + begin, s + begin, len);
      }
    });
  };
  copy(/*fill=*/true);
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    Timer timer;
    copy(/*fill=*/false);
    seconds.push_back(timer.seconds());
  }
  return seconds;
}

// Fills x[i] = scale × (a deterministic pseudo-random number in [-0.5, 0.5)), on the threads the step will use.
void fill(float* x, int64_t n, float scale, uint32_t salt) {
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t h = (static_cast<uint32_t>(i) ^ salt) * 2654435761u;
      x[i] = scale * (static_cast<float>(h >> 8) / 16777216.0f - 0.5f);
    }
  });
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one.empty() ? "unknown" : one + " " + five + " " + fifteen;
}

double round_to(double x, int digits) { return std::round(x * std::pow(10, digits)) / std::pow(10, digits); }

}  // namespace

OptimBenchResult run_optim_bench(const OptimBenchOptions& o) {
  KOLOS_CHECK(o.params > 0, "--params: expected a positive count, got {}", o.params);
  KOLOS_CHECK(o.steps > 0 && o.warmup >= 0, "--steps / --warmup: expected steps > 0 and warmup >= 0, got {} and {}",
              o.steps, o.warmup);
  KOLOS_CHECK(o.dtype == "fp32" || o.dtype == "bf16", "--dtype: expected fp32 or bf16, got \"{}\"", o.dtype);
  KOLOS_CHECK(o.isa.empty() || adamw_kernel_isa_supported(o.isa.c_str()),
              "--isa: expected one of the paths this CPU supports (avx512, avx2, scalar; best here: {}), got \"{}\"",
              adamw_kernel_isa(), o.isa);
  KOLOS_CHECK(o.copy_bytes > 0 && o.copy_repeats > 0, "copy size and repeats must be positive");

  OptimBenchResult r;
  r.dtype = o.dtype;
  r.isa = o.isa.empty() ? adamw_kernel_isa() : o.isa;
  r.params = o.params;
  at::set_num_threads(o.threads > 0 ? o.threads : train::available_cores());
  r.threads = at::get_num_threads();
  r.bytes_per_param = 28;  // fp32: 4 × 4 read + 3 × 4 written; bf16: 3 × 4 + 2 read, 3 × 4 + 2 written

  r.copy_bytes = o.copy_bytes;
  r.copy_gbps = 2.0 * static_cast<double>(o.copy_bytes) / median(time_copies(o.copy_bytes, o.copy_repeats)) / 1e9;
  const double bytes_per_step = static_cast<double>(o.params) * static_cast<double>(r.bytes_per_param);
  r.floor_ms = bytes_per_step / (r.copy_gbps * 1e9) * 1e3;

  const int64_t n = o.params;
  const bool bf16 = o.dtype == "bf16";
  at::Tensor p = at::empty({n}), m = at::empty({n}), v = at::empty({n});
  at::Tensor g = at::empty({n}, bf16 ? at::kBFloat16 : at::kFloat);
  at::Tensor p_bf16 = bf16 ? at::empty({n}, at::kBFloat16) : at::Tensor();
  fill(p.data_ptr<float>(), n, 0.04f, 1);
  fill(m.data_ptr<float>(), n, 0.0f, 0);
  fill(v.data_ptr<float>(), n, 0.0f, 0);
  if (bf16) {
    // Touched on the stepping threads like the others; the values are the bf16 roundings of a fill.
    at::Tensor g32 = at::empty({n});
    fill(g32.data_ptr<float>(), n, 0.02f, 2);
    g.copy_(g32);
    p_bf16.zero_();
  } else {
    fill(g.data_ptr<float>(), n, 0.02f, 2);
  }

  AdamWStepArgs a;
  a.lr = 6e-4f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.weight_decay = 0.1f;
  a.grad_scale = 0.5f;  // as if 1/loss-scale × clip factor
  std::vector<double> ms;
  for (int t = 1; t <= o.warmup + o.steps; ++t) {
    a.bias_correction1 = static_cast<float>(1.0 - std::pow(double(a.beta1), t));
    a.bias_correction2 = static_cast<float>(1.0 - std::pow(double(a.beta2), t));
    Timer timer;
    if (bf16) {
      auto* gb = reinterpret_cast<const uint16_t*>(g.data_ptr<at::BFloat16>());
      auto* out = reinterpret_cast<uint16_t*>(p_bf16.data_ptr<at::BFloat16>());
      adamw_step_bf16grad_isa(r.isa.c_str(), p.data_ptr<float>(), gb, m.data_ptr<float>(), v.data_ptr<float>(), out,
                              n, a);
    } else {
      adamw_step_fp32_isa(r.isa.c_str(), p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(),
                          v.data_ptr<float>(), n, a);
    }
    if (t > o.warmup) ms.push_back(timer.ms());
  }
  KOLOS_CHECK(std::isfinite(p.data_ptr<float>()[n / 2]), "optimizer benchmark: the step produced a non-finite value");
  r.step_ms_median = median(ms);
  r.step_ms_min = *std::min_element(ms.begin(), ms.end());
  r.ratio_to_floor = r.step_ms_median / r.floor_ms;
  r.params_per_s = static_cast<double>(n) / (r.step_ms_median / 1e3);
  r.step_gbps = bytes_per_step / (r.step_ms_median / 1e3) / 1e9;
  return r;
}

int bench_optim_main(int argc, char** argv) {
  CLI::App app{"Times the fused AdamW step over one flat buffer (median of --steps after --warmup) and compares it\n"
               "with the bandwidth floor: 28 bytes per parameter ÷ the copy bandwidth (bytes read + written ÷ time of\n"
               "a 512 MiB memcpy split over the same threads). Prints a summary, then one JSON line:\n"
               "{\"step_ms_median\", \"floor_ms\", \"ratio_to_floor\", \"copy_gbps\", \"params_per_s\", ...}.",
               "bench optim"};
  OptimBenchOptions o;
  std::string params_text = "124M";
  app.add_option("--params", params_text, "parameters in the flat buffer, e.g. 124M, 1.5B, 1000000")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "intra-op threads; 0: every core this process may use")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--steps", o.steps, "timed steps; the median counts")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps before timing")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--dtype", o.dtype,
                 "fp32: fp32 gradients; bf16: bf16 gradients in and a bf16 copy of the parameters out (fp32 master "
                 "weights and moments either way)")
      ->capture_default_str();
  app.add_option("--isa", o.isa, "force a kernel path: avx512, avx2 or scalar (default: the widest this CPU has)");
  if (!parse_args(app, argc, argv)) return 0;
  o.params = parse_count(params_text, "--params");

  const std::string load_before = load_average();
  const OptimBenchResult r = run_optim_bench(o);

  std::printf("kolos bench optim: fused AdamW, %s, %lld parameters, %d threads, %s path\n", r.dtype.c_str(),
              static_cast<long long>(r.params), r.threads, r.isa.c_str());
  std::printf("  load average     %s (before)\n", load_before.c_str());
  std::printf("  copy bandwidth   %6.2f GB/s  (memcpy of %lld MiB over %d threads; read + written, median of %d)\n",
              r.copy_gbps, static_cast<long long>(r.copy_bytes >> 20), r.threads, o.copy_repeats);
  std::printf("  floor            %8.2f ms per step  (%lld B/param × params ÷ copy bandwidth)\n", r.floor_ms,
              static_cast<long long>(r.bytes_per_param));
  std::printf("  fused step       %8.2f ms median of %d after %d warm-up (min %.2f)\n", r.step_ms_median, o.steps,
              o.warmup, r.step_ms_min);
  std::printf("  ratio            %8.2f × the floor  (goal: at most 1.5)\n", r.ratio_to_floor);
  std::printf("  throughput       %8.3f G params/s, %.2f GB/s of step traffic\n", r.params_per_s / 1e9, r.step_gbps);

  nlohmann::ordered_json out = {{"bench", "optim"},
                                {"dtype", r.dtype},
                                {"params", r.params},
                                {"threads", r.threads},
                                {"isa", r.isa},
                                {"step_ms_median", round_to(r.step_ms_median, 3)},
                                {"step_ms_min", round_to(r.step_ms_min, 3)},
                                {"floor_ms", round_to(r.floor_ms, 3)},
                                {"ratio_to_floor", round_to(r.ratio_to_floor, 3)},
                                {"copy_gbps", round_to(r.copy_gbps, 3)},
                                {"copy_bytes", r.copy_bytes},
                                {"bytes_per_param", r.bytes_per_param},
                                {"params_per_s", round_to(r.params_per_s, 0)},
                                {"step_gbps", round_to(r.step_gbps, 3)},
                                {"steps", o.steps},
                                {"warmup", o.warmup},
                                {"load_avg", load_before}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace kolos::optim
