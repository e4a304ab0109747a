#include "kolos/parallel/tensor/tp3d.h"

#include <cmath>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"
#include "kolos/parallel/tensor/regions.h"
#include "kolos/parallel/tensor/tp2d.h"

namespace kolos::parallel::tensor {

std::unique_ptr<Grid3d> Grid3d::create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp,
                                       dist::Comm::Options options) {
  const int t = tp.size();
  const int q = static_cast<int>(std::lround(std::cbrt(static_cast<double>(t))));
  KOLOS_CHECK(q * q * q == t,
              "3D tensor parallelism needs a cube number of tp ranks (q × q × q); parallel.tp = {} is not one. Use "
              "parallel.tp = 8, 27, 64, ...",
              t);
  std::unique_ptr<Grid3d> grid(new Grid3d());
  grid->q_ = q;
  const int r = tp.rank();
  grid->coord_[kX] = r / (q * q);
  grid->coord_[kY] = (r / q) % q;
  grid->coord_[kZ] = r % q;
  grid->all_ = &tp;
  if (!options.ledger) options.ledger = tp.shared_ledger();
  const char* names[3] = {"x", "y", "z"};
  // x lines, then y, then z, on every rank: the lines of one axis are disjoint, so they meet concurrently.
  for (int a = 0; a < 3; ++a) {
    const int b = (a + 1) % 3, c = (a + 2) % 3;
    auto line_store = c10::make_intrusive<c10d::PrefixStore>(
        fmt::format("{}/{}.{}", names[a], grid->coord_[std::min(b, c)], grid->coord_[std::max(b, c)]), store);
    grid->line_[a] = dist::Comm::create(line_store, grid->coord_[a], q, tp.axis() + "_" + names[a], options);
  }
  return grid;
}

namespace {
void check_k_axis(Grid3d::Axis k_axis) {
  KOLOS_ASSERT(k_axis == Grid3d::kY || k_axis == Grid3d::kZ, "3D Linear: the K axis must be y or z");
}

}  // namespace

at::Tensor linear_3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid3d::Axis k_axis,
                     Grid3d& grid) {
  check_k_axis(k_axis);
  const Grid3d::Axis n_axis = other_axis(k_axis);
  const at::Tensor x_line = gather_rs(x, 0, grid.line(n_axis));            // X[x, k]: tokens/q × in/q
  const at::Tensor w_line = gather_rs(weight, 1, grid.line(Grid3d::kX));   // W[n, k]: out/q × in/q
  at::Tensor y = scatter(at::linear(x_line, w_line), 0, grid.line(k_axis));  // Σ over k, split by tokens
  if (!bias.defined()) return y;
  return y + gather_rs(copy_to(bias, grid.line(Grid3d::kX)), 0, grid.line(k_axis));
}

at::Tensor input_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid) {
  check_k_axis(k_axis);
  const int q = grid.q();
  const at::Tensor tokens =
      block_along(whole, 0, grid.coord(Grid3d::kX) * q + grid.coord(other_axis(k_axis)), q * q, "the tokens");
  return block_along(tokens, -1, grid.coord(k_axis), q, "the features").contiguous();
}

at::Tensor output_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid) {
  return input_block_3d(whole, other_axis(k_axis), grid);
}

at::Tensor weight_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid) {
  check_k_axis(k_axis);
  const int q = grid.q();
  const at::Tensor out = block_along(whole, 0, grid.coord(other_axis(k_axis)), q, "a weight's output features");
  const at::Tensor in = block_along(out, 1, grid.coord(k_axis), q, "a weight's input features");
  return block_along(in, 1, grid.coord(Grid3d::kX), q, "a weight block's input features").contiguous();
}

at::Tensor bias_piece_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid) {
  check_k_axis(k_axis);
  const int q = grid.q();
  const at::Tensor out = block_along(whole, 0, grid.coord(other_axis(k_axis)), q, "a bias");
  return block_along(out, 0, grid.coord(k_axis), q, "a bias block").contiguous();
}

}  // namespace kolos::parallel::tensor
