#include "kolos/optim/adamw.h"

#include <cmath>
#include <map>

#include <fmt/ranges.h>

#include "kolos/core/error.h"
#include "kolos/optim/adamw_kernel.h"

namespace kolos::optim {

AdamW::AdamW(const OptimConfig& config, at::Tensor params, at::Tensor grads, std::vector<FlatSlot> slots)
    : config_(config), params_(std::move(params)), grads_(std::move(grads)), slots_(std::move(slots)) {
  KOLOS_ASSERT(params_.dim() == 1 && params_.sizes() == grads_.sizes() && params_.scalar_type() == at::kFloat,
               "AdamW needs flat fp32 buffers of equal length");
  exp_avg_ = at::zeros_like(params_);
  exp_avg_sq_ = at::zeros_like(params_);
  // Contiguous runs with one weight decay; the padding between slots rides along (it is zero and stays zero).
  for (const auto& s : slots_) {
    const double wd = s.decay ? config_.weight_decay : 0.0;
    if (!runs_.empty() && runs_.back().weight_decay == wd) {
      runs_.back().numel = s.offset + s.numel - runs_.back().offset;
    } else {
      runs_.push_back({s.offset, s.numel, wd});
    }
  }
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
  for (const auto& r : runs_) {
    a.weight_decay = static_cast<float>(r.weight_decay);
    adamw_step_fp32(p + r.offset, g + r.offset, m + r.offset, v + r.offset, r.numel, a);
  }
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& s : slots_) {
    out.emplace_back("exp_avg." + s.name, exp_avg_.narrow(0, s.offset, s.numel).view(s.shape));
    out.emplace_back("exp_avg_sq." + s.name, exp_avg_sq_.narrow(0, s.offset, s.numel).view(s.shape));
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step_count) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  for (auto& [name, dst] : state_tensors()) {
    auto it = by_name.find(name);
    KOLOS_CHECK(it != by_name.end(), "optimizer state: tensor {} is missing", name);
    KOLOS_CHECK(it->second.sizes() == dst.sizes() && it->second.scalar_type() == at::kFloat,
                "optimizer state: tensor {} has shape {} ({}), expected {} (float32)", name,
                fmt::join(it->second.sizes(), "x"), c10::toString(it->second.scalar_type()),
                fmt::join(dst.sizes(), "x"));
    dst.copy_(it->second);
  }
  step_count_ = step_count;
}

}  // namespace kolos::optim
