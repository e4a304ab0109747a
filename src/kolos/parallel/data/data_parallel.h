// DataParallel: the parameters, gradients and optimizer of one data-parallel rank — plain data parallelism and
// ZeRO stages 1 and 2 — over flat fp32 buffers (parallel::apply builds it; the trainer drives it).
//
// Layout. Parameters are packed in the order of Model::param_specs() into one flat buffer, each 64-byte aligned and
// bound to the model as a view. They are grouped into buckets of about parallel.bucket_mb MiB, formed from the last
// parameter backwards (gradients become ready roughly in that order); each bucket is a contiguous range of whole
// parameters padded to a multiple of 16·dp elements, so it splits into dp equal, aligned chunks. Padding stays zero.
// Rank r of the dp group owns chunk r of every bucket; its shard is the concatenation of its chunks in bucket order.
//
// Gradients. A post-hook on every parameter's gradient accumulator counts the parameters whose gradient is final;
// when all of a bucket's are, its reduction is launched asynchronously, in bucket order (the same order on every
// rank), while backward goes on with the layers below:
//   zero = 0  all-reduce (average) of the bucket in the flat gradient buffer; every rank has the whole gradient.
//   zero = 1  reduce-scatter (average) of the bucket; the rank's chunk of the flat gradient buffer holds the result
//             (the rest of the buffer is scratch). Optimizer moments: the shard only.
//   zero = 2  no flat gradient buffer: autograd writes fresh per-parameter gradients, which a complete bucket copies
//             into a staging buffer and drops; the reduce-scatter adds the rank's chunk into a shard-sized gradient
//             buffer. Optimizer moments and gradients: the shard only.
// With gradient accumulation, zero 0 and 1 reduce only on the last micro-step (gradients accumulate in place before
// it); zero 2 reduces on every micro-step (that is what keeps its gradients sharded). After the optimizer updated
// the shard, zero 1 and 2 all-gather the updated parameters bucket by bucket, so every rank holds all parameters.
//
// Optimizer. The rule of optim.name (optim/optimizer.h) over this rank's pieces: everything at zero 0, its chunk of
// every bucket at zero >= 1 (a parameter may then be split between ranks at any element). The rules with
// whole-tensor norms (LARS, LAMB) all-reduce their per-tensor partial squared norms over the dp Comm at zero >= 1.
//
// Precision (train.dtype). Parameters, gradients and optimizer state are fp32 in every mode. "bf16" changes nothing
// here (the trainer's autocast casts the weights for the products; their gradients arrive in fp32). "fp16" reduces
// the gradients in fp16: each bucket's gradient (already multiplied by the loss scale) is multiplied by 1/dp and
// stored into a persistent fp16 buffer, reduced there with a sum (Gloo: half the bytes of fp32; the shared-memory
// path is fp32 only), and copied back into the fp32 buffers when end_micro() waits. One data-parallel rank rounds
// its gradient through fp16 the same way, so a value out of fp16's range is inf at every dp degree. The trainer
// checks the result for inf/NaN (its loss scaler, optim/loss_scaler.h).
//
// ZeRO-3 (zero = 3, any dp: one rank holds each chunk whole as its "shard"): the parameters live in chunks of a memory::ChunkManager (DESIGN "Chunks") instead of
// the flat buffers: blocks in Model::set_block_hooks order (0 the stem, 1 + i transformer block i, layers + 1 the
// head), a tied embedding in the stem kept gathered from its forward until its gradient is reduced. The model calls
// the manager around each block through its block hooks (gather before forward and before backward, prefetching the
// next block, release after; reduce-scatter of each chunk's gradient as soon as it is complete, every micro-step).
// The optimizer runs on this rank's flat shards (shard_params/shard_grads); "buckets" in report() are the chunks.
// A no-grad forward (evaluation, sampling) releases every chunk after the head. Every dp rank must run the same
// forwards: the gathers are collective.
//
// Offload (memory.* static placement; memory/offload.h): memory.offload_optim_frac of this rank's optimizer state
// (a tail of its state range, every state buffer) and, at ZeRO-3, memory.offload_param_frac of its master parameter
// shard (whole trailing chunks, memory::ChunkManager) live on memory.offload_tier, with memory.offload_grads the
// gradient shards of those chunks too; the optimizer step is streamed over them (bit-identical to the step without
// offload). Checkpoints read the offloaded state back and write it
// out on load. Only the element-wise rules (adamw, sgd, lion) can be streamed (config validation refuses others).
//
// Every collective goes through the dp Comm (so the ledger counts it): phase "backward" for the gradient
// reductions, "optimizer" for the norms and the parameter all-gather, "other" for checkpoint gathers.
//
// Not thread-safe; the autograd engine runs the hooks on the thread that calls backward() (CPU).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "kolos/config/config.h"
#include "kolos/dist/comm.h"
#include "kolos/memory/chunk_manager.h"
#include "kolos/memory/offload.h"
#include "kolos/memory/tiers.h"
#include "kolos/models/model.h"
#include "kolos/optim/optimizer.h"
#include "kolos/parallel/plan.h"

