// The output head and the cross-entropy in one autograd function, over chunks of tokens, so that the (N, V) logits
// never exist at once (at GPT-2's vocabulary, 4096 tokens of logits are 785 MB, and the unfused loss keeps three or
// four tensors of that size live). Shapes: N tokens, C hidden, V vocabulary.
//
//   forward    per chunk of tokens: z = h·Wᵀ + b (chunk × V), its log-sum-exp and the target's logit; keeps the
//              per-token log-sum-exp (N) and nothing of size V except the weight it was given
//   backward   per chunk: z again, G = (softmax(z) − onehot(target)) · dL/dloss / n_valid, then
//              dh[chunk] = G·W, dW += Gᵀ·h[chunk], db += Σ_rows G
//
// so its memory beyond its inputs is one chunk × V buffer (and dW, db). The price is the head's product computed
// twice (once more in backward).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace kolos::nn {

// Tokens per chunk: a 512 × 50257 fp32 chunk is 103 MB (1/8 of GPT-2-small's logits at 4096 tokens), and a product
// of 512 rows still runs at full BLAS speed.
constexpr int64_t kHeadChunkTokens = 512;

// Mean cross-entropy of the logits hidden · weightᵀ (+ bias) against targets, as at::cross_entropy_loss computes
// it from those logits: targets equal to ignore_index contribute nothing and are not counted (all ignored: NaN);
// any other target must lie in [0, V) (else InputError).
//   hidden  (N, C) floating point; weight (V, C) and bias (V) (or undefined) of the same dtype; targets (N) int64.
// Differentiable in hidden, weight and bias. Under CPU autocast the products run in the autocast dtype, as
// at::linear's would (hidden, weight and bias cast to it first); the soft-max and the loss run in fp32 for fp16 and
// bf16 products, else in the products' dtype, and the result has that dtype. Deterministic for a fixed
// chunk_tokens; chunk_tokens >= 1, chunking does not change the value beyond float rounding.
at::Tensor head_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& targets, int64_t chunk_tokens = kHeadChunkTokens,
                              int64_t ignore_index = -100);

}  // namespace kolos::nn
