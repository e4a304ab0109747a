// LAMB, layer-wise adaptive moments (You et al. 2020, arXiv 1904.00962, Algorithm 2), per parameter tensor x,
// with g = gradient × grad_scale, t the step count and λ the tensor's weight decay:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   m̂ = m / (1−β1^t);  v̂ = v / (1−β2^t)        (optim.bias_correction; m̂ = m, v̂ = v without, as arXiv v3)
//   r = m̂ / (sqrt(v̂) + ε)                      (ε outside the square root)
//   u = r + λ·x                                  (decoupled weight decay, inside the trust ratio)
//   x = x − lr · ‖x‖/‖u‖ · u                    (whole-tensor L2 norms)
// Variant choices: the trust ratio ‖x‖/‖u‖ is 1 when ‖x‖ or ‖u‖ is 0, otherwise clamped to
// [optim.min_trust_ratio, optim.max_trust_ratio] (max 0: no upper bound) — the clamp of the ratio that DeepSpeed's
// FusedLamb applies ([0.01, 10]), not the paper's φ(‖x‖) = clip(‖x‖, γ_l, γ_u); norms and biases are excluded from
// adaptation (ratio 1, so their step is AdamW's) unless optim.adapt_norms_biases, as in the BERT LAMB optimizer.
// State: "exp_avg" (m), "exp_avg_sq" (v). Keys: optim.beta1, beta2, eps, weight_decay, bias_correction,
// min_trust_ratio, max_trust_ratio, adapt_norms_biases. Two passes over the pieces: the first updates m, v and
// sums ‖x‖², ‖u‖²; after the all-reduce of those sums (2 doubles per tensor) the second recomputes u (the same
// float operations, so the same values) and applies it — no buffer for u.
#pragma once

#include "kolos/optim/optimizer.h"

namespace kolos::optim {

class LAMB : public Optimizer {
 public:
  LAMB(const OptimConfig& config, OptimizerBuffers buffers);

  const char* name() const override { return "lamb"; }
  void step(double lr, double grad_scale) override;

 private:
  OptimConfig config_;
};

}  // namespace kolos::optim
