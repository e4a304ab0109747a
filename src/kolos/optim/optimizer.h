// The optimizer interface: an update rule over flat fp32 buffers, chosen by optim.name.
//
// An optimizer does not know parameters: it updates pieces of three flat buffers — the parameters, their gradients
// and its own state buffers (named, e.g. "exp_avg", "momentum") — in place. A piece maps `numel` consecutive
// elements at `param_offset` of the parameter buffer to the same count at `grad_offset` of the gradient buffer and
// `state_offset` of every state buffer, and belongs to one parameter tensor (`tensor`, an index into the model's
// parameters). One process updates every element (the three offsets equal); a ZeRO rank updates only its shard
// (gradients and states shard-sized), so a tensor may be split into pieces on different ranks at any element.
//
// Rules (each in its header): adamw (adamw.h), sgd (sgd.h), lars (lars.h), lamb (lamb.h), lion (lion.h).
// LARS and LAMB scale each tensor's update by a trust ratio of whole-tensor norms: they sum per-tensor partial
// squared norms over their own pieces (in double) into one vector, hand it to each NormReducer in turn — which sums
// it over the other holders of the same tensors (the dp ranks under ZeRO; a tensor-parallel axis adds its own) —
// then apply the update. The other rules are element-wise and never call the reducers.
//
// The gradient scale (clipping factor, later 1/loss scale) is applied while reading, so gradients are never
// rewritten. Not thread-safe; step() is collective over the reducers' groups when the rule uses norms.
//
// Streamed steps (memory/offload.h). The element-wise rules (elementwise() true: adamw, sgd, lion) can update their
// elements window by window: begin_step() counts the step once, then update() is called with StepWindows that
// cover the state range [0, state_numel) once each, in any order. A window names a range of state offsets and
// where the state values of that range are (and, optionally, the parameter values), so the caller may keep part of
// the state — and part of the parameters — elsewhere (OptimizerBuffers::resident_state, resident_params): the
// optimizer then allocates its state buffers for the resident head only. Every element goes through the same code
// whichever window holds it, so a streamed step is bit-identical to step().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "kolos/config/config.h"

namespace kolos::optim {

// A parameter's place in the flat buffers.
struct FlatSlot {
  std::string name;
  int64_t offset = 0;  // elements from the start of the buffer
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool decay = true;   // weight decay applies (resolved from the spec and optim.decay_*)
  bool adapt = true;   // LARS/LAMB trust ratio applies (false for norms and biases unless optim.adapt_norms_biases)
};

// A run of elements of one tensor, updated with one weight decay (see the header comment).
struct Piece {
  int64_t param_offset = 0, grad_offset = 0, state_offset = 0, numel = 0;
  double weight_decay = 0;
  int64_t tensor = 0;  // which parameter tensor (index < OptimizerBuffers::num_tensors)
  bool adapt = true;   // LARS/LAMB: scale by the trust ratio (else the ratio is 1)
};

// Pieces for updating every element of a flat layout, one per slot, each extended over the padding after it up to
// the next slot (the padding is zero and stays zero). Offsets are equal in all three buffers.
std::vector<Piece> pieces_for_slots(const std::vector<FlatSlot>& slots, double weight_decay);

// Sums, in place, a 1-D float64 tensor of per-tensor partial sums over the other ranks that hold parts of the same
// tensors. Collective: every rank of its group calls it in the same order with a vector of the same length.
using NormReducer = std::function<void(at::Tensor& partial_sums)>;

// What an optimizer updates.
struct OptimizerBuffers {
  at::Tensor params, grads;  // 1-D contiguous fp32; every piece lies inside them
  int64_t state_numel = 0;   // elements of each state buffer
  std::vector<Piece> pieces;
  int64_t num_tensors = 0;   // parameter tensors of the whole model (the same on every rank)
  std::vector<NormReducer> norm_reducers;  // empty: this rank holds whole tensors
  // Offload (see "Streamed steps" above); -1: everything resident. The state buffers hold the state offsets
  // [0, resident_state); `params` holds the parameter offsets [0, resident_params) (pieces beyond it are legal only
  // in the streamed range and get their parameters from the windows); `grads` the gradient offsets
  // [0, resident_grads) in the same way. Element-wise rules only.
  int64_t resident_state = -1;
  int64_t resident_params = -1;
  int64_t resident_grads = -1;
};

// One window of a streamed step: the state offsets [begin, end), state[k] the values of state buffer k (the order
// of state()) for them — offset s at state[k][s − begin] — and, when `params` is not null, the parameters of the
// pieces in the window: the parameter of state offset s at params[s − begin] (such pieces must have
// param_offset == state_offset, as ZeRO-3's shards do). Null params: the parameter buffer (resident). `grads`
// likewise for the gradients (pieces with grad_offset == state_offset); null: the gradient buffer.
struct StepWindow {
  int64_t begin = 0, end = 0;
  std::vector<float*> state;
  float* params = nullptr;
  const float* grads = nullptr;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // optim.name of the rule.
  virtual const char* name() const = 0;
  // One update with learning rate `lr`; every gradient is multiplied by grad_scale first. Element-wise rules: the
  // whole resident range (everything must be resident). LARS and LAMB override it.
  virtual void step(double lr, double grad_scale);

