// Parameters described by shape before they exist: counts without allocating, and initialisation from
// (seed, parameter name) on the global shape, so every layout and every run with the same seed starts from the
// same weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace kolos::nn {

enum class Init { kNormal, kZeros, kOnes };

struct ParamSpec {
  std::string name;            // e.g. "h.0.attn.qkv.weight"
  std::vector<int64_t> shape;  // global shape
  Init init = Init::kNormal;
  double std = 0.02;           // for kNormal
  bool decay = true;           // weight decay applies (false for norms, biases and, by default, embeddings)
  bool is_embedding = false;   // an embedding table (decayed only with optim.decay_embeddings)

  int64_t numel() const;
};

// Sum of numel over the specs.
int64_t count_params(const std::vector<ParamSpec>& specs);

// A fresh fp32 CPU tensor of spec.shape drawn from a generator seeded by hash(seed, spec.name); the same
// (seed, name) gives the same values in any process, whatever else was initialised before.
at::Tensor init_param(const ParamSpec& spec, int64_t seed);

// 64-bit seed derived from a base seed and a name (FNV-1a of the name mixed with splitmix64).
uint64_t derive_seed(int64_t seed, const std::string& name);

}  // namespace kolos::nn
