#include "kolos/optim/adamw.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/optim/adamw_kernel.h"

namespace kolos::optim {

std::vector<Piece> pieces_for_slots(const std::vector<FlatSlot>& slots, double weight_decay) {
  std::vector<Piece> pieces;
  for (const auto& s : slots) {
    const double wd = s.decay ? weight_decay : 0.0;
    if (!pieces.empty() && pieces.back().weight_decay == wd) {
      pieces.back().numel = s.offset + s.numel - pieces.back().param_offset;
    } else {
      pieces.push_back({s.offset, s.offset, s.offset, s.numel, wd});
    }
  }
  return pieces;
}

AdamW::AdamW(const OptimConfig& config, at::Tensor params, at::Tensor grads, int64_t state_numel,
             std::vector<Piece> pieces)
    : config_(config), params_(std::move(params)), grads_(std::move(grads)), pieces_(std::move(pieces)) {
  KOLOS_ASSERT(params_.dim() == 1 && grads_.dim() == 1 && params_.scalar_type() == at::kFloat &&
                   grads_.scalar_type() == at::kFloat && params_.is_contiguous() && grads_.is_contiguous(),
               "AdamW needs contiguous flat fp32 buffers");
  exp_avg_ = at::zeros({state_numel}, at::kFloat);
  exp_avg_sq_ = at::zeros({state_numel}, at::kFloat);
  for (const auto& p : pieces_)
    KOLOS_ASSERT(p.numel >= 0 && p.param_offset >= 0 && p.param_offset + p.numel <= params_.numel() &&
                     p.grad_offset >= 0 && p.grad_offset + p.numel <= grads_.numel() && p.state_offset >= 0 &&
                     p.state_offset + p.numel <= state_numel,
                 "AdamW piece out of its buffers");
}

void AdamW::step(double lr, double grad_scale) {
  ++step_count_;
  AdamWStepArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(config_.beta1);
  a.beta2 = static_cast<float>(config_.beta2);
  a.eps = static_cast<float>(config_.eps);
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(config_.beta1, static_cast<double>(step_count_)));
  a.bias_correction2 = static_cast<float>(1.0 - std::pow(config_.beta2, static_cast<double>(step_count_)));
  a.grad_scale = static_cast<float>(grad_scale);
  float* p = params_.data_ptr<float>();
  const float* g = grads_.data_ptr<float>();
  float* m = exp_avg_.data_ptr<float>();
  float* v = exp_avg_sq_.data_ptr<float>();
  for (const auto& r : pieces_) {
    a.weight_decay = static_cast<float>(r.weight_decay);
    adamw_step_fp32(p + r.param_offset, g + r.grad_offset, m + r.state_offset, v + r.state_offset, r.numel, a);
  }
}

}  // namespace kolos::optim
