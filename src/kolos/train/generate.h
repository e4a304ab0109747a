// Autoregressive sampling from a model: temperature, top-k, seeded.
#pragma once

#include <cstdint>
#include <vector>

#include "kolos/models/model.h"

namespace kolos::train {

struct SampleOptions {
  int64_t tokens = 100;       // new tokens
  double temperature = 1.0;   // 0 = greedy
  int64_t top_k = 0;          // 0 = whole vocabulary
  uint64_t seed = 0;
};

// Continues `prompt` (non-empty) by options.tokens tokens; the context is cropped to model.seq_len. Runs without
// autograd and in evaluation mode (no dropout). Returns only the new ids.
std::vector<int32_t> sample(models::Model& model, const std::vector<int32_t>& prompt, const SampleOptions& options);

}  // namespace kolos::train