namespace kolos::parallel {

struct Bucket {
  int64_t offset = 0, numel = 0;  // flat range, numel a multiple of 16·dp
  int first_param = 0, end_param = 0;  // the parameters [first_param, end_param) in spec order
  int64_t shard_offset = 0;       // where this rank's chunk lies in the shard buffers (numel / dp elements)
};

// What this rank holds, in elements (for the shard checks of the parity tests).
struct ShardReport {
  int64_t flat_numel = 0;   // the whole padded layout
  int64_t param_numel = 0;  // parameter storage on this rank
  int64_t param_elements = 0;  // parameter elements (this tp rank's pieces, without the layout's padding)
  int64_t grad_numel = 0;   // persistent gradient storage
  int64_t optim_numel = 0;  // optimizer state (all its buffers)
  int64_t optim_states = 0; // optimizer state buffers (adamw, lamb: 2; sgd, lars: 1, 0 without momentum; lion: 1)
  int64_t buckets = 0;      // zero 3: the chunks
  int64_t kept_chunks = 0;  // zero 3: chunks kept gathered from forward to their reduction (a tied embedding's)
  nlohmann::json to_json() const;
};

class DataParallel {
 public:
  using Clock = std::chrono::steady_clock;

  // Allocates the buffers, initialises every parameter from (config.train.seed, name) on its global shape, binds
  // them to `model`, registers the hooks and builds the optimizer. `dp_comm` is the dp axis (null or size 1: one
  // data-parallel rank, nothing communicated). With one rank, zero is ignored (nothing to shard).
  // `tp_comm`: the tensor-parallel group (null or size 1: none); the model's sharding must match it, and each
  // parameter is then this tp rank's piece (ParamSpec::local_shape).
  DataParallel(models::Model& model, const Config& config, const Plan& plan, dist::Comm* dp_comm,
               dist::Comm* tp_comm = nullptr);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Step protocol: begin_step(); for each micro-step k: begin_micro(k, K); forward; backward; end_micro();
  // then grad_norm() and optimizer_step().
  void begin_step();
  void begin_micro(int64_t micro, int64_t num_micro);
  // Launches the reductions that backward did not (parameters without a gradient) and waits for all of them.
  void end_micro();
  // Global L2 norm of the step's (reduced, averaged) gradient.
  double grad_norm();
  // The optimizer on this rank's shard with gradients multiplied by grad_scale, then the all-gather of the
  // parameters (zero >= 1). Collective at zero >= 1.
  void optimizer_step(double lr, double grad_scale);
  // ZeRO-3 with offload: optimizer_step() may return with the streamed update still in flight, overlapping the next
  // forward (memory/offload.h "The overlapped step"; everything that needs its results waits for them). This waits
  // for it: for timing the last step, and before anything outside this class reads the tier. Rethrows its error.
  void finish_optimizer_step();
  bool optimizer_step_in_flight() const { return streamed_ && streamed_->in_flight(); }

