// LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, arXiv 1708.03888, Algorithm 1), per
// parameter tensor, with g = gradient × grad_scale, η = optim.trust_coefficient, β = the tensor's weight decay,
// μ = optim.momentum and lr the scheduled global learning rate γ_t:
//   λ = η·‖w‖ / (‖g‖ + β·‖w‖)       (the local learning rate; whole-tensor L2 norms)
//   v = μ·v + lr·λ·(g + β·w)        (L2 weight decay inside the momentum, as in the paper)
//   w = w − v
// Variant choices: no ε (as in the paper); λ = 1 when ‖w‖ or ‖g‖ + β‖w‖ is 0 (the convention of the TensorFlow
// and ColossalAI implementations), otherwise λ is clamped to [optim.min_trust_ratio, optim.max_trust_ratio]
// (max 0: no upper bound; ColossalAI clamps to [0, 50]); gradients are not clipped element-wise. Norms and biases
// (parameters whose spec has decay = false, embeddings aside) are excluded from adaptation (λ = 1) unless
// optim.adapt_norms_biases, and from decay unless optim.decay_norms_biases — so for them this is SGD with momentum
// (the learning rate inside the buffer).
// State: "momentum" (v; none when μ = 0). One all-reduce of 2 doubles per tensor per step through the reducers.
#pragma once

#include "kolos/optim/optimizer.h"

namespace kolos::optim {

class LARS : public Optimizer {
 public:
  LARS(const OptimConfig& config, OptimizerBuffers buffers);

  const char* name() const override { return "lars"; }
  void step(double lr, double grad_scale) override;

 private:
  OptimConfig config_;
};

}  // namespace kolos::optim
