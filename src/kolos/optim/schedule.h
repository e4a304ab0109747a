// Learning-rate schedules: linear warmup from 0 to optim.lr over optim.warmup_steps, then "cosine" decay to
// optim.min_lr at train.steps, "linear" decay to min_lr, "poly" decay (1 − progress)^optim.decay_power to min_lr
// (the polynomial decay of the LARS and LAMB papers; power 1 is "linear"), or "constant".
#pragma once

#include <cstdint>

#include "kolos/config/config.h"

namespace kolos::optim {

// Learning rate of optimizer step `step` (0-based) of `total_steps`.
double lr_at(const OptimConfig& config, int64_t step, int64_t total_steps);

}  // namespace kolos::optim
