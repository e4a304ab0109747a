#include "kolos/optim/adamw.h"

#include <cmath>

#include "kolos/optim/adamw_kernel.h"

namespace kolos::optim {

AdamW::AdamW(const OptimConfig& config, OptimizerBuffers buffers) : Optimizer(std::move(buffers)), config_(config) {
  add_state("exp_avg");
  add_state("exp_avg_sq");
}

void AdamW::update_spans(double lr, double grad_scale, const std::vector<Span>& spans) {
  AdamWStepArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(config_.beta1);
  a.beta2 = static_cast<float>(config_.beta2);
  a.eps = static_cast<float>(config_.eps);
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(config_.beta1, static_cast<double>(step_count_)));
  a.bias_correction2 = static_cast<float>(1.0 - std::pow(config_.beta2, static_cast<double>(step_count_)));
  a.grad_scale = static_cast<float>(grad_scale);
  for (const auto& s : spans) {
    a.weight_decay = static_cast<float>(s.weight_decay);
    adamw_step_fp32(s.params, s.grads, s.state[0], s.state[1], s.numel, a);
  }
}

}  // namespace kolos::optim
