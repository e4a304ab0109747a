#include "kolos/optim/sgd.h"

namespace kolos::optim {

SGD::SGD(const OptimConfig& config, OptimizerBuffers buffers)
    : Optimizer(std::move(buffers)), momentum_(static_cast<float>(config.momentum)), nesterov_(config.nesterov) {
  if (momentum_ != 0.0f) add_state("momentum");
}

void SGD::step(double lr_in, double grad_scale) {
  ++step_count_;
  const float lr = static_cast<float>(lr_in), s = static_cast<float>(grad_scale), mu = momentum_;
  const bool nesterov = nesterov_;
  for (const auto& r : buf_.pieces) {
    float* p = buf_.params.data_ptr<float>() + r.param_offset;
    const float* g = buf_.grads.data_ptr<float>() + r.grad_offset;
    float* b = state_.empty() ? nullptr : state_[0].second.data_ptr<float>() + r.state_offset;
    const float wd = static_cast<float>(r.weight_decay);
    parallel_blocks(r.numel, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float d = g[i] * s + wd * p[i];
        if (!b) {
          p[i] -= lr * d;
          continue;
        }
        const float bi = mu * b[i] + d;
        b[i] = bi;
        p[i] -= lr * (nesterov ? d + mu * bi : bi);
      }
    });
  }
}

}  // namespace kolos::optim
