#include "kolos/optim/optimizer.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <stdexcept>

#include "kolos/core/error.h"
#include "kolos/optim/adamw.h"
#include "kolos/optim/lamb.h"
#include "kolos/optim/lars.h"
#include "kolos/optim/lion.h"
#include "kolos/optim/sgd.h"

namespace kolos::optim {

std::vector<Piece> pieces_for_slots(const std::vector<FlatSlot>& slots, double weight_decay) {
  std::vector<Piece> pieces;
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto& s = slots[i];
    const int64_t end = i + 1 < slots.size() ? slots[i + 1].offset : s.offset + s.numel;
    pieces.push_back({s.offset, s.offset, s.offset, end - s.offset, s.decay ? weight_decay : 0.0,
                      static_cast<int64_t>(i), s.adapt});
  }
  return pieces;
}

Optimizer::Optimizer(OptimizerBuffers buffers) : buf_(std::move(buffers)) {
  const auto& p = buf_.params;
  const auto& g = buf_.grads;
  KOLOS_ASSERT(p.dim() == 1 && g.dim() == 1 && p.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat &&
                   p.is_contiguous() && g.is_contiguous(),
               "optimizers need contiguous flat fp32 buffers");
  if (buf_.resident_state < 0) buf_.resident_state = buf_.state_numel;
  if (buf_.resident_params < 0) buf_.resident_params = p.numel();
  if (buf_.resident_grads < 0) buf_.resident_grads = g.numel();
  KOLOS_ASSERT(buf_.resident_state <= buf_.state_numel && buf_.resident_params <= p.numel() &&
                   buf_.resident_grads <= g.numel(),
               "resident ranges beyond the buffers");
  for (const auto& r : buf_.pieces)
    KOLOS_ASSERT(r.numel >= 0 && r.param_offset >= 0 &&
                     (r.param_offset + r.numel <= buf_.resident_params ||
                      (r.param_offset == r.state_offset && r.param_offset >= buf_.resident_params)) &&
                     r.grad_offset >= 0 &&
                     (r.grad_offset + r.numel <= buf_.resident_grads ||
                      (r.grad_offset == r.state_offset && r.grad_offset >= buf_.resident_grads)) &&
                     r.state_offset >= 0 &&
                     r.state_offset + r.numel <= buf_.state_numel && r.tensor >= 0 && r.tensor < buf_.num_tensors,
                 "optimizer piece out of its buffers (tensor {} of {})", r.tensor, buf_.num_tensors);
}

at::Tensor& Optimizer::add_state(const std::string& name) {
  KOLOS_ASSERT(state_.size() < 2, "at most two state buffers (Span::state)");
  state_.emplace_back(name, at::zeros({buf_.resident_state}, at::kFloat));
  return state_.back().second;
}

void Optimizer::step(double lr, double grad_scale) {
  KOLOS_ASSERT(elementwise(), "{}: step() must be overridden", name());
  KOLOS_ASSERT(buf_.resident_state == buf_.state_numel && buf_.resident_params == buf_.params.numel() &&
                   buf_.resident_grads == buf_.grads.numel(),
               "{}: part of the state or parameters is offloaded: stream the step (memory/offload.h)", name());
  begin_step();
  update(lr, grad_scale, resident_window(0, buf_.state_numel));
}

StepWindow Optimizer::resident_window(int64_t begin, int64_t end) {
  StepWindow w;
  w.begin = begin;
  w.end = end;
  for (auto& s : state_) w.state.push_back(s.second.data_ptr<float>() + begin);
  return w;
}

void Optimizer::update(double lr, double grad_scale, const StepWindow& window) {
  KOLOS_ASSERT(elementwise(), "{}: not an element-wise rule, it cannot be streamed", name());
  KOLOS_ASSERT(window.begin >= 0 && window.begin <= window.end && window.end <= buf_.state_numel &&
                   window.state.size() == state_.size(),
               "{}: window [{}, {}) with {} state pointers, state [0, {}) with {} buffers", name(), window.begin,
               window.end, window.state.size(), buf_.state_numel, state_.size());
  update_spans(lr, grad_scale, spans(window));
}

void Optimizer::update_spans(double, double, const std::vector<Span>&) {
  throw std::logic_error(std::string(name()) + ": update_spans of a rule that is not element-wise");
}

