#include "kolos/optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace kolos::optim {

double lr_at(const OptimConfig& c, int64_t step, int64_t total_steps) {
  if (step < c.warmup_steps) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (c.schedule == "constant") return c.lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - c.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup_steps) / decay_steps);
  const double factor = c.schedule == "cosine" ? 0.5 * (1.0 + std::cos(M_PI * progress))
                        : c.schedule == "poly" ? std::pow(1.0 - progress, c.decay_power)
                                               : 1.0 - progress;
  return c.min_lr + (c.lr - c.min_lr) * factor;
}

}  // namespace kolos::optim
