// Sequence parallelism on the sp axis (parallel.sp > 1): each sp rank holds a slice of every sequence — its tokens,
// their embeddings and every activation — and only attention looks across slices, through ring attention or
// Ulysses (parallel.sp_mode). The sp ranks' losses are means over their own tokens and their gradients are averaged
// over sp as over dp (the trainer reduces gradients over the dp × sp group).
#pragma once

#include <string>

#include "kolos/dist/comm.h"
#include "kolos/nn/layers.h"

namespace kolos::parallel::sequence {

// Fills `sharding`'s positions and attention for the sp group `sp` (its size p) in `mode`:
//   "ring"     zig-zag slices (rank r: chunks r and 2p − 1 − r of 2p), ring attention;
//   "ulysses"  contiguous slices, Ulysses all-to-alls around one-process attention.
// `sp` must outlive the model. Nothing changes when p = 1.
void add_sequence_parallel(nn::Sharding& sharding, dist::Comm& sp, const std::string& mode);

// The positions of rank `rank`'s tokens of a sequence of `total` tokens split over `parts` ranks in `mode` (what
// the data loader feeds each sp rank).
at::Tensor sequence_positions(const std::string& mode, int64_t total, int parts, int rank);

}  // namespace kolos::parallel::sequence
