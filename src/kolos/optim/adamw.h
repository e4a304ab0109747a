// AdamW (decoupled weight decay) over flat fp32 buffers.
//
// The optimizer does not know parameters: it updates pieces of three flat buffers — the parameters, their
// gradients and its own two moments (exp_avg, exp_avg_sq) — with the fused kernel of adamw_kernel.h. A piece maps
// `numel` consecutive elements at `param_offset` of the parameter buffer to the same count at `grad_offset` of the
// gradient buffer and `state_offset` of the moment buffers, under one weight decay. One process updates every
// element (the three offsets equal); a ZeRO rank updates only its shard (gradients and moments shard-sized). The
// gradient scale (clipping factor, later 1/loss scale) is applied inside the kernel, so gradients are never
// rewritten. Naming the moments per parameter (for checkpoints) is the caller's job: it knows the layout.
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

// A run of elements updated with one weight decay (see the header comment).
struct Piece {
  int64_t param_offset = 0, grad_offset = 0, state_offset = 0, numel = 0;
  double weight_decay = 0;
};

// Pieces for updating every element of a flat layout: contiguous slots with one weight decay merged into one run
// (the padding between them rides along: it is zero and stays zero). Offsets are equal in all three buffers.
std::vector<Piece> pieces_for_slots(const std::vector<FlatSlot>& slots, double weight_decay);

class AdamW {
 public:
  // params, grads: 1-D fp32 buffers; the moments get `state_numel` elements. Each piece must lie inside its
  // buffers.
  AdamW(const OptimConfig& config, at::Tensor params, at::Tensor grads, int64_t state_numel, std::vector<Piece> pieces);

  // One update with learning rate `lr`; every gradient is multiplied by grad_scale first.
  void step(double lr, double grad_scale);

  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t steps) { step_count_ = steps; }
  // The flat moment buffers (state_numel elements each).
  const at::Tensor& exp_avg() const { return exp_avg_; }
  const at::Tensor& exp_avg_sq() const { return exp_avg_sq_; }

 private:
  OptimConfig config_;
  at::Tensor params_, grads_, exp_avg_, exp_avg_sq_;
  std::vector<Piece> pieces_;
  int64_t step_count_ = 0;
};

}  // namespace kolos::optim
