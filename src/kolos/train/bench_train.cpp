// kolos bench train: times training steps of a model (default GPT-2-small shapes at sequence 256, batch 4, fp32,
// synthetic tokens; --set train.dtype=bf16 for mixed precision) and, with --pytorch, runs bench/pytorch_train.py
// (fp32) on the same shapes in the same invocation.
#include "kolos/train/bench_train.h"

#include <algorithm>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kolos/config/config.h"
#include "kolos/core/alloc_counter.h"
#include "kolos/dist/env.h"
#include "kolos/core/cli.h"
#include "kolos/core/error.h"
#include "kolos/core/subprocess.h"
#include "kolos/core/units.h"
#include "kolos/train/gemm_bench.h"
#include "kolos/train/trainer.h"

namespace kolos::train {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int bench_train_main(int argc, char** argv) {
  CLI::App app{"Time training steps (default: GPT-2-small shapes, sequence 256, batch 4, fp32, synthetic tokens).",
               "bench train"};
  std::string config_name;
  std::vector<std::string> overrides;
  int64_t steps = 10, warmup = 2;
  bool pytorch = false;
  app.add_option("--config", config_name, "recipe or TOML file (default: gpt2-small with the bench settings)");
  app.add_option("--set", overrides, "override one key: section.key=value (repeatable)");
  app.add_option("--steps", steps, "timed steps (default 10)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first (default 2)")->check(CLI::NonNegativeNumber);
  app.add_flag("--pytorch", pytorch, "also run bench/pytorch_train.py (PyTorch eager, same shapes) and compare");
  bool per_rank = false;
  app.add_flag("--per-rank", per_rank,
               "also report every rank's parameter bytes, activation bytes (the CPU allocator's live bytes a forward "
               "adds) and collective bytes per timed step");
  if (!parse_args(app, argc, argv)) return 0;

  std::vector<std::string> sets = {"model.seq_len=256", "train.batch_size=4", "data.synthetic=true",
                                   "train.grad_accum=1", "optim.warmup_steps=0", "optim.lr=1e-4", "optim.min_lr=1e-5"};
  sets.insert(sets.end(), overrides.begin(), overrides.end());
  // Under kolos run (or torchrun ...) every rank trains its share of the layout in [parallel]; rank 0 reports.
  const dist::DistEnv env = dist::read_dist_env();
  Config config = load_config(config_name.empty() ? std::string("gpt2-small") : config_name, sets, env.world_size);
  config.train.steps = warmup + steps;
  RunOptions options = RunOptions::in_memory();

  const int threads = configure_threads(config.train.threads, env.local_world_size);
  const bool rank0 = env.rank == 0;
  GemmBenchOptions gemm_options;
  gemm_options.bf16 = config.train.dtype == "bf16";  // the bf16 rate as a second yardstick
  const GemmBenchResult gemm = run_gemm_bench(2048, threads, gemm_options);

