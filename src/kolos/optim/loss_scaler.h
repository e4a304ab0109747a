// Dynamic loss scaling for train.dtype = "fp16": the loss is multiplied by a scale S before backward so that small
// gradients survive in fp16, and the optimizer divides them by S again (its grad_scale). The scale adapts:
//
//   a step whose gradients hold an inf or a NaN on any rank (all ranks agree: the trainer reduces the verdict)
//     is skipped — no optimizer update, the gradients are dropped — and counted in skipped_steps; from the
//     `hysteresis`-th overflow in a row on, each overflow multiplies S by kBackoff (0.5), down to kMinScale (1);
//   a step without overflow counts towards growth: after `growth_interval` of them in a row, S is multiplied by
//     kGrowth (2) and the count restarts. An overflow restarts it too (and a good step the overflow count).
//
// The state (scale, good steps in a row, overflows in a row, skipped steps) goes into checkpoints, so a resumed run
// continues with the same scale. Config keys: train.loss_scale_init, train.loss_scale_growth_interval,
// train.loss_scale_hysteresis (README "Configuration"). Plain arithmetic, no collectives; not thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace kolos::optim {

struct LossScalerOptions {
  double init_scale = 65536.0;    // 2^16
  int64_t growth_interval = 1000;  // good steps in a row before the scale doubles, >= 1
  int64_t hysteresis = 2;          // overflows in a row tolerated before the scale halves, >= 1 (1: at once)
};

class LossScaler {
 public:
  static constexpr double kGrowth = 2.0;
  static constexpr double kBackoff = 0.5;
  static constexpr double kMinScale = 1.0;

  // Throws InputError naming the config key when an option is out of range (init_scale > 0 and finite,
  // growth_interval >= 1, hysteresis >= 1).
  explicit LossScaler(const LossScalerOptions& options);

  // The scale to multiply the next step's loss by.
  double scale() const { return scale_; }
  // Records the outcome of a step whose gradients were computed with scale(): `overflow` when any rank saw an inf
  // or a NaN. Returns true when the step is to be applied, false when it is to be skipped (then the scale may have
  // been lowered).
  bool update(bool overflow);

  int64_t skipped_steps() const { return skipped_steps_; }
  int64_t good_steps() const { return good_steps_; }            // in a row, since the last growth or overflow
  int64_t overflows_in_a_row() const { return overflows_in_a_row_; }

  // {"scale", "good_steps", "overflows_in_a_row", "skipped_steps"}: for checkpoints.
  nlohmann::json state() const;
  // Restores state(); InputError naming `source` when a key is missing or a value out of range.
  void load_state(const nlohmann::json& state, const std::string& source);

 private:
  LossScalerOptions options_;
  double scale_;
  int64_t good_steps_ = 0;
  int64_t overflows_in_a_row_ = 0;
  int64_t skipped_steps_ = 0;
};

}  // namespace kolos::optim
