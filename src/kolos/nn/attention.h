// Blockwise causal self-attention: softmax(Q K^T / sqrt(D) + causal mask) V, computed over blocks of queries
// and keys with the running max / log-sum-exp arithmetic, keeping only the output and the log-sum-exp for
// backward (scores are recomputed block by block in backward, so no T x T matrix is ever stored; a sequence of
// at most `block` tokens is a single block). Used by every layout, one process included.
//
// Precision: the matrix products run in the dtype of the (cast) inputs — bf16 when CPU autocast is on (train.dtype
// = "bf16": causal_attention casts q, k, v to the autocast dtype, and its backward computes in the same dtype
// although it runs outside the autocast scope) — while scores, probabilities, the log-sum-exp and the running sums
// are fp32 (fp64 inputs stay fp64). In fp32 and fp64 nothing is cast.
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/ATen.h>

namespace kolos::nn {

// Default block edge (queries and keys per block).
constexpr int64_t kAttentionBlock = 256;

// q: (B, H, T, D); k, v: (B, KV, T, D) with KV dividing H (grouped-query attention: each key/value head serves
// H/KV consecutive query heads). Returns (B, H, T, D). Differentiable with respect to q, k and v.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block = kAttentionBlock);

// k or v (B, KV, T, D) repeated to `heads` heads, each key/value head for heads/KV consecutive query heads.
at::Tensor expand_kv(const at::Tensor& kv, int64_t heads);

// The kernel's two halves, for attention split across ranks (ring attention), over (N, T, D) queries already
// scaled by 1/sqrt(D) and (N, S, D) keys and values, with the positions of the queries (T) and keys (S), int64, in
// any order: key j is visible to query i when k_pos[j] <= q_pos[i].
// Forward returns the output (N, T, D; q's dtype) and the log-sum-exp (N, T; fp32, fp64 for fp64 inputs) over the
// visible keys (output 0 and lse −inf for a query that sees none of these keys).
std::pair<at::Tensor, at::Tensor> attention_forward_blocks(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& q_pos,
                                                           const at::Tensor& k_pos, int64_t block = kAttentionBlock);
// Adds these keys' contributions to dq, dk, dv, given dout, the log-sum-exp over *all* keys of the attention (so
// the probabilities are the final ones) and delta = Σ_d dout·out (N, T, 1). dq is not yet multiplied by the scale.
void attention_backward_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
                               const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& q_pos,
                               const at::Tensor& k_pos, int64_t block, at::Tensor& dq, at::Tensor& dk,
                               at::Tensor& dv);

}  // namespace kolos::nn
