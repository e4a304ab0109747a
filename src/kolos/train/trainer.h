// Trainer: builds the model, data, mesh and parallel layout from a Config and runs the training loop of one rank.
//
//   construction  the Plan (parallel/plan.h) for the world size; with more than one process the rendezvous
//                 (TCPStore at MASTER_ADDR:MASTER_PORT) and the Mesh; parallel::apply, which owns the flat
//                 parameter/gradient buffers and the optimizer (parallel/data/data_parallel.h).
//   train()       resume or start (a checkpoint resumes only with the same [model] section, optim.name and options
//                 of its rule, optim::rule_options: InputError naming the key otherwise); loop train_step; log,
//                 evaluate, checkpoint; stop on --stop-after or a signal
//                 (all ranks agree on the step); final evaluation, checkpoint, sample and summary (rank 0 prints
//                 and writes; every rank joins the collectives).
//   train_step()  numbered phases: 1 fetch micro-batches, 2 forward/backward (gradient reductions launched from
//                 backward; under pipeline parallelism the executor runs the stage's schedule, the micro-batches
//                 being the train.grad_accum micro-steps), 3 wait for the reductions, 4 clip with the global norm, 5 optimizer step (and the
//                 ZeRO all-gather), 6 schedule and metrics (loss averaged over the dp ranks).
//
// Precision (train.dtype, README "Configuration"). Master weights, gradients and optimizer state are fp32 always.
//   "bf16"  forward (and evaluation) under bf16 autocast (AutocastScope below): the matrix products run in bf16
//           on bf16 copies of the weights, the loss in fp32; backward (outside the scope) runs the same products
//           in bf16, their saved inputs being bf16, and the weights' gradients arrive in fp32 through the casts.
//   "fp16"  fp32 arithmetic (LibTorch 1.13 has no fp16 matrix products on the CPU), gradients reduced in fp16
//           (parallel/data/data_parallel.h), with a dynamic loss scale S (optim/loss_scaler.h): backward of S·loss;
//           after the reductions every rank checks its gradients for inf/NaN and all ranks agree (a max over the
//           world); an overflow skips the step on every rank (no update, the gradients are dropped); else the
//           optimizer applies 1/S fused with the clipping factor, which sees the unscaled norm. The scaler's
//           state is checkpointed; metrics.jsonl records carry loss_scale (after the step) and skipped_steps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kolos/checkpoint/checkpoint.h"
#include "kolos/config/config.h"
#include "kolos/data/loader.h"
#include "kolos/data/tokenizer.h"
#include "kolos/models/model.h"
#include "kolos/dist/env.h"
#include "kolos/dist/mesh.h"
#include "kolos/optim/loss_scaler.h"
#include "kolos/parallel/apply.h"
#include "kolos/parallel/pipeline/executor.h"

