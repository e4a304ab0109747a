// Ring self-attention over the sp axis (Li et al., "Sequence Parallelism", arXiv 2105.13120; blockwise form as in
// Liu et al., "Ring Attention", arXiv 2310.01889): every rank keeps its slice of the sequence's queries, and the
// keys and values travel around the ring — p − 1 steps, each sending the current block to the next rank while
// attending to it — with the partial results merged by their log-sum-exp. Backward sends the blocks around again
// with their gradient accumulators, which make one more hop to come home.
//
// Causal masking goes by positions, so any assignment of sequence blocks works; zigzag_positions() gives the
// load-balanced one: with the sequence cut into 2p chunks, rank r holds chunks r and 2p − 1 − r, so every rank
// has the same amount of visible work.
//
// Per layer and rank, forward sends 2·(p − 1) blocks of b·(s/p)·h_kv elements (keys and values), backward
// 4·(p − 1) (keys, values and their gradients) plus the last hop of the gradients home (2 more).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "kolos/dist/comm.h"

namespace kolos::parallel::sequence {

// Positions (int64) of rank `rank`'s tokens when a sequence of `total` tokens is split over `parts` ranks in the
// zig-zag assignment (`total` divisible by 2·parts), in the order the rank holds them.
at::Tensor zigzag_positions(int64_t total, int parts, int rank);

// q, k, v: (B, H, T/p, D), this rank's tokens at `positions` (T/p, int64); k and v
// already expanded to H heads. Returns this rank's rows of softmax(Q Kᵀ/√D + causal mask) V over the whole
// sequence. Differentiable in q, k, v. Every rank of `sp` calls it with its own slice.
at::Tensor ring_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& positions,
                          dist::Comm& sp);

}  // namespace kolos::parallel::sequence
