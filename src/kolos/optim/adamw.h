// AdamW (decoupled weight decay) over flat fp32 buffers.
//
// The parameters and their gradients are views into two flat buffers of equal layout (the trainer owns them);
// the optimizer keeps two more (exp_avg, exp_avg_sq) and runs the fused kernel of adamw_kernel.h over
// contiguous runs of parameters that share a weight decay. The gradient scale (clipping factor, later 1/loss
// scale) is applied inside the kernel, so gradients are never rewritten.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/config/config.h"

namespace kolos::optim {

// A parameter's place in the flat buffers.
struct FlatSlot {
  std::string name;
  int64_t offset = 0;  // elements from the start of the buffer
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool decay = true;
};

class AdamW {
 public:
  // params, grads: 1-D fp32 buffers of the same length holding every slot.
  AdamW(const OptimConfig& config, at::Tensor params, at::Tensor grads, std::vector<FlatSlot> slots);

  // One update with learning rate `lr`; every gradient is multiplied by grad_scale first.
  void step(double lr, double grad_scale);

  int64_t step_count() const { return step_count_; }
  // exp_avg.<name> and exp_avg_sq.<name> as views shaped like each parameter.
  std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
  // Restores the moments (copied from tensors named as state_tensors gives them) and the step count.
  // InputError naming the missing or mis-shaped tensor.
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step_count);

 private:
  struct Run {
    int64_t offset, numel;
    double weight_decay;
  };
  OptimConfig config_;
  at::Tensor params_, grads_, exp_avg_, exp_avg_sq_;
  std::vector<FlatSlot> slots_;
  std::vector<Run> runs_;
  int64_t step_count_ = 0;
};

}  // namespace kolos::optim
