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

struct TpLayout;

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
  // The shape one of `layout`'s tensor-parallel ranks holds. 1D: tp_dim cut to ceil(size / parts) (an uneven
  // split, as of a vocabulary, is padded with zero rows on the last ranks; grouped splits must be even). 2D: see
  // TpLayout.
  std::vector<int64_t> local_shape(const TpLayout& layout) const;
};

// How the tp group holds the parameters (parallel.tp_mode).
//   1D (grid false): `parts` ranks, each a slice along ParamSpec::tp_dim; the others replicated.
//   2D (grid true): parts = q² ranks on a q × q grid, rank r at row i = r / q, column j = r % q
//     (parallel/tensor/tp2d.h); every parameter is split, none replicated:
//     - a matrix with tp_dim >= 0 (a Linear's weight (out, in), a vocabulary table (V, C)): dim 0 block j of q
//       (grouped by tp_groups; an uneven vocabulary padded with zero rows as in 1D), dim 1 block i of q;
//     - anything else (biases, norm weights, the position table (P, C)): the last dim cut into q blocks (block j,
//       grouped by tp_groups as its weight's outputs), each cut into q pieces: piece i of block j.
//   2.5D (grid true, depth d > 1): parts = d·q² ranks, d layers of the q × q grid (parallel/tensor/tp25d.h): rank r
//     at depth r / q² holds 2D's pieces of position r % q², the same pieces on every layer. shard_param gives each
//     layer those pieces; unshard_param builds the whole tensor from depth 0's (the other layers' are copies).
//   3D (grid and cube true): parts = q³ ranks on a q × q × q cube, rank r at (x, y, z) = (r / q², (r / q) % q,
//     r % q) (parallel/tensor/tp3d.h); every parameter is split into q³ pieces, none replicated. A parameter
//     with tp_dim = 0 (a column Linear's weight and bias, a vocabulary table) has the layout of a Linear whose K
//     axis is y, the others (a row Linear's weight (tp_dim 1), norm weights and biases, the position table) of
//     one whose K axis is z. For K axis k and the other axis n of y, z:
//     - a matrix (out, in): dim 0 block n of q (grouped, an uneven vocabulary padded as in 1D), dim 1 block k of
//       q, and of that piece x of q;
//     - anything else: the last dim cut into q blocks (block n, grouped), block n into q² pieces: piece k·q + x.
// Implicit from an int: 1D over that many ranks.
struct TpLayout {
  int parts = 1;
  bool grid = false;
  int depth = 1;  // 2.5D's d (1: 1D, 2D or 3D)
  bool cube = false;  // 3D
  TpLayout(int parts_ = 1, bool grid_ = false, int depth_ = 1, bool cube_ = false)  // NOLINT: implicit 1D
      : parts(parts_), grid(grid_ || cube_), depth(depth_), cube(cube_) {}
  int q() const;  // the grid's side (2D and 2.5D) or the cube's edge (3D)
  // Whether tp rank `index` holds the copy of its pieces that sums over the tp group count (the gradient norm,
  // whole-tensor norms): every rank except 2.5D's layers above depth 0, whose pieces are copies of depth 0's.
  bool counts_pieces(int index) const { return index < parts / depth; }
};

// Whether each tp rank holds a different piece of the parameter (its gradient norm summed over the tp ranks), not
// a replica.
bool split_over_tp(const ParamSpec& spec, const TpLayout& layout);

// Rank `index` of the layout's piece of a parameter given whole (global shape), as ParamSpec::tp_dim/tp_groups
// and TpLayout say (a contiguous copy). The whole tensor itself when the parameter is replicated or parts == 1.
// 2.5D: the piece of the rank's 2D position in its layer (index % q²).
at::Tensor shard_param(const at::Tensor& whole, const ParamSpec& spec, const TpLayout& layout, int index);
// The inverse: the whole parameter from all ranks' pieces in rank order (2.5D: all d·q², or depth 0's q² alone;
// the first q² are used).
at::Tensor unshard_param(const std::vector<at::Tensor>& pieces, const ParamSpec& spec, const TpLayout& layout);
inline at::Tensor unshard_param(const std::vector<at::Tensor>& pieces, const ParamSpec& spec) {
  return unshard_param(pieces, spec, TpLayout(static_cast<int>(pieces.size())));
}

// Sum of numel over the specs.
int64_t count_params(const std::vector<ParamSpec>& specs);

// A fresh fp32 CPU tensor of spec.shape drawn from a generator seeded by hash(seed, spec.name); the same
// (seed, name) gives the same values in any process, whatever else was initialised before.
at::Tensor init_param(const ParamSpec& spec, int64_t seed);

// 64-bit seed derived from a base seed and a name (FNV-1a of the name mixed with splitmix64).
uint64_t derive_seed(int64_t seed, const std::string& name);

}  // namespace kolos::nn
