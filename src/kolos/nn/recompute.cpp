#include "kolos/nn/recompute.h"

#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include "kolos/core/error.h"

namespace kolos::nn {

namespace {

using torch::autograd::variable_list;

at::Tensor rng_state() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const at::Tensor& state) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Sets the generator state of the forward for the recomputation; puts back the state it found on exit.
class RngScope {
 public:
  explicit RngScope(const at::Tensor& state) : found_(rng_state()) { set_rng_state(state); }
  ~RngScope() { set_rng_state(found_); }
  RngScope(const RngScope&) = delete;
  RngScope& operator=(const RngScope&) = delete;

 private:
  at::Tensor found_;
};

// CPU autocast (mixed precision) is thread-local state that the backward, often called outside the forward's
// autocast scope, would not have: the recomputation runs under the forward's.
struct AutocastState {
  bool enabled = at::autocast::is_cpu_enabled();
  at::ScalarType dtype = at::autocast::get_autocast_cpu_dtype();
};

// Autocast caches the low-precision copy of each weight it casts, with the copy's graph edge to the weight. A copy
// cached under the forward's no-grad has no edge, and a recomputation that found it would leave its weight without
// a gradient; one cached in backward would outlive the optimizer step. Recomputed functions leave the cache alone.
class NoAutocastCache {
 public:
  NoAutocastCache() { at::autocast::set_autocast_cache_enabled(false); }
  ~NoAutocastCache() { at::autocast::set_autocast_cache_enabled(found_); }
  NoAutocastCache(const NoAutocastCache&) = delete;
  NoAutocastCache& operator=(const NoAutocastCache&) = delete;

 private:
  bool found_ = at::autocast::is_autocast_cache_enabled();
};

class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& state) {
    at::autocast::set_cpu_enabled(state.enabled);
    at::autocast::set_autocast_cpu_dtype(state.dtype);
  }
  ~AutocastScope() {
    at::autocast::set_cpu_enabled(found_.enabled);
    at::autocast::set_autocast_cpu_dtype(found_.dtype);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastState found_;
  NoAutocastCache no_cache_;
};

// The graph node of y = recompute_many(fn, inputs): one edge per input (invalid for one that does not require
// grad).
class RecomputeBackward : public torch::autograd::Node {
 public:
  RecomputeBackward(TensorsFn fn, std::vector<at::Tensor> inputs, at::Tensor rng_state, AutocastState autocast)
      : fn_(std::move(fn)), inputs_(std::move(inputs)), rng_state_(std::move(rng_state)), autocast_(autocast) {
    for (const auto& x : inputs_) versions_.push_back(x._version());
  }

  std::string name() const override { return "kolos::nn::RecomputeBackward"; }

  variable_list apply(variable_list&& grads) override {
    KOLOS_ASSERT(fn_, "recompute: backward through a graph whose saved input was already freed (retain_graph)");
    KOLOS_ASSERT(!at::GradMode::is_enabled(), "recompute: backward with create_graph is not supported");
    const size_t n = inputs_.size();
    for (size_t i = 0; i < n; ++i)
      KOLOS_ASSERT(inputs_[i]._version() == versions_[i],
                   "recompute: input {} was modified in place between forward and backward", i);
    if (!grads[0].defined()) return variable_list(n);
    std::vector<at::Tensor> inputs;
    for (size_t i = 0; i < n; ++i) {
      inputs.push_back(inputs_[i].detach());
      if (next_edge(i).is_valid()) inputs.back().requires_grad_(true);
    }
    at::Tensor output;
    {
      RngScope rng(rng_state_);
      AutocastScope autocast(autocast_);
      at::AutoGradMode grad_on(true);
      output = fn_(inputs);
    }
    // Re-entrant backward (the engine runs it on this thread): the parameters' AccumulateGrad nodes, with their
    // hooks, run here, once, as they would have in the outer backward.
    if (output.requires_grad()) torch::autograd::backward({output}, {grads[0]}, /*retain_graph=*/false);
    variable_list out(n);
    for (size_t i = 0; i < n; ++i)
      if (next_edge(i).is_valid()) out[i] = inputs[i].grad();
    return out;
  }

  void release_variables() override {
    fn_ = nullptr;
    inputs_.clear();
    rng_state_.reset();
  }

 private:
  TensorsFn fn_;
  std::vector<at::Tensor> inputs_;  // detached: same storage and version counter
  std::vector<uint32_t> versions_;
  at::Tensor rng_state_;
  AutocastState autocast_;
};

}  // namespace

at::Tensor recompute_many(TensorsFn fn, const std::vector<at::Tensor>& inputs) {
  KOLOS_ASSERT(at::GradMode::is_enabled(), "recompute with grad mode off: call the function itself");
  std::vector<at::Tensor> detached;
  for (const auto& x : inputs) detached.push_back(x.detach());
  at::Tensor state = rng_state();
  const AutocastState autocast;
  at::Tensor output;
  {
    NoAutocastCache no_cache;
    at::NoGradGuard no_grad;
    output = fn(detached);
  }
  // An input itself (saved below) or a view of it must not receive a gradient edge.
  bool alias = output.is_view();
  for (const auto& x : detached) alias = alias || output.is_same(x);
  if (alias) output = output.clone();
  auto node = std::shared_ptr<RecomputeBackward>(
      new RecomputeBackward(std::move(fn), std::move(detached), std::move(state), autocast),
      torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  torch::autograd::set_history(output, node);
  return output;
}

at::Tensor recompute(TensorFn fn, const at::Tensor& x) {
  return recompute_many([fn = std::move(fn)](const std::vector<at::Tensor>& in) { return fn(in[0]); }, {x});
}

}  // namespace kolos::nn
