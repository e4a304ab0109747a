// Sums of squares for gradient norms, accurate enough that a norm computed whole and one computed as the sum of
// its shards agree to about 1e-12 (float partial sums over 256 elements, accumulated in double): the global-norm
// clip then scales gradients identically under every layout. A plain float norm of a 10^5–10^8 element buffer
// is off by ~1e-5 relative, which shows up in parity checks after a few Adam steps.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

namespace kolos::optim {

// Σ x² over a contiguous fp32 tensor (any shape), multi-threaded.
double sum_of_squares(const at::Tensor& x);

}  // namespace kolos::optim
