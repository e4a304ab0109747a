#include "kolos/parallel/tensor/tp3d.h"

#include <cmath>
#include <utility>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"
#include "kolos/parallel/tensor/regions.h"
#include "kolos/parallel/tensor/tp1d.h"
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

using dist::Ledger;
using dist::Phase;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_k_axis(Grid3d::Axis k_axis) {
  KOLOS_ASSERT(k_axis == Grid3d::kY || k_axis == Grid3d::kZ, "3D Linear: the K axis must be y or z");
}

// The whole-line operands of a Linear: X[x, k] (tokens/q, in/q) gathered along the N axis, W[n, k] (out/q, in/q)
// along x.
std::pair<at::Tensor, at::Tensor> line_operands(const at::Tensor& x2, const at::Tensor& w, Grid3d::Axis n_axis,
                                                Grid3d& grid) {
  return {all_gather_along(x2, 0, grid.line(n_axis)), all_gather_along(w, 1, grid.line(Grid3d::kX))};
}

// Y = X·Wᵀ on the cube (tp3d.h). Backward keeps only this rank's pieces of X and W (1/q³ of each) and gathers the
// whole-line operands again, so that a rank holds 1/q³ of every activation between forward and backward — at the
// price of those two all-gathers once more in backward. The products run in the input's dtype (addmm_ and mm are
// not autocast: under bf16 autocast a 3D Linear on the fp32 residual stream computes in fp32).
struct Linear3d : torch::autograd::Function<Linear3d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, int64_t k,
                            Grid3d* grid) {
    const auto k_axis = static_cast<Grid3d::Axis>(k);
    const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
    const at::Tensor w = weight.to(x2.scalar_type()).contiguous();
    ctx->save_for_backward({x2, w});
    save_pointer(ctx, "grid", *grid);
    ctx->saved_data["k"] = k;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    Ledger::PhaseScope phase(grid->all().ledger(), Phase::kForward);
    const auto [x_line, w_line] = line_operands(x2, w, other_axis(k_axis), *grid);
    at::Tensor partial = at::zeros({x_line.size(0), w_line.size(0)}, x_line.options());
    partial.addmm_(x_line, w_line.t());  // Σ over this rank's in block k: partial over k
    const at::Tensor y = reduce_scatter_along(partial, 0, grid->line(k_axis));  // Σ over k, split by tokens
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = w.size(0);
    return y.view(shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Grid3d& grid = saved_pointer<Grid3d>(ctx, "grid");
    const auto k_axis = static_cast<Grid3d::Axis>(ctx->saved_data["k"].toInt());
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& w = saved[1];
    Ledger::PhaseScope phase(grid.all().ledger(), Phase::kBackward);
    const at::Tensor g = grads[0].reshape({-1, grads[0].size(-1)}).to(x2.scalar_type()).contiguous();
    const at::Tensor g_line = all_gather_along(g, 0, grid.line(k_axis));  // dY[x, n]: tokens/q × out/q
    const auto [x_line, w_line] = line_operands(x2, w, other_axis(k_axis), grid);
    const at::Tensor dx = reduce_scatter_along(g_line.mm(w_line), 0, grid.line(other_axis(k_axis)));
    const at::Tensor dw = reduce_scatter_along(g_line.t().mm(x_line), 1, grid.line(Grid3d::kX));
    std::vector<int64_t> x_shape(grads[0].sizes().begin(), grads[0].sizes().end());
    x_shape.back() = x2.size(1);
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    return {dx.view(x_shape).to(grads[0].scalar_type()), dw.to(w_dtype), at::Tensor(), at::Tensor()};
  }
};

// A residual-stream vector's piece (vector_piece_3d with kZ) → its features block y: gathered along x, then z.
at::Tensor residual_vector(const at::Tensor& piece, Grid3d& grid) {
  const int64_t last = piece.dim() - 1;
  return gather_rs(gather_rs(piece, last, grid.line(Grid3d::kX)), last, grid.line(Grid3d::kZ));
}

}  // namespace

