// 1D tensor parallelism (Megatron-LM): the layers of nn::Sharding for a tp group, built from the regions.
//
//   column  y_r = x W_rᵀ + b_r: the input enters through copy_to (whole on every rank); in backward the input
//           gradient's all-reduce is launched before the weight gradient is computed and waited for after it, so
//           the two overlap.
//   row     y = reduce_from(x_r W_rᵀ) + b: this rank's slice of the inputs, partial products summed; the bias
//           (replicated) added once, after the sum.
//   embedding  this rank's rows [r·c, (r+1)·c) of the table, c = ceil(V/t); ids outside them give zeros;
//           reduce_from sums.
//   head    the column product without bias: logits of this rank's slice of the vocabulary.
//   cross_entropy  vocab-parallel: the global maximum (all-reduce max, no gradient), the sum of exponentials
//           and the target's logit (reduce_from each); the full logits are never gathered.
//
// Per layer and micro-batch of b·s tokens at hidden h: forward one all-reduce of b·s·h after attention and one
// after the MLP, backward one each at the attention's and the MLP's input (yardsticks §5).
#pragma once

#include "kolos/dist/comm.h"
#include "kolos/nn/layers.h"

namespace kolos::parallel::tensor {

// The sharding for the tp group `tp` (parts = its size). `tp` must outlive the model. With `sequence_parallel`
// (parallel.megatron_sp) the hidden state between the tensor-parallel regions is split along the sequence: the
// blocks' input enters as this rank's slice, column products all-gather it (reduce-scatter in backward) and row
// products reduce-scatter their output (all-gather in backward); the same volume as the all-reduces they replace.
// The gradients of ParamSpec::sequence_sliced parameters are then partial per rank: the caller sums them over tp.
// `vocab`: the model's vocabulary; when tp does not divide it, the last ranks' rows of the embedding (and untied
// head) are zero padding, whose logits the cross-entropy masks.
nn::Sharding tensor_parallel_1d(dist::Comm& tp, int64_t vocab, bool sequence_parallel = false);

// The vocab-parallel pieces, also used by 2D (tp2d.h) on a grid row:
//   vocab_cross_entropy: the mean cross-entropy of this rank's tokens from logits (N, V/n) of `comm`'s rank r's
//   slice [r·V/n, (r+1)·V/n) of the vocabulary (the columns past `vocab` are padding, masked) against targets (N).
//   vocab_rows: the embedding rows of `ids` (B, T) that lie in `weight`'s rows [start, start + weight.size(0)), zeros
//   for the others: (B, T, C), summed over the ranks that hold the other rows. Keeps only the ids for backward
//   (not `weight`, which may be a gathered block).
at::Tensor vocab_cross_entropy(at::Tensor logits, const at::Tensor& targets, int64_t vocab, dist::Comm& comm);
at::Tensor vocab_rows(const at::Tensor& weight, const at::Tensor& ids, int64_t start);

}  // namespace kolos::parallel::tensor
