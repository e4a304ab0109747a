// SGD with momentum and Nesterov momentum (Sutskever et al. 2013, in the form of torch.optim.SGD with dampening 0)
// and L2 weight decay added to the gradient. Per element, with g = gradient × grad_scale and μ = optim.momentum:
//   d = g + wd·p
//   b = μ·b + d                 (b starts at 0, so the first step has b = d, as in torch.optim.SGD)
//   p = p − lr·(d + μ·b)        with optim.nesterov
//   p = p − lr·b                without
// With μ = 0 it is plain SGD and holds no state. State: "momentum" (b). Keys: optim.momentum, nesterov,
// weight_decay.
#pragma once

#include "kolos/optim/optimizer.h"

namespace kolos::optim {

class SGD : public Optimizer {
 public:
  SGD(const OptimConfig& config, OptimizerBuffers buffers);

  const char* name() const override { return "sgd"; }
  bool elementwise() const override { return true; }

 protected:
  void update_spans(double lr, double grad_scale, const std::vector<Span>& spans) override;

 private:
  float momentum_;
  bool nesterov_;
};

}  // namespace kolos::optim
