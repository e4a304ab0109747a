#include "kolos/optim/lamb.h"

#include <cmath>
#include <vector>

#include "kolos/core/error.h"

namespace kolos::optim {

namespace {

// The per-element constants of one step.
struct Constants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_bc1, inv_sqrt_bc2, grad_scale;
};

// u for one element from the updated moments (pass 1 and pass 2 call this same function).
inline float direction(float m, float v, float x, float wd, const Constants& c) {
  return (m * c.inv_bc1) / (std::sqrt(v) * c.inv_sqrt_bc2 + c.eps) + wd * x;
}

}  // namespace

LAMB::LAMB(const OptimConfig& config, OptimizerBuffers buffers) : Optimizer(std::move(buffers)), config_(config) {
  KOLOS_ASSERT(buf_.resident_state == buf_.state_numel && buf_.resident_params == buf_.params.numel(),
               "lamb: whole-tensor norms cannot be streamed (offload is refused for it at validation)");
  add_state("exp_avg");
  add_state("exp_avg_sq");
}

void LAMB::step(double lr, double grad_scale) {
  ++step_count_;
  Constants c;
  c.beta1 = static_cast<float>(config_.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
  c.beta2 = static_cast<float>(config_.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
  c.eps = static_cast<float>(config_.eps);
  const double t = static_cast<double>(step_count_);
  const double bc1 = config_.bias_correction ? 1.0 - std::pow(config_.beta1, t) : 1.0;
  const double bc2 = config_.bias_correction ? 1.0 - std::pow(config_.beta2, t) : 1.0;
  c.inv_bc1 = static_cast<float>(1.0 / bc1);
  c.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  c.grad_scale = static_cast<float>(grad_scale);
  float* params = buf_.params.data_ptr<float>();
  const float* grads = buf_.grads.data_ptr<float>();
  float* exp_avg = state_[0].second.data_ptr<float>();
  float* exp_avg_sq = state_[1].second.data_ptr<float>();

  // 1. Moments, and the partial squared norms of x and u over this rank's pieces.
  at::Tensor sums = at::zeros({2 * buf_.num_tensors}, at::kDouble);
  double* sq = sums.data_ptr<double>();
  for (const auto& r : buf_.pieces) {
    float* x = params + r.param_offset;
    const float* g = grads + r.grad_offset;
    float* m = exp_avg + r.state_offset;
    float* v = exp_avg_sq + r.state_offset;
    const float wd = static_cast<float>(r.weight_decay);
    const bool adapt = r.adapt;
    // Per-block sums added in block order: the same result for any thread count.
    std::vector<double> block_sq(2 * ((r.numel + kBlockElements - 1) / kBlockElements), 0.0);
    parallel_blocks(r.numel, [&, x, g, m, v, wd, adapt](int64_t begin, int64_t end) {
      double x_sq = 0, u_sq = 0;
      for (int64_t i = begin; i < end; ++i) {
        const float gi = g[i] * c.grad_scale;
        const float mi = c.beta1 * m[i] + c.one_minus_beta1 * gi;
        const float vi = c.beta2 * v[i] + (c.one_minus_beta2 * gi) * gi;
        m[i] = mi;
        v[i] = vi;
        if (adapt) {
          const float u = direction(mi, vi, x[i], wd, c);
          x_sq += double(x[i]) * x[i];
          u_sq += double(u) * u;
        }
      }
      const int64_t b = begin / kBlockElements;
      block_sq[2 * b] = x_sq;
      block_sq[2 * b + 1] = u_sq;
    });
    for (size_t b = 0; b < block_sq.size(); b += 2) {
      sq[2 * r.tensor] += block_sq[b];
      sq[2 * r.tensor + 1] += block_sq[b + 1];
    }
  }
  reduce_norms(sums);
  sq = sums.data_ptr<double>();

  // 2. x = x − lr·ratio·u, u recomputed.
  for (const auto& r : buf_.pieces) {
    const double ratio = r.adapt ? trust_ratio(std::sqrt(sq[2 * r.tensor]), std::sqrt(sq[2 * r.tensor + 1]),
                                               config_.min_trust_ratio, config_.max_trust_ratio)
                                 : 1.0;
    const float step_size = static_cast<float>(lr * ratio), wd = static_cast<float>(r.weight_decay);
    float* x = params + r.param_offset;
    const float* m = exp_avg + r.state_offset;
    const float* v = exp_avg_sq + r.state_offset;
    parallel_blocks(r.numel, [&, x, m, v, wd, step_size](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) x[i] -= step_size * direction(m[i], v[i], x[i], wd, c);
    });
  }
}

}  // namespace kolos::optim