  // The optimizer state as whole tensors named <state>.<param> (adamw, lamb: exp_avg, exp_avg_sq; sgd, lars, lion:
  // momentum), shaped like the parameters. Collective at zero >= 1 (every dp rank must call it; all get them).
  std::vector<std::pair<std::string, at::Tensor>> optimizer_state();
  // Restores state saved by optimizer_state() under any layout (every rank reads the whole tensors and keeps its
  // shard). InputError naming a missing or mis-shaped tensor; tensors of other state names are ignored.
  void load_optimizer_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step_count);
  int64_t optimizer_steps() const { return optimizer_->step_count(); }
  // The parameters as whole tensors (collective over tp: every tp rank must call it), named as in the model.
  std::vector<std::pair<std::string, at::Tensor>> whole_params();
  // Sets every parameter from whole tensors (this rank keeps its piece); InputError naming `source` and the
  // missing or mis-shaped tensor.
  void load_whole_params(const std::map<std::string, at::Tensor>& tensors, const std::string& source);
  const optim::Optimizer& optimizer() const { return *optimizer_; }
  // Whether the gradients are reduced in fp16 (train.dtype = "fp16").
  bool fp16_reduction() const { return fp16_; }

  // Test hook (tests/train/mixed_precision_test.cpp), not for training: the next armed micro-step writes +inf into
  // the first gradient element of the first bucket it reduces, on this rank only, before the reduction.
  void inject_inf_for_test() { inject_inf_ = true; }
  // Test hook: memory.placement = "auto" sizes the shard cache to `bytes` instead of by the budget rule.
  void shard_cache_for_test(int64_t bytes) { test_cache_bytes_ = bytes; }

  // Pipeline parallelism with a tied embedding (the stem's stage and the head's each hold a copy):
  //   hold_gradient  the parameter's gradient is not final when backward is done with it here — the other stage's
  //                  part is added after the last backward — so backward's hooks never launch its bucket;
  //                  end_micro() of the last micro-step does (call it after adding).
  //   exclude_from_norm  grad_norm() leaves the parameter out (the other stage counts the shared tensor once).
  // `param`: index in param_specs() order (param_index). Set before the first step.
  void hold_gradient(int param) { held_.at(param) = true; }
  void exclude_from_norm(int param) { norm_excluded_.at(param) = true; }
  // The index of parameter `name` on this rank, -1 when it holds none of that name.
  int param_index(const std::string& name) const;
  // The parameter's local gradient as backward accumulated it (zero 0 and 1: a view of the flat buffer; before
  // end_micro() has reduced it).
  at::Tensor local_grad(int param) const { return params_.at(param).grad(); }

