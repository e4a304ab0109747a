#include "kolos/parallel/tensor/tp25d.h"

#include <cmath>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"
#include "kolos/parallel/tensor/regions.h"

namespace kolos::parallel::tensor {

std::unique_ptr<Grid25d> Grid25d::create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp, int depth,
                                         dist::Comm::Options options) {
  const int t = tp.size();
  KOLOS_CHECK(depth >= 1 && t % depth == 0,
              "2.5D tensor parallelism needs parallel.tp = d·q² with d = parallel.tp_depth; parallel.tp = {} is not a "
              "multiple of parallel.tp_depth = {}",
              t, depth);
  const int layer_size = t / depth;
  const int q = static_cast<int>(std::lround(std::sqrt(static_cast<double>(layer_size))));
  KOLOS_CHECK(q * q == layer_size,
              "2.5D tensor parallelism needs parallel.tp = d·q² with d = parallel.tp_depth; parallel.tp = {} over "
              "depth {} leaves {} ranks per layer, not a square (use e.g. tp = 8 with tp_depth = 2, or 18 with 2)",
              t, depth, layer_size);
  std::unique_ptr<Grid25d> grid(new Grid25d());
  grid->d_ = depth;
  grid->k_ = tp.rank() / layer_size;
  grid->all_ = &tp;
  if (!options.ledger) options.ledger = tp.shared_ledger();
  const int in_layer = tp.rank() % layer_size;
  // Layers first, then depth groups, on every rank: groups of one kind are disjoint, so they meet concurrently.
  auto layer_store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("layer/{}", grid->k_), store);
  grid->layer_comm_ = dist::Comm::create(layer_store, in_layer, layer_size, tp.axis(), options);
  auto depth_store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("depth/{}", in_layer), store);
  grid->depth_group_ = dist::Comm::create(depth_store, grid->k_, depth, tp.axis() + "_depth", options);
  // The layer's rows and columns (Grid2d::create checks that it is q × q).
  grid->layer_ = Grid2d::create(c10::make_intrusive<c10d::PrefixStore>("grid", layer_store), *grid->layer_comm_,
                                options);
  return grid;
}

namespace {
// A parameter block held by every depth layer: identity forward, its gradient summed over the layers backward.
at::Tensor shared_over_depth(const at::Tensor& p, Grid25d& grid) { return grid.depth_view().shared(p); }
}  // namespace

at::Tensor linear_25d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid25d& grid) {
  return linear_2d(x, shared_over_depth(weight, grid), shared_over_depth(bias, grid), grid.layer());
}

at::Tensor layer_norm_25d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                          Grid25d& grid) {
  return layer_norm_2d(x, shared_over_depth(weight, grid), shared_over_depth(bias, grid), eps, grid.layer());
}

at::Tensor rms_norm_25d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid25d& grid) {
  return rms_norm_2d(x, shared_over_depth(weight, grid), eps, grid.layer());
}

nn::Sharding tensor_parallel_25d(Grid25d& grid, int64_t vocab) {
  return grid_sharding(grid.layer(), vocab, grid.depth_view());
}

at::Tensor activation_block_25d(const at::Tensor& whole, int64_t token_dim, const Grid25d& grid) {
  const int64_t dim = token_dim < 0 ? token_dim + whole.dim() : token_dim;
  const at::Tensor layer_tokens =
      block_along(whole, dim, grid.depth_index(), grid.depth(), "the tokens over the depth");
  return activation_block_2d(layer_tokens, dim, grid.layer());
}

}  // namespace kolos::parallel::tensor
