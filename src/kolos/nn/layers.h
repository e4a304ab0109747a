// Single-device layers. Each holds references to its parameter tensors (owned by the model's parameter table)
// and a forward that never mentions ranks. Shapes: B batch, T sequence, C hidden, F ffn hidden, V vocabulary.
#pragma once

#include <ATen/ATen.h>

namespace kolos::nn {

// Where tensor parallelism (issue 5) attaches how this Linear is split across the tp group. Empty on one process.
struct ShardSlot {
  enum class Kind { kNone, kColumn, kRow } kind = Kind::kNone;
};

// y = x W^T + b. W: (out, in), b: (out) or undefined. x: (..., in) -> (..., out).
struct Linear {
  at::Tensor weight, bias;
  ShardSlot slot;
  at::Tensor forward(const at::Tensor& x) const;
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
