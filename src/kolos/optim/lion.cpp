#include "kolos/optim/lion.h"

namespace kolos::optim {

Lion::Lion(const OptimConfig& config, OptimizerBuffers buffers) : Optimizer(std::move(buffers)), config_(config) {
  add_state("momentum");
}

void Lion::update_spans(double lr_in, double grad_scale, const std::vector<Span>& spans) {
  const float lr = static_cast<float>(lr_in), s = static_cast<float>(grad_scale);
  const float beta1 = static_cast<float>(config_.beta1), one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
  const float beta2 = static_cast<float>(config_.beta2), one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
  for (const auto& span : spans) {
    float* x = span.params;
    const float* g = span.grads;
    float* m = span.state[0];
    const float decay = static_cast<float>(1.0 - lr_in * span.weight_decay);
    parallel_blocks(span.numel, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float gi = g[i] * s;
        const float c = beta1 * m[i] + one_minus_beta1 * gi;
        const float sign = static_cast<float>((c > 0.0f) - (c < 0.0f));
        x[i] = x[i] * decay - lr * sign;
        m[i] = beta2 * m[i] + one_minus_beta2 * gi;
      }
    });
  }
}

}  // namespace kolos::optim
