// Single-device layers. Each holds references to its parameter tensors (owned by the model's parameter table)
// and a forward that never mentions ranks. Shapes: B batch, T sequence, C hidden, F ffn hidden, V vocabulary.
#pragma once

#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/nn/param.h"

namespace kolos::nn {

// y = f(x, W, b): a Linear's forward as tensor parallelism replaces it.
using LinearFn = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)>;

// Where tensor parallelism attaches how a Linear is split across the tp group (parallel::apply fills it from
// outside). Empty on one process.
struct ShardSlot {
  LinearFn forward;
};

// y = x W^T + b. W: (out, in), b: (out) or undefined. x: (..., in) -> (..., out). With a filled slot, W and b are
// this rank's pieces and the slot's forward runs instead.
struct Linear {
  at::Tensor weight, bias;
  ShardSlot slot;
  at::Tensor forward(const at::Tensor& x) const;
};

struct Sharding;
// Several Linears applied to the same input (q, k, v; gate, up): their outputs in order. Under tensor parallelism
// (`sharding` with column_many) one fused step, so the input's gradient is reduced once for all of them.
std::vector<at::Tensor> forward_many(const at::Tensor& x, const std::vector<const Linear*>& layers,
                                     const Sharding& sharding);

// What parallel::apply changes in a model from outside (all empty, parts 1: one process). The model calls these
// where it would call the plain functions; its own code stays single-device.
struct Sharding {
  int parts = 1;  // tensor-parallel degree: a parameter with tp_dim >= 0 holds 1/parts of that dimension
  // 2D tensor parallelism (parts = q² ranks on a q × q grid): every parameter is a piece (TpLayout), and the
  // activations are blocks of (batch / q, ..., features / q) — the norms and the position table below are split.
  bool grid = false;
  int depth = 1;  // 2.5D: parts = depth·q² ranks, `depth` layers of the q × q grid, activations (batch / (depth·q))
  bool cube = false;  // 3D (parts = q³ ranks on a q × q × q cube; grid is true too)
  TpLayout layout() const { return TpLayout(parts, grid, depth, cube); }
  // The hidden state entering the blocks (after the embeddings): kept whole, or this rank's slice of the sequence
  // (Megatron-SP), in which case the blocks' norms and dropout run on the slice and the Linears gather it.
  std::function<at::Tensor(const at::Tensor& x)> enter;
  LinearFn column, row;  // Linears whose weight is split along dim 0 (outputs) / dim 1 (inputs)
  // Column-split Linears (at most 3) of one input, fused.
  std::function<std::vector<at::Tensor>(const at::Tensor& x, const std::vector<const Linear*>& layers)> column_many;
  // Look-up in this rank's rows of the vocabulary; returns the whole (B, T, C) embedding (2D: this rank's block).
  std::function<at::Tensor(const at::Tensor& weight, const at::Tensor& ids)> embedding;
  // Logits of this rank's slice of the vocabulary from the whole hidden state (2D: from this rank's block, logits
  // of its batch block).
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight)> head;
  // Mean cross-entropy from logits split over the vocabulary (N, V/parts) against targets (N).
  std::function<at::Tensor(const at::Tensor& logits, const at::Tensor& targets)> cross_entropy;
  // Norms over the (split) hidden features, and a parameter acting on the hidden features (..., C) of this
  // rank's activations from its piece (2D: the column's pieces gathered). Unset: nn::layer_norm, rms_norm, identity.
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps)>
      layer_norm;
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight, double eps)> rms_norm;
  std::function<at::Tensor(const at::Tensor& param)> features;
  // Sequence parallelism (the sp axis): the positions (int64) of this rank's T tokens in the whole sequence, and
  // causal attention of this rank's queries over the whole sequence, q, k, v: (B, H, T, D) at those positions.
  std::function<at::Tensor(int64_t T)> positions;
  std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)> attention;
};

// Rows of `weight` (V, C) picked by integer ids (B, T) -> (B, T, C).
at::Tensor embedding(const at::Tensor& weight, const at::Tensor& ids);

// LayerNorm over the last dimension with affine weight and bias (C).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, statistics in fp32.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// GPT-2's GELU (tanh approximation).
at::Tensor gelu(const at::Tensor& x);

// Rotary position embedding (the LLaMA / GPT-NeoX "rotate half" form) applied to x: (B, H, T, D), D even.
// cos, sin: (T, D) tables from rope_tables.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// cos/sin tables for positions [0, T) and head dimension D: angle(t, i) = t * theta^(-2i/D), duplicated halves.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t T, int64_t D, double theta);

// Mean cross-entropy of logits (N, V) against targets (N) (int64).
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace kolos::nn
