// The pipeline executor (DESIGN "Pipeline"): runs one stage's instruction list (schedule.h) — forwards and
// backwards of its chunks on the micro-batches, the point-to-point messages with the neighbouring stages, and the
// final Reduce — for any schedule. It knows nothing of models: the trainer supplies the forward of a chunk, the
// objective of a loss, and what to do around backwards and at Reduce (data-parallel reductions, tied embeddings).
//
// Messages go over the pp Comm (group rank = stage). Sends are asynchronous: a sent tensor stays alive here until
// its send has completed, at Reduce at the latest; receives block. Tags: activations 1, gradients 2, the shape of
// activations 3 (evaluation: 4 and 5, so that evaluation never takes a training message). Shapes are exchanged
// once per run and per (sender, receiver) pair: before its first activation to a stage, a sender sends the
// activation's dtype and shape, and both sides cache them; every later message between the two has that shape (a
// transformer's hidden states between any two of its blocks do). A gradient has the shape of the activation it
// belongs to, which both sides know. So the ledger shows exactly one shape message per stage pair per run.
//
// Ledger phases: Forward instructions and activation messages under "forward", Backward and gradient messages
// under "backward"; evaluation's under "other".
//
// Not thread-safe: one thread runs a stage (the Comm's rule).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/dist/comm.h"
#include "kolos/parallel/pipeline/schedule.h"

namespace kolos::parallel::pipeline {

struct MicroBatch {
  at::Tensor input, target;  // token ids (B, T) and next tokens (B, T)
};

struct Callbacks {
  // The forward of `chunk` on micro-batch `micro`: `input` is the token ids for virtual stage 0, else the
  // activations received (a leaf that requires grad). Returns the chunk's output; for the last virtual stage the
  // mean loss of the micro-batch (a scalar), computed against `target`.
  std::function<at::Tensor(int micro, int chunk, const at::Tensor& input, const at::Tensor& target)> forward;
  // The tensor whose backward runs for a loss (e.g. loss / m × loss scale). Identity when empty.
  std::function<at::Tensor(const at::Tensor& loss)> objective;
  // Around the k-th Backward of this stage (k = 0 .. K−1, K = m·v).
  std::function<void(int k, int K)> before_backward, after_backward;
  // At Reduce, after every send of the step has completed.
  std::function<void()> reduce;
};

class Executor {
 public:
  // `comm`: the pp group (size = schedule.stages, rank = `stage`); null only for one stage.
  Executor(Schedule schedule, int stage, dist::Comm* comm);

  // Runs this stage's list once (one training step). Returns the sum of the micro-batch losses when this stage
  // holds the last virtual stage, else 0. `micro` has schedule.micro_batches entries (the stages that need no
  // data may pass undefined tensors).
  double run(const std::vector<MicroBatch>& micro, const Callbacks& callbacks);

  // One forward through every virtual stage, no autograd (evaluation): each stage runs its chunks in virtual-stage
  // order with the messages between them. Returns the loss on the stage of the last virtual stage, else 0.
  double forward_only(const MicroBatch& batch, const Callbacks& callbacks);

  const Schedule& schedule() const { return schedule_; }
  int stage() const { return stage_; }
  // The most activation sets (micro, chunk) the last run held at once (schedule.h's max_in_flight).
  int max_held() const { return max_held_; }

  // What the last run() measured on this stage. Times are seconds of the steady clock (one clock for every process
  // of a machine, so stages can be compared); activation bytes are the CPU allocator's live bytes after a forward
  // less those at the start of the run, at most over the run — the saved tensors and the stashed inputs and
  // outputs of the activation sets held (kolos/core/alloc_counter.h; 0 unless counting).
  struct Stats {
    int64_t activation_bytes = 0;
    // Per instruction of this stage's list, in order: when it began and ended. A computation: its callback's
    // forward or backward alone; a send: from its start to its return (issuing the message, letting go of what the
    // stage no longer needs); a receive: from its start to the moment its message was taken in (waiting included);
    // Reduce: its callback, after the sends completed. The simulator's costs and message latency come from these
    // (pipeline_report in kolos/train/trainer.h).
    std::vector<double> begin_at, end_at;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Stash {
    at::Tensor input;   // the received activation (a leaf), or the ids
    at::Tensor output;  // the forward's output (the loss on the last virtual stage)
    at::Tensor grad_out;  // received gradient of the output
  };
  struct Channel {  // per peer and direction: the cached activation shape
    bool known = false;
    at::ScalarType dtype = at::kFloat;
    std::vector<int64_t> shape;
  };
  at::Tensor receive_activation(int peer, int tag, int shape_tag, Channel& channel);
  void send_activation(const at::Tensor& t, int peer, int tag, int shape_tag, Channel& channel);
  void reap_sends(bool all);

  Schedule schedule_;
  int stage_;
  dist::Comm* comm_;
  std::map<std::pair<int, int>, Stash> stash_;  // (micro, chunk)
  std::map<int, Channel> sent_, received_, eval_sent_, eval_received_;  // by peer
  std::vector<std::pair<dist::Handle, at::Tensor>> sends_;
  int max_held_ = 0;
  Stats stats_;
};

}  // namespace kolos::parallel::pipeline
