// AdamW (Loshchilov & Hutter, decoupled weight decay; equal to torch.optim.AdamW) over flat fp32 buffers, with the
// fused SIMD kernel of adamw_kernel.h. Per element, with g = gradient × grad_scale and t the step count:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   p = p − lr·wd·p − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)
// State: "exp_avg" (m), "exp_avg_sq" (v). Keys: optim.beta1, beta2, eps, weight_decay.
#pragma once

#include "kolos/optim/optimizer.h"

namespace kolos::optim {

class AdamW : public Optimizer {
 public:
  AdamW(const OptimConfig& config, OptimizerBuffers buffers);

  const char* name() const override { return "adamw"; }
  bool elementwise() const override { return true; }

 protected:
  void update_spans(double lr, double grad_scale, const std::vector<Span>& spans) override;

 private:
  OptimConfig config_;
};

}  // namespace kolos::optim
