#include "kolos/optim/sgd.h"

namespace kolos::optim {

SGD::SGD(const OptimConfig& config, OptimizerBuffers buffers)
    : Optimizer(std::move(buffers)), momentum_(static_cast<float>(config.momentum)), nesterov_(config.nesterov) {
  if (momentum_ != 0.0f) add_state("momentum");
}

void SGD::update_spans(double lr_in, double grad_scale, const std::vector<Span>& spans) {
  const float lr = static_cast<float>(lr_in), s = static_cast<float>(grad_scale), mu = momentum_;
  const bool nesterov = nesterov_;
  for (const auto& span : spans) {
    float* p = span.params;
    const float* g = span.grads;
    float* b = state_.empty() ? nullptr : span.state[0];
    const float wd = static_cast<float>(span.weight_decay);
    parallel_blocks(span.numel, [=](int64_t begin, int64_t end) {
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
