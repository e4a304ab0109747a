// Ulysses sequence parallelism (Jacobs et al., "DeepSpeed Ulysses", arXiv 2309.14509): attention's inputs arrive
// split along the sequence; one all-to-all per tensor turns them into whole sequences of H/p heads, attention runs
// on those as on one process, and one all-to-all turns the output back. The heads must divide by p.
//
// Per layer and rank, forward moves q, k, v and the output through all-to-alls of b·(s/p)·h elements each, each
// sending (p − 1)/p of it; backward the same.
#pragma once

#include <ATen/ATen.h>

#include "kolos/dist/comm.h"

namespace kolos::parallel::sequence {

// q: (B, H, T/p, D), k, v: (B, KV, T/p, D) (KV dividing H), this rank's contiguous slice [r·T/p, (r+1)·T/p) of the
// sequence. Returns this rank's rows of causal attention over the whole sequence. Differentiable.
at::Tensor ulysses_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& sp);

}  // namespace kolos::parallel::sequence
