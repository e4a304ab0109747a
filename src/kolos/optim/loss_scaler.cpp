#include "kolos/optim/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "kolos/core/error.h"

namespace kolos::optim {

LossScaler::LossScaler(const LossScalerOptions& options) : options_(options), scale_(options.init_scale) {
  KOLOS_CHECK(std::isfinite(options.init_scale) && options.init_scale > 0,
              "config key train.loss_scale_init: expected a finite number > 0, got {}", options.init_scale);
  KOLOS_CHECK(options.growth_interval >= 1, "config key train.loss_scale_growth_interval: expected >= 1, got {}",
              options.growth_interval);
  KOLOS_CHECK(options.hysteresis >= 1, "config key train.loss_scale_hysteresis: expected >= 1, got {}",
              options.hysteresis);
}

bool LossScaler::update(bool overflow) {
  if (overflow) {
    ++skipped_steps_;
    good_steps_ = 0;
    if (++overflows_in_a_row_ >= options_.hysteresis) scale_ = std::max(scale_ * kBackoff, kMinScale);
    return false;
  }
  overflows_in_a_row_ = 0;
  if (++good_steps_ >= options_.growth_interval) {
    scale_ *= kGrowth;
    good_steps_ = 0;
  }
  return true;
}

nlohmann::json LossScaler::state() const {
  return {{"scale", scale_},
          {"good_steps", good_steps_},
          {"overflows_in_a_row", overflows_in_a_row_},
          {"skipped_steps", skipped_steps_}};
}

void LossScaler::load_state(const nlohmann::json& state, const std::string& source) {
  for (const char* key : {"scale", "good_steps", "overflows_in_a_row", "skipped_steps"})
    KOLOS_CHECK(state.contains(key) && state[key].is_number(), "{}: loss scaler state lacks the number \"{}\"",
                source, key);
  const double scale = state["scale"].get<double>();
  KOLOS_CHECK(std::isfinite(scale) && scale > 0, "{}: loss scaler state has scale {}, expected a finite number > 0",
              source, scale);
  scale_ = scale;
  good_steps_ = state["good_steps"].get<int64_t>();
  overflows_in_a_row_ = state["overflows_in_a_row"].get<int64_t>();
  skipped_steps_ = state["skipped_steps"].get<int64_t>();
}

}  // namespace kolos::optim
