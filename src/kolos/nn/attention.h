// Blockwise causal self-attention: softmax(Q K^T / sqrt(D) + causal mask) V, computed over blocks of queries
// and keys with the running max / log-sum-exp arithmetic, keeping only the output and the log-sum-exp for
// backward (scores are recomputed block by block in backward, so no T x T matrix is ever stored; a sequence of
// at most `block` tokens is a single block). Used by every layout, one process included.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace kolos::nn {

// Default block edge (queries and keys per block).
constexpr int64_t kAttentionBlock = 256;

// q, k, v: (B, H, T, D) fp32 (k and v already expanded to H heads for grouped-query attention).
// Returns (B, H, T, D). Differentiable with respect to q, k and v.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block = kAttentionBlock);

}  // namespace kolos::nn