namespace kolos::train {

struct RunOptions {
  std::string out_dir = "runs/latest";  // run directory
  bool resume = false;                  // continue from the latest complete checkpoint in out_dir
  int64_t stop_after = 0;               // > 0: stop (with a checkpoint) once this many steps are done
  bool write_run_dir = true;            // false for benchmarks: no files, no checkpoints
  bool final_eval = true;
  // No run directory, no checkpoints, no final evaluation: benchmarks and tests that drive train_step.
  static RunOptions in_memory() {
    RunOptions o;
    o.write_run_dir = false;
    o.final_eval = false;
    return o;
  }
  // Test hook (tests/train/mixed_precision_test.cpp), not for training: at these steps (0-based) this rank writes
  // +inf into its local gradient before the reduction (DataParallel::inject_inf_for_test).
  std::vector<int64_t> test_inf_grad_steps;
  // Test hook (tests/train/offload_test.cpp): memory.placement = "auto" sizes its shard cache to this many bytes
  // after the first step instead of from memory.budget and the peak RSS (>= 0; -1: the budget's rule).
  int64_t test_shard_cache_bytes = -1;
};

struct StepResult {
  double loss = 0;       // mean over the micro-batches
  double grad_norm = 0;  // global L2 norm before clipping
  double lr = 0;
  double loss_scale = 1;  // fp16: the scale after this step's update (1 otherwise)
  bool skipped = false;   // fp16: the gradients overflowed and the step was skipped on every rank
  double step_ms = 0, fwd_bwd_ms = 0, optim_ms = 0;
  int64_t tokens = 0;  // all ranks
  // Offload (memory.offload_*; DataParallel::memory_figures): this rank's bytes per tier after the step, and the
  // tier's requests and bytes moved during the step (the parameter reads of the gathers and the optimizer's
  // streaming). `offload` false: nothing is offloaded (the fields stay 0). io_wait_ms: the time the step waited
  // for the tier, io_wait_optim_ms the part of it in the optimizer step (the rest is forward and backward).
  bool offload = false;
  int64_t mem_compute = 0, mem_host = 0, mem_nvme = 0, chunk_moves = 0, io_bytes = 0;
  double io_wait_ms = 0, io_wait_optim_ms = 0;
  // memory.placement = "auto": the shard cache's bytes after the step and the uses that found their shard in it.
  int64_t mem_cached = 0, cache_hits = 0;
  // The CPU allocator's live bytes after a micro-step's forward (the loss computed, backward not begun) less those
  // before it — the activations autograd keeps for backward, with the logits and the loss — the most over the
  // step's micro-steps; 0 unless allocations are counted (count_cpu_allocations; kolos bench train does).
  int64_t activation_bytes = 0;
  // Last micro-step's backward (for train.trace_comm).
  std::chrono::steady_clock::time_point step_start, backward_start, backward_end;
};

// Set by the SIGINT/SIGTERM handler installed by train(): the signal number, 0 when none.
extern std::atomic<int> g_stop_signal;

class Trainer {
 public:
  // `env`: where this process stands (dist::read_dist_env()); the default is one process.
  Trainer(Config config, RunOptions options, dist::DistEnv env = {});
  ~Trainer();

  // Runs the loop; returns the summary object (also printed as the last line of stdout). Throws Interrupted
  // after writing a checkpoint when a signal arrived.
  nlohmann::json train();

  // One optimizer step `step` (0-based). With ZeRO-3 offload its streamed update may still be in flight when it
  // returns, overlapping the next step's forward (memory/offload.h); the next step's tier figures then count from
  // the end of this one (an evaluation's gathers in between included), so every byte counts in one step.
  StepResult train_step(int64_t step);
  // Waits for the last step's update still in flight: its wall time (step_ms, optim_ms) and the tier's traffic
  // since the end of that step (offload false: that step left no update in flight). Rethrows its error (a full disk).
  StepResult finish_optimizer_step();
  // Mean validation loss (nats per token) over `batches` batches (0 = the whole split) and bits per byte.
  std::pair<double, double> evaluate(int64_t batches);

  models::Model& model() { return *model_; }
  // The optimizer state as whole tensors named <state>.<param> (collective under ZeRO).
  std::vector<std::pair<std::string, at::Tensor>> optimizer_state() { return par_.data->optimizer_state(); }
  const parallel::Plan& plan() const { return plan_; }
  bool is_rank0() const { return env_.rank == 0; }
  const Config& config() const { return config_; }
  int64_t start_step() const { return start_step_; }
  // Model FLOPs per token: 6 N' + 12 l h s (DESIGN "Benchmarks").
  double flops_per_token() const;
  // train.dtype = "fp16": the dynamic loss scaler; null otherwise.
  const optim::LossScaler* loss_scaler() const { return scaler_ ? &*scaler_ : nullptr; }
  // The owner of this rank's flat parameter, gradient and optimizer buffers.
  const parallel::DataParallel& data_parallel() const { return *par_.data; }
  // Bytes this rank's collectives have moved so far (its ledger's total; 0 on one process).
  int64_t comm_bytes() const { return ledger_->total_bytes(); }
  // `mine` from every rank of the world, in rank order (collective; every rank passes as many values).
  std::vector<std::vector<double>> gather_world(const std::vector<double>& mine);

