#include "kolos/optim/lars.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/optim/norm.h"

namespace kolos::optim {

LARS::LARS(const OptimConfig& config, OptimizerBuffers buffers) : Optimizer(std::move(buffers)), config_(config) {
  KOLOS_ASSERT(buf_.resident_state == buf_.state_numel && buf_.resident_params == buf_.params.numel(),
               "lars: whole-tensor norms cannot be streamed (offload is refused for it at validation)");
  if (config_.momentum != 0) add_state("momentum");
}

void LARS::step(double lr, double grad_scale) {
  ++step_count_;
  // 1. Partial squared norms of w and of the unscaled g over this rank's pieces, summed over the holders.
  at::Tensor sums = at::zeros({2 * buf_.num_tensors}, at::kDouble);
  double* sq = sums.data_ptr<double>();
  for (const auto& r : buf_.pieces) {
    if (!r.adapt) continue;
    sq[2 * r.tensor] += sum_of_squares(buf_.params.narrow(0, r.param_offset, r.numel));
    sq[2 * r.tensor + 1] += sum_of_squares(buf_.grads.narrow(0, r.grad_offset, r.numel));
  }
  reduce_norms(sums);
  sq = sums.data_ptr<double>();

  // 2. The update, each piece with its tensor's local learning rate.
  const float s = static_cast<float>(grad_scale), mu = static_cast<float>(config_.momentum);
  for (const auto& r : buf_.pieces) {
    double local = 1.0;
    if (r.adapt) {
      const double w_norm = std::sqrt(sq[2 * r.tensor]);
      const double g_norm = std::sqrt(sq[2 * r.tensor + 1]) * std::abs(grad_scale);
      local = trust_ratio(config_.trust_coefficient * w_norm, g_norm + r.weight_decay * w_norm,
                          config_.min_trust_ratio, config_.max_trust_ratio);
    }
    const float step_size = static_cast<float>(lr * local), wd = static_cast<float>(r.weight_decay);
    float* w = buf_.params.data_ptr<float>() + r.param_offset;
    const float* g = buf_.grads.data_ptr<float>() + r.grad_offset;
    float* v = state_.empty() ? nullptr : state_[0].second.data_ptr<float>() + r.state_offset;
    parallel_blocks(r.numel, [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float d = step_size * (g[i] * s + wd * w[i]);
        const float vi = v ? mu * v[i] + d : d;
        if (v) v[i] = vi;
        w[i] -= vi;
      }
    });
  }
}

}  // namespace kolos::optim