  int zero() const { return zero_; }
  int dp() const { return dp_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<optim::FlatSlot>& slots() const { return slots_; }
  ShardReport report() const;
  // Offload figures of this rank (metrics.jsonl): bytes of parameters, gradients and optimizer state held per tier —
  // compute: the parameter and gradient buffers (ZeRO-3: the resident shards and the offloaded shards read back at
  // the moment), the optimizer's resident state and the streaming buffers; host/nvme: the tier's regions — and the
  // tier's counters since construction (requests, bytes moved, milliseconds the training thread waited for it).
  struct MemoryFigures {
    int64_t compute = 0, host = 0, nvme = 0;
    int64_t moves = 0, io_bytes = 0;
    double io_wait_ms = 0;
    // memory.placement = "auto": the shard cache's bytes now (counted in compute too) and its hits so far.
    int64_t cached = 0, cache_hits = 0;
  };
  bool offloading() const { return tier_ != nullptr; }
  // memory.placement = "auto" (ZeRO-3): every shard's home on the tier, the ChunkManager's shard cache sized after
  // the second step from memory.budget and the peak RSS so far.
  bool auto_placement() const;
  MemoryFigures memory_figures() const;
  // When backward first reached the first transformer block of the last armed micro-step (the earliest gradient
  // of a parameter named h.0.* or layers.0.*): for the overlap check. Clock::time_point{} if never.
  Clock::time_point first_block_ready() const { return first_block_ready_; }
  // zero = 3, for the prefetch check: the block of each chunk, and when each block (hook order: stem, blocks, head)
  // began computing in the forward of the last micro-step of the step (its before_forward returned). Empty otherwise.
  std::vector<int> chunk_blocks() const;
  const std::vector<Clock::time_point>& block_forward_start() const { return block_forward_start_; }

 private:
  struct Pending {
    dist::Handle handle;
    at::Tensor result;   // zero 2: the reduced chunk, added into the gradient shard
    int64_t shard_offset = 0;
    at::Tensor staging;  // zero 2: kept alive until the reduction is done
    at::Tensor half, dest;  // fp16: the reduced fp16 values, copied (zero 2: added) into the fp32 `dest`
  };
  class ReadyHook;

  void build_layout(const std::vector<nn::ParamSpec>& specs);
  // zero = 3: the chunk manager, the model's block hooks and the optimizer on the shards (the constructor's rest).
  void build_chunked();
  // The optimizer over `ob`, with the offloaded tail of its state (and ZeRO-3's offloaded shards) streamed.
  void build_optimizer(optim::OptimizerBuffers ob);
  // State buffer k of the optimizer as a whole (state_numel elements; the offloaded tail read back), and back.
  at::Tensor state_buffer(size_t k);
  void set_state_buffer(size_t k, const at::Tensor& values);
  // zero = 3: whole chunks (capacity elements each) <-> this rank's shards of them in a shard-sized buffer.
  std::vector<at::Tensor> gather_chunks(const at::Tensor& shard);
  void on_grad_ready(int param);
  void launch_ready_buckets();
  void launch(int bucket);
  int64_t chunk_offset(const Bucket& b) const { return b.offset + rank_ * (b.numel / dp_); }
  // Whole flat buffer ← the dp ranks' shards (collective).
  at::Tensor gather_flat(const at::Tensor& shard);
  // Parameter `param`'s whole tensor from this tp rank's piece (collective over tp for split parameters).
  at::Tensor whole_across_tp(const at::Tensor& piece, size_t param);

  models::Model& model_;
  Config config_;
  dist::Comm* comm_ = nullptr;  // not owned: the mesh outlives this
  dist::Comm* tp_comm_ = nullptr;
  int dp_ = 1, rank_ = 0, zero_ = 0, tp_ = 1, tp_rank_ = 0;
  nn::TpLayout tp_layout_;  // how the tp ranks hold the parameters (1D, or the 2D grid)
  std::vector<nn::ParamSpec> specs_;
  std::vector<optim::Piece> pieces_;  // the optimizer's (gradient offsets in grad_buffer_)
  at::Tensor grad_buffer_;
  bool sequence_sliced_ = false;  // Megatron-SP: sum the sequence_sliced parameters' gradients over tp
  bool last_micro_ = false;
  void reduce_sequence_sliced();
  std::vector<optim::FlatSlot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;   // per parameter
  std::vector<bool> is_first_block_;
  std::vector<bool> held_, norm_excluded_;  // per parameter (pipeline's tied embedding)
  std::vector<at::Tensor> params_;
  at::Tensor flat_params_, flat_grads_, grad_shard_;
  bool fp16_ = false;       // gradients reduced in fp16
  at::Tensor half_grads_;   // fp16, zero 0 and 1: the buckets' reduction buffer (flat layout)
  bool inject_inf_ = false; // test hook
  int64_t shard_numel_ = 0;
  std::unique_ptr<memory::TierStore> tier_;  // offload: memory.offload_tier (null: nothing offloaded)
  std::unique_ptr<optim::Optimizer> optimizer_;
  // zero = 3.
  std::unique_ptr<memory::ChunkManager> chunks_;
  std::unique_ptr<memory::StreamedStep> streamed_;  // offload: the optimizer step over the offloaded tail
  std::vector<int> chunk_param_;  // per parameter (spec order): its index in the manager
  std::vector<int64_t> chunk_shard_offset_;  // per chunk: where its shard lies in the shard buffers
  int kept_chunks_ = 0;
  bool record_blocks_ = false;
  int64_t auto_steps_ = 0;  // memory.placement = "auto": optimizer steps so far (the cache is sized after the second)
  int64_t test_cache_bytes_ = -1;
  std::vector<Clock::time_point> block_forward_start_;

  // Per micro-step state of the hooks.
  bool armed_ = false;
  std::vector<int> pending_params_;  // per bucket: parameters still without their final gradient
  std::vector<bool> param_ready_;
  int next_launch_ = -1;            // buckets launch from the last (highest offset) down
  std::vector<Pending> in_flight_;
  Clock::time_point first_block_ready_{};
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
};

}  // namespace kolos::parallel