  // Streamed steps (see the header comment). Whether the rule updates each element on its own (adamw, sgd, lion).
  virtual bool elementwise() const { return false; }
  // Counts one step (the bias corrections of adamw depend on it); then update() over windows covering the range.
  void begin_step() { ++step_count_; }
  // Updates the pieces' elements whose state offsets lie in the window, with this step's learning rate and
  // gradient scale. KOLOS_ASSERT for a rule that is not element-wise or a window outside the buffers.
  void update(double lr, double grad_scale, const StepWindow& window);
  // The window over the resident state offsets [begin, end) (state and parameters from the buffers).
  StepWindow resident_window(int64_t begin, int64_t end);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t steps) { step_count_ = steps; }
  // The state buffers by name, in a fixed order; empty for a stateless rule. Each holds the resident state offsets
  // [0, resident_state_numel()) — all of them (state_numel) unless offloading.
  const std::vector<std::pair<std::string, at::Tensor>>& state() const { return state_; }
  // Elements of state held in memory here (all buffers).
  int64_t state_numel() const;
  // Elements per state buffer: all of them, and those held by state() (the rest: by the caller, streamed).
  int64_t buffer_numel() const { return buf_.state_numel; }
  int64_t resident_state_numel() const { return buf_.resident_state; }

 protected:
  // Checks the buffers and pieces (KOLOS_ASSERT: the caller built them).
  explicit Optimizer(OptimizerBuffers buffers);
  // Adds a zero-initialised state buffer named `name`.
  at::Tensor& add_state(const std::string& name);
  // sums (2·num_tensors float64: [2t] and [2t+1] for tensor t) summed over every reducer.
  void reduce_norms(at::Tensor& sums) const;

  // A run of consecutive elements of one window for an element-wise rule: numel elements at params, grads and
  // state[k], one weight decay.
  struct Span {
    float* params = nullptr;
    const float* grads = nullptr;
    float* state[2] = {nullptr, nullptr};
    int64_t numel = 0;
    double weight_decay = 0;
  };
  // The pieces' elements inside `window` as spans, neighbours contiguous in every buffer with equal weight decay
  // merged (long runs for the kernels; tensors do not matter to an element-wise rule).
  std::vector<Span> spans(const StepWindow& window) const;
  // An element-wise rule's update of the spans (with step_count() already counted).
  virtual void update_spans(double lr, double grad_scale, const std::vector<Span>& spans);

  OptimizerBuffers buf_;
  int64_t step_count_ = 0;
  std::vector<std::pair<std::string, at::Tensor>> state_;
};

// The rule named by config.name ("adamw", "sgd", "lars", "lamb", "lion"). std::logic_error for another name
// (validate() rejects it first).
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& config, OptimizerBuffers buffers);

// How many state buffers (of state_numel elements each) make_optimizer(config, ...) allocates: adamw, lamb 2;
// lion 1; sgd, lars 1 with momentum, 0 without.
int64_t state_buffers(const OptimConfig& config);

// The optim.* keys that define config.name's update rule and state, with their values (checkpoints record them; a
// resume must not change them). The schedule keys (lr, min_lr, warmup_steps, schedule) and grad_clip are not
// among them.
nlohmann::json rule_options(const OptimConfig& config);

// The trust ratio of LARS and LAMB: numerator / denominator clamped to [min_ratio, max_ratio] (max_ratio 0: no
// upper bound), or exactly 1 (unclamped) when either is 0 — the convention of the published implementations.
double trust_ratio(double numerator, double denominator, double min_ratio, double max_ratio);

// Runs fn(begin, end) over [0, n) in blocks of kBlockElements on at::get_num_threads() threads (inline for one
// block). Block b is [b·kBlockElements, min(n, (b+1)·kBlockElements)): a rule that sums per block and adds the
// block sums in block order gets the same result for any thread count.
constexpr int64_t kBlockElements = int64_t{1} << 14;
void parallel_blocks(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace kolos::optim
