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
  // Tensor parallelism (the model's sharding plan): the dimension split over the tp ranks (-1: replicated), cut
  // into `tp_groups` equal groups that are split separately (3 for a fused q|k|v projection, so each rank keeps its
  // heads of each of q, k and v).
  int tp_dim = -1;
  int tp_groups = 1;
  // A replicated parameter applied to the residual stream inside the blocks (norms, biases added after a
  // row-parallel product): under Megatron-SP each tp rank applies it to its slice of the sequence only, so its
  // gradient must be summed over the tp group.
  bool sequence_sliced = false;

  int64_t numel() const;
  // The shape one of `parts` tensor-parallel ranks holds: tp_dim cut to ceil(size / parts) (an uneven split, as
  // of a vocabulary, is padded with zero rows on the last ranks; grouped splits must be even).
  std::vector<int64_t> local_shape(int parts) const;
};

// Rank `index` of `parts`'s piece of a parameter given whole (global shape), as ParamSpec::tp_dim/tp_groups say
// (a contiguous copy). The whole tensor itself when the parameter is replicated or parts == 1.
at::Tensor shard_param(const at::Tensor& whole, const ParamSpec& spec, int parts, int index);
// The inverse: the whole parameter from all ranks' pieces in rank order.
at::Tensor unshard_param(const std::vector<at::Tensor>& pieces, const ParamSpec& spec);

// Sum of numel over the specs.
int64_t count_params(const std::vector<ParamSpec>& specs);

// A fresh fp32 CPU tensor of spec.shape drawn from a generator seeded by hash(seed, spec.name); the same
// (seed, name) gives the same values in any process, whatever else was initialised before.
at::Tensor init_param(const ParamSpec& spec, int64_t seed);

// 64-bit seed derived from a base seed and a name (FNV-1a of the name mixed with splitmix64).
uint64_t derive_seed(int64_t seed, const std::string& name);

}  // namespace kolos::nn