std::vector<Optimizer::Span> Optimizer::spans(const StepWindow& w) const {
  std::vector<Span> out;
  float* params = buf_.params.data_ptr<float>();
  const float* grads = buf_.grads.data_ptr<float>();
  for (const auto& r : buf_.pieces) {
    const int64_t lo = std::max(w.begin, r.state_offset), hi = std::min(w.end, r.state_offset + r.numel);
    if (lo >= hi) continue;
    const int64_t skip = lo - r.state_offset;
    // The run's parameters (gradients): in the window's buffer, or in the resident one at the piece's offset.
    auto locate = [&](auto* window_values, auto* resident_values, int64_t offset, int64_t resident, const char* what) {
      if (window_values) {
        KOLOS_ASSERT(offset == r.state_offset, "{}: window {} for a piece at offset {} != state_offset {}", name(),
                     what, offset, r.state_offset);
        return window_values + (lo - w.begin);
      }
      KOLOS_ASSERT(offset + skip + (hi - lo) <= resident, "{}: window [{}, {}) reaches offloaded {} without window {}",
                   name(), w.begin, w.end, what, what);
      return resident_values + offset + skip;
    };
    Span s;
    s.params = locate(w.params, params, r.param_offset, buf_.resident_params, "parameters");
    s.grads = locate(w.grads, grads, r.grad_offset, buf_.resident_grads, "gradients");
    for (size_t k = 0; k < w.state.size(); ++k) s.state[k] = w.state[k] + (lo - w.begin);
    s.numel = hi - lo;
    s.weight_decay = r.weight_decay;
    if (!out.empty()) {
      Span& last = out.back();
      bool contiguous = last.weight_decay == s.weight_decay && last.params + last.numel == s.params &&
                        last.grads + last.numel == s.grads;
      for (size_t k = 0; k < w.state.size(); ++k) contiguous = contiguous && last.state[k] + last.numel == s.state[k];
      if (contiguous) {
        last.numel += s.numel;
        continue;
      }
    }
    out.push_back(s);
  }
  return out;
}

int64_t Optimizer::state_numel() const {
  int64_t n = 0;
  for (const auto& s : state_) n += s.second.numel();
  return n;
}

void Optimizer::reduce_norms(at::Tensor& sums) const {
  for (const auto& reduce : buf_.norm_reducers) reduce(sums);
}

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& config, OptimizerBuffers buffers) {
  if (config.name == "adamw") return std::make_unique<AdamW>(config, std::move(buffers));
  if (config.name == "sgd") return std::make_unique<SGD>(config, std::move(buffers));
  if (config.name == "lars") return std::make_unique<LARS>(config, std::move(buffers));
  if (config.name == "lamb") return std::make_unique<LAMB>(config, std::move(buffers));
  if (config.name == "lion") return std::make_unique<Lion>(config, std::move(buffers));
  throw std::logic_error("make_optimizer: unknown optimizer " + config.name);
}

int64_t state_buffers(const OptimConfig& c) {
  if (c.name == "adamw" || c.name == "lamb") return 2;
  if (c.name == "lion") return 1;
  return c.momentum != 0 ? 1 : 0;
}

nlohmann::json rule_options(const OptimConfig& c) {
  nlohmann::json j = {{"name", c.name},
                      {"weight_decay", c.weight_decay},
                      {"decay_norms_biases", c.decay_norms_biases},
                      {"decay_embeddings", c.decay_embeddings}};
  if (c.name == "adamw" || c.name == "lamb" || c.name == "lion") {
    j["beta1"] = c.beta1;
    j["beta2"] = c.beta2;
  }
  if (c.name == "adamw" || c.name == "lamb") j["eps"] = c.eps;
  if (c.name == "sgd" || c.name == "lars") j["momentum"] = c.momentum;
  if (c.name == "sgd") j["nesterov"] = c.nesterov;
  if (c.name == "lars") j["trust_coefficient"] = c.trust_coefficient;
  if (c.name == "lamb") j["bias_correction"] = c.bias_correction;
  if (c.name == "lars" || c.name == "lamb") {
    j["min_trust_ratio"] = c.min_trust_ratio;
    j["max_trust_ratio"] = c.max_trust_ratio;
    j["adapt_norms_biases"] = c.adapt_norms_biases;
  }
  return j;
}

double trust_ratio(double numerator, double denominator, double min_ratio, double max_ratio) {
  if (numerator == 0 || denominator == 0) return 1.0;
  double r = numerator / denominator;
  if (r < min_ratio) r = min_ratio;
  if (max_ratio > 0 && r > max_ratio) r = max_ratio;
  return r;
}

void parallel_blocks(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (n <= kBlockElements) {
    fn(0, n);
    return;
  }
  const int64_t blocks = (n + kBlockElements - 1) / kBlockElements;
  at::parallel_for(0, blocks, 2, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) fn(b * kBlockElements, std::min(n, (b + 1) * kBlockElements));
  });
}

}  // namespace kolos::optim