 private:
  void save(int64_t step_done);
  void restore(const std::string& checkpoint_dir);
  void seed_rng(int64_t step);
  dist::Ledger& ledger() { return *ledger_; }
  int dp_rank() const { return mesh_ ? mesh_->coord("dp") : 0; }
  // Sum (or max) of `values` over the ranks that train on different tokens (dp × sp) / the world; identity on one
  // process.
  void all_reduce_data(at::Tensor& values, dist::ReduceOp op);
  // This rank's part of a batch: under sequence parallelism its tokens of every sequence (the sp mode's
  // positions); else the batch itself.
  data::Batch sequence_slice(const data::Batch& batch) const;
  void all_reduce_world(at::Tensor& values, dist::ReduceOp op);
  nlohmann::json comm_trace(const StepResult& r) const;
  void write_rank_report();
  // Pipeline parallelism: the stem's and the head's stage add each other's gradient of the tied embedding (after
  // the last backward, before the data-parallel reduction); the checkpoint's tensors of every stage collected on
  // rank 0 (the ranks of dp, sp and tp coordinate 0 send theirs over the pp axis).
  void sync_tied_gradient();
  // The pipeline executor's forward of this stage's chunk (training and evaluation): its segment under the bf16
  // autocast of train.dtype; on the last virtual stage (`target` defined) the loss.
  at::Tensor forward_chunk(int chunk, const at::Tensor& x, const at::Tensor& target);
  void gather_stages(checkpoint::CheckpointData& d);
  // The pipeline's timing over the run's first kPipelineStatsSteps steps, from every stage (collective over pp): per
  // stage the measured idle fraction (pipeline::measured_idle) and the simulator's for the same schedule fed with
  // that step's measured costs (pipeline::measured_costs: each stage's and chunk's mean forward and backward, and
  // the mean message latency, send and receive time), medians over the steps after the first; the medians of those
  // message costs; the activation bytes each stage held at most. For the rank report.
  nlohmann::json pipeline_report();
  int stage() const { return mesh_ ? mesh_->coord("pp") : 0; }

  Config config_;
  RunOptions options_;
  dist::DistEnv env_;
  parallel::Plan plan_;
  std::unique_ptr<dist::Mesh> mesh_;  // null for one process
  std::unique_ptr<dist::Ledger> own_ledger_;  // one process: a ledger that stays empty
  dist::Ledger* ledger_ = nullptr;            // the mesh's, or own_ledger_
  nlohmann::json comm_total_ = nlohmann::json::object();  // every collective of this run so far
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<data::Loader> loader_;
  // The tier's figures at the end of the last step, while its update was still in flight (memory.overlap_step):
  // the next step's figures (or finish_optimizer_step's) count from here.
  std::optional<parallel::DataParallel::MemoryFigures> in_flight_mark_;
  // r's tier fields: the figures `f` now against `before` (memory.offload_*).
  static void tier_figures(StepResult& r, const parallel::DataParallel::MemoryFigures& before,
                           const parallel::DataParallel::MemoryFigures& f);
  parallel::Parallelized par_;
  std::unique_ptr<parallel::pipeline::Executor> pipe_;  // pp > 1
  int tied_param_ = -1;  // pp > 1: this stage's index of the tied embedding it shares with another stage
  static constexpr size_t kPipelineStatsSteps = 256;
  std::vector<parallel::pipeline::Executor::Stats> pipe_stats_;  // pp > 1: per step of this run (the first 256)
  bool autocast_ = false;                   // train.dtype = "bf16"
  std::optional<optim::LossScaler> scaler_;  // train.dtype = "fp16"
  int64_t start_step_ = 0;
  int64_t tokens_seen_ = 0;
  double elapsed_s_ = 0;  // training time of earlier runs of this run directory
};

// bf16 autocast of LibTorch's CPU ops in scope (train.dtype = "bf16"): the matrix products (linear, matmul, mm,
// bmm, addmm, ...) cast their inputs to `dtype` and return it; the losses (cross_entropy) run in fp32; other ops
// run in their inputs' dtype (so a residual stream that starts fp32 stays fp32). Weights are cast once per scope:
// autocast caches the copies of leaf tensors, and the scope clears that cache on entry and exit (copies made
// before an optimizer step must not outlive it). Restores the previous autocast state on exit. Thread-local, like
// autocast itself; `enabled` false does nothing.
class AutocastScope {
 public:
  explicit AutocastScope(bool enabled, at::ScalarType dtype = at::kBFloat16);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

// Sets LibTorch's and OpenBLAS's threads (train.threads; 0 = the cores divided among `local_ranks` processes) and
// returns the count.
int configure_threads(int64_t threads, int local_ranks = 1);

}  // namespace kolos::train