  if (per_rank) count_cpu_allocations();  // before any tensor: activation bytes are live-byte differences
  Trainer trainer(config, options, env);
  const auto& m = config.model;
  if (rank0)
    std::printf("kolos bench train: %s, %ld layers, hidden %ld, heads %ld, vocab %ld, seq %ld, batch %ld, %d threads\n",
              m.arch.c_str(), m.layers, m.hidden, m.heads, m.vocab, m.seq_len, config.train.batch_size, threads);
  std::vector<double> step_ms, fwd_bwd_ms, optim_ms;
  int64_t tokens_per_step = 0, io_bytes = 0, chunk_moves = 0, activation_bytes = 0, comm_start = 0;
  double io_wait_ms = 0;
  StepResult last;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    if (s == warmup) comm_start = trainer.comm_bytes();
    StepResult r = trainer.train_step(s);
    tokens_per_step = r.tokens;
    if (rank0)
      std::printf("  step %ld: %.0f ms (forward+backward %.0f, optimizer %.0f), loss %.4f%s\n", s, r.step_ms,
                  r.fwd_bwd_ms, r.optim_ms, r.loss, s < warmup ? " (warm-up)" : "");
    std::fflush(stdout);
    if (r.offload && rank0)
      std::printf("    tier: %ld requests, %.3f GB moved, %.3f GB/s; waited for it %.0f ms (optimizer %.0f); "
                  "shard cache %.0f MiB, %ld hits; peak RSS so far %.0f MiB\n",
                  r.chunk_moves, r.io_bytes / 1e9, r.io_bytes / (r.step_ms * 1e6), r.io_wait_ms, r.io_wait_optim_ms,
                  r.mem_cached / 1048576.0, r.cache_hits, peak_rss_bytes() / 1048576.0);
    last = r;
    if (s < warmup) continue;
    io_bytes += r.io_bytes;
    chunk_moves += r.chunk_moves;
    activation_bytes = std::max(activation_bytes, r.activation_bytes);
    io_wait_ms += r.io_wait_ms;
    step_ms.push_back(r.step_ms);
    fwd_bwd_ms.push_back(r.fwd_bwd_ms);
    optim_ms.push_back(r.optim_ms);
  }
  // ZeRO-3 offload overlaps each step's streamed update with the next forward: the last one's tail belongs to the
  // last step (every earlier step's tail is inside the step after it).
  const StepResult tail = trainer.finish_optimizer_step();
  if (tail.offload && steps > 0) {
    if (rank0) std::printf("  last step's update still in flight: %.0f ms, %.3f GB moved\n", tail.step_ms, tail.io_bytes / 1e9);
    step_ms.back() += tail.step_ms;
    optim_ms.back() += tail.optim_ms;
    io_bytes += tail.io_bytes;
    chunk_moves += tail.chunk_moves;
    io_wait_ms += tail.io_wait_ms;
  }
  const double med = median(step_ms);
  const double tps = tokens_per_step / (med / 1e3);
  nlohmann::json out = {{"impl", "kolos"},
                        {"tokens_per_s", tps},
                        {"step_ms_median", med},
                        {"fwd_bwd_ms", median(fwd_bwd_ms)},
                        {"optim_ms", median(optim_ms)},
                        {"mfu", tps / env.world_size * trainer.flops_per_token() / (gemm.fp32_gflops * 1e9)},  // per rank
                        {"peak_rss_mb", peak_rss_bytes() / 1048576.0},
                        {"threads", threads},
                        {"world_size", env.world_size},
                        {"layout", trainer.plan().describe()},
                        {"tokens_per_s_per_rank", tps / env.world_size},
                        {"gemm_fp32_gflops", gemm.fp32_gflops},
                        {"dtype", config.train.dtype},
                        {"params", trainer.model().num_params()},
                        {"flops_per_token", trainer.flops_per_token()}};
  out["step_ms"] = step_ms;
  if (last.offload) {  // the timed steps' tier traffic: bytes ÷ their wall time
    double total_ms = 0;
    for (double ms : step_ms) total_ms += ms;
    out["io_bytes"] = io_bytes;
    out["chunk_moves"] = chunk_moves;
    out["io_wait_ms"] = io_wait_ms;
    out["io_gbps"] = total_ms > 0 ? io_bytes / (total_ms * 1e6) : 0.0;
    out["mem_bytes"] = {{"compute", last.mem_compute}, {"host", last.mem_host}, {"nvme", last.mem_nvme}};
  }
  if (!config.memory.budget.empty()) {  // memory.budget against this process's peak RSS
    const int64_t budget = parse_bytes(config.memory.budget, "config key memory.budget");
    out["memory_budget_mb"] = budget / 1048576.0;
    out["within_budget"] = peak_rss_bytes() <= budget;
  }
  if (gemm.bf16_gflops > 0) {
    // MFU against the bf16 product rate: how much of what bf16 could do the step uses (mfu stays fp32-based).
    out["gemm_bf16_gflops"] = gemm.bf16_gflops;
    out["mfu_vs_bf16_gemm"] = tps / env.world_size * trainer.flops_per_token() / (gemm.bf16_gflops * 1e9);
  }
  if (per_rank) {  // collective: every rank's figures, in rank order
    double param_bytes = 0;
    for (const auto& [name, p] : trainer.model().params()) param_bytes += static_cast<double>(p.nbytes());
    const double comm = static_cast<double>(trainer.comm_bytes() - comm_start) / static_cast<double>(steps);
    const auto all = trainer.gather_world({param_bytes, static_cast<double>(activation_bytes), comm});
    nlohmann::json ranks = {{"param_bytes", nlohmann::json::array()}, {"activation_bytes", nlohmann::json::array()},
                            {"comm_bytes_per_step", nlohmann::json::array()}};
    for (const auto& v : all) {
      ranks["param_bytes"].push_back(static_cast<int64_t>(v[0]));
      ranks["activation_bytes"].push_back(static_cast<int64_t>(v[1]));
      ranks["comm_bytes_per_step"].push_back(static_cast<int64_t>(v[2]));
    }
    out["per_rank"] = ranks;
  }
  if (!rank0) return 0;
  if (pytorch) {
    KOLOS_CHECK(m.arch == "gpt2", "bench train --pytorch: the PyTorch reference is GPT-2 only, got model.arch = {}", m.arch);
    const std::string cmd = fmt::format(
        "/usr/bin/python3 {}/bench/pytorch_train.py --layers {} --hidden {} --heads {} --vocab {} --seq {} --batch {} "
        "--steps {} --warmup {} --threads {} --gemm-gflops {}",
        KOLOS_SOURCE_DIR, m.layers, m.hidden, m.heads, m.vocab, m.seq_len, config.train.batch_size, steps, warmup,
        threads, gemm.fp32_gflops);
    std::printf("running the PyTorch reference: %s\n", cmd.c_str());
    std::fflush(stdout);
    nlohmann::json ref = run_json_command(cmd, "bench train");
    out["pytorch"] = ref;
    const double ref_tps = ref.value("tokens_per_s", 0.0);
    if (ref_tps > 0) out["speedup_vs_pytorch"] = tps / ref_tps;
    const double ref_rss = ref.value("peak_rss_mb", 0.0);
    if (ref_rss > 0) out["rss_ratio_vs_pytorch"] = out["peak_rss_mb"].get<double>() / ref_rss;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace kolos::train
