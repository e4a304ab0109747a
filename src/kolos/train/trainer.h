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
//                 backward), 3 wait for the reductions, 4 clip with the global norm, 5 optimizer step (and the
//                 ZeRO all-gather), 6 schedule and metrics (loss averaged over the dp ranks).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kolos/config/config.h"
#include "kolos/data/loader.h"
#include "kolos/data/tokenizer.h"
#include "kolos/models/model.h"
#include "kolos/dist/env.h"
#include "kolos/dist/mesh.h"
#include "kolos/parallel/apply.h"

namespace kolos::train {

struct RunOptions {
  std::string out_dir = "runs/latest";  // run directory
  bool resume = false;                  // continue from the latest complete checkpoint in out_dir
  int64_t stop_after = 0;               // > 0: stop (with a checkpoint) once this many steps are done
  bool write_run_dir = true;            // false for benchmarks: no files, no checkpoints
  bool final_eval = true;
};

struct StepResult {
  double loss = 0;       // mean over the micro-batches
  double grad_norm = 0;  // global L2 norm before clipping
  double lr = 0;
  double step_ms = 0, fwd_bwd_ms = 0, optim_ms = 0;
  int64_t tokens = 0;  // all ranks
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

  // One optimizer step `step` (0-based).
  StepResult train_step(int64_t step);
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
  parallel::Parallelized par_;
  int64_t start_step_ = 0;
  int64_t tokens_seen_ = 0;
  double elapsed_s_ = 0;  // training time of earlier runs of this run directory
};

// Sets LibTorch's and OpenBLAS's threads (train.threads; 0 = the cores divided among `local_ranks` processes) and
// returns the count.
int configure_threads(int64_t threads, int local_ranks = 1);

}  // namespace kolos::train