at::Tensor linear_3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid3d::Axis k_axis,
                     Grid3d& grid) {
  check_k_axis(k_axis);
  at::Tensor y = Linear3d::apply(x, weight, static_cast<int64_t>(k_axis), &grid);
  if (!bias.defined()) return y;
  return y + gather_rs(gather_rs(bias, 0, grid.line(Grid3d::kX)), 0, grid.line(k_axis));
}

at::Tensor layer_norm_3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                         Grid3d& grid) {
  const at::Tensor normed = normalize_split(x, eps, /*centre=*/true, grid.line(Grid3d::kY));
  if (!bias.defined()) return normed * residual_vector(weight, grid);
  const at::Tensor affine = residual_vector(at::stack({weight, bias}), grid);  // one gather each way for both
  return normed * affine[0] + affine[1];
}

at::Tensor rms_norm_3d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid3d& grid) {
  return normalize_split(x, eps, /*centre=*/false, grid.line(Grid3d::kY)) * residual_vector(weight, grid);
}

at::Tensor embedding_3d(const at::Tensor& table, const at::Tensor& ids, Grid3d& grid) {
  const int q = grid.q();
  KOLOS_CHECK(ids.size(0) % (q * q) == 0,
              "3D tensor parallelism splits the batch into q² = {} blocks; the batch of {} sequences must divide by "
              "{} (train.batch_size)",
              q * q, ids.size(0), q * q);
  const at::Tensor block = gather_rs(table, 1, grid.line(Grid3d::kX));  // vocabulary block z × features block y
  const at::Tensor plane = block_along(ids, 0, grid.coord(Grid3d::kX), q, "the batch");
  return scatter(vocab_rows(block, plane, grid.coord(Grid3d::kZ) * block.size(0)), 0, grid.line(Grid3d::kZ));
}

at::Tensor cross_entropy_3d(const at::Tensor& logits, const at::Tensor& targets, int64_t vocab, Grid3d& grid) {
  const int q = grid.q();
  const int64_t n = logits.size(0);
  KOLOS_ASSERT(targets.size(0) == n * q * q, "3D cross-entropy: {} logits rows of {} targets on a cube of side {}",
               n, targets.size(0), q);
  const int64_t block = grid.coord(Grid3d::kX) * q + grid.coord(Grid3d::kY);
  const at::Tensor mean = vocab_cross_entropy(logits, targets.narrow(0, block * n, n), vocab, grid.line(Grid3d::kZ));
  const at::Tensor over_x = reduce_from(mean.reshape({1}), grid.line(Grid3d::kX));
  return reduce_from(over_x, grid.line(Grid3d::kY)).squeeze(0) / (q * q);
}

nn::Sharding tensor_parallel_3d(Grid3d& grid, int64_t vocab) {
  nn::Sharding s;
  s.parts = grid.q() * grid.q() * grid.q();
  s.grid = s.cube = true;
  Grid3d* g = &grid;
  s.column = [g](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return linear_3d(x, w, b, Grid3d::kY, *g);
  };
  s.row = [g](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return linear_3d(x, w, b, Grid3d::kZ, *g);
  };
  s.head = [g](const at::Tensor& x, const at::Tensor& w) { return linear_3d(x, w, at::Tensor(), Grid3d::kY, *g); };
  s.embedding = [g](const at::Tensor& w, const at::Tensor& ids) { return embedding_3d(w, ids, *g); };
  s.cross_entropy = [g, vocab](const at::Tensor& logits, const at::Tensor& targets) {
    return cross_entropy_3d(logits, targets, vocab, *g);
  };
  s.layer_norm = [g](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
    return layer_norm_3d(x, w, b, eps, *g);
  };
  s.rms_norm = [g](const at::Tensor& x, const at::Tensor& w, double eps) { return rms_norm_3d(x, w, eps, *g); };
  s.features = [g](const at::Tensor& p) { return residual_vector(p, *g); };
  return s;
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

at::Tensor vector_piece_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid) {
  check_k_axis(k_axis);
  const int q = grid.q();
  const at::Tensor out = block_along(whole, -1, grid.coord(other_axis(k_axis)), q, "a bias or norm weight");
  return block_along(out, -1, grid.coord(k_axis) * q + grid.coord(Grid3d::kX), q * q, "a bias or norm weight block")
      .contiguous();
}

}  // namespace kolos::parallel::tensor
