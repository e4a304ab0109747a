#include "kolos/optim/adamw.h"

#include <cmath>

#include "kolos/optim/adamw_kernel.h"

namespace kolos::optim {

AdamW::AdamW(const OptimConfig& config, OptimizerBuffers buffers) : Optimizer(std::move(buffers)), config_(config) {
  add_state("exp_avg");
  add_state("exp_avg_sq");
  for (const auto& r : buf_.pieces) {
    Piece* last = runs_.empty() ? nullptr : &runs_.back();
    if (last && last->weight_decay == r.weight_decay && last->param_offset + last->numel == r.param_offset &&
        last->grad_offset + last->numel == r.grad_offset && last->state_offset + last->numel == r.state_offset) {
      last->numel += r.numel;
    } else {
      runs_.push_back(r);
    }
  }
}

void AdamW::step(double lr, double grad_scale) {
  ++step_count_;
  AdamWStepArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(config_.beta1);
  a.beta2 = static_cast<float>(config_.beta2);
  a.eps = static_cast<float>(config_.eps);
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(config_.beta1, static_cast<double>(step_count_)));
  a.bias_correction2 = static_cast<float>(1.0 - std::pow(config_.beta2, static_cast<double>(step_count_)));
  a.grad_scale = static_cast<float>(grad_scale);
  float* p = buf_.params.data_ptr<float>();
  const float* g = buf_.grads.data_ptr<float>();
  float* m = state_[0].second.data_ptr<float>();
  float* v = state_[1].second.data_ptr<float>();
  for (const auto& r : runs_) {
    a.weight_decay = static_cast<float>(r.weight_decay);
    adamw_step_fp32(p + r.param_offset, g + r.grad_offset, m + r.state_offset, v + r.state_offset, r.numel, a);
  }
}

}  // namespace kolos::optim
