// Lion, evolved sign momentum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675,
// Algorithm 1), per element, with g = gradient × grad_scale and λ the tensor's weight decay:
//   c = β1·m + (1−β1)·g
//   x = x − lr·(sign(c) + λ·x)      (decoupled weight decay; sign(0) = 0)
//   m = β2·m + (1−β2)·g
// The paper's defaults are β1 = 0.9, β2 = 0.99 (optim.beta2 defaults to AdamW's 0.95: set it), with a learning
// rate 3–10× smaller and a weight decay 3–10× larger than AdamW's. State: "momentum" (m). Keys: optim.beta1,
// beta2, weight_decay.
#pragma once

#include "kolos/optim/optimizer.h"

namespace kolos::optim {

class Lion : public Optimizer {
 public:
  Lion(const OptimConfig& config, OptimizerBuffers buffers);

  const char* name() const override { return "lion"; }
  bool elementwise() const override { return true; }

 protected:
  void update_spans(double lr, double grad_scale, const std::vector<Span>& spans) override;

 private:
  OptimConfig config_;
};

}  // namespace kolos::optim
