// Trainer: builds the model, data, optimizer from a Config and runs the training loop of one process.
//
//   train()       resume or start; loop train_step; log, evaluate, checkpoint; stop on --stop-after or a signal;
//                 final evaluation, checkpoint, sample and summary.
//   train_step()  numbered phases: 1 fetch micro-batches, 2 forward/backward, 3 reduce gradients (one process:
//                 nothing), 4 clip with the global norm, 5 optimizer step, 6 schedule and metrics.
//
// Parameters and gradients live in two flat fp32 buffers (each parameter and its .grad are views into them,
// 64-byte aligned), allocated once: the step allocates no parameter-sized memory.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kolos/config/config.h"
#include "kolos/data/loader.h"
#include "kolos/data/tokenizer.h"
#include "kolos/models/model.h"
#include "kolos/optim/adamw.h"

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
  int64_t tokens = 0;
};

// Set by the SIGINT/SIGTERM handler installed by train(): the signal number, 0 when none.
extern std::atomic<int> g_stop_signal;

class Trainer {
 public:
  Trainer(Config config, RunOptions options);

  // Runs the loop; returns the summary object (also printed as the last line of stdout). Throws Interrupted
  // after writing a checkpoint when a signal arrived.
  nlohmann::json train();

  // One optimizer step `step` (0-based).
  StepResult train_step(int64_t step);
  // Mean validation loss (nats per token) over `batches` batches (0 = the whole split) and bits per byte.
  std::pair<double, double> evaluate(int64_t batches);

  models::Model& model() { return *model_; }
  const optim::AdamW& optimizer() const { return *optimizer_; }
  const Config& config() const { return config_; }
  int64_t start_step() const { return start_step_; }
  // Model FLOPs per token: 6 N' + 12 l h s (DESIGN "Benchmarks").
  double flops_per_token() const;

 private:
  void build_flat_buffers();
  void save(int64_t step_done);
  void restore(const std::string& checkpoint_dir);

  Config config_;
  RunOptions options_;
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<optim::AdamW> optimizer_;
  at::Tensor flat_params_, flat_grads_;
  std::vector<optim::FlatSlot> slots_;
  int64_t start_step_ = 0;
  int64_t tokens_seen_ = 0;
  double elapsed_s_ = 0;  // training time of earlier runs of this run directory
};

// Sets intra-op threads (train.threads, 0 = all cores) and returns the count.
int configure_threads(int64_t threads);

}  // namespace kolos::train
