// Ring self-attention over the sp axis (Li et al., "Sequence Parallelism", arXiv 2105.13120; blockwise form as in
// Liu et al., "Ring Attention", arXiv 2310.01889): every rank keeps its slice of the sequence's queries, and the
// keys and values travel around the ring — p − 1 steps, each sending the current block to the next rank while
// attending to it — with the partial results merged by their log-sum-exp. Backward sends the blocks around again
// with their gradient accumulators, which make one more hop to come home.
//
// Causal masking goes by positions (nn::attention_forward_blocks); the ranks hold the load-balanced zig-zag
// assignment: with the sequence cut into 2p chunks, rank r holds chunks r and 2p − 1 − r, so every rank has the
// same amount of visible work, and every rank knows every other rank's positions.
//
// Per layer and rank, forward sends 2·(p − 1) blocks of b·(s/p)·h_kv elements (keys and values), backward
// 2·(p − 1) (keys and values again) plus 2·p (their gradient accumulators, whose last hop brings them home).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "kolos/dist/comm.h"

namespace kolos::parallel::sequence {

// Positions (int64) of rank `rank`'s tokens when a sequence of `total` tokens is split over `parts` ranks in the
// zig-zag assignment (`total` divisible by 2·parts), in the order the rank holds them.
at::Tensor zigzag_positions(int64_t total, int parts, int rank);

// q: (B, H, T/p, D), k, v: (B, KV, T/p, D) (KV dividing H), this rank's tokens of the zig-zag assignment
// (zigzag_positions(T, p, rank)). Returns this rank's rows of softmax(Q Kᵀ/√D + causal mask) V over the whole
// sequence. Differentiable in q, k, v. Keys and values travel with their KV heads only (expanded for each block's
// product), so forward sends 2·(p − 1)·B·(T/p)·KV·D elements per rank. Every rank of `sp` calls it.
at::Tensor ring_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& sp);

}  // namespace kolos::parallel::sequence
