#include "kolos/parallel/tensor/tp2d.h"

#include <cmath>
#include <utility>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"
#include "kolos/parallel/tensor/regions.h"
#include "kolos/parallel/tensor/tp1d.h"

namespace kolos::parallel::tensor {

namespace {

using dist::Ledger;
using dist::Phase;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One SUMMA step's operand in flight: `root`'s block broadcast over `comm` into `buffer` (the root's own block on
// the root itself).
struct Incoming {
  at::Tensor buffer;
  dist::Handle handle;
};

Incoming broadcast_block(const at::Tensor& own, int root, dist::Comm& comm) {
  Incoming in;
  in.buffer = comm.rank() == root ? own : at::empty_like(own);
  in.handle = comm.broadcast_async(in.buffer, root);
  return in;
}

// SUMMA step k's operands: X[i,k] from row rank k and W_(k,j) from column rank k, launched together.
std::pair<Incoming, Incoming> launch_step(const at::Tensor& x2, const at::Tensor& w, int k, Grid2d& grid) {
  return {broadcast_block(x2, k, grid.row()), broadcast_block(w, k, grid.col())};
}

// Y[i,j] = Σ_k X[i,k]·A[k,j] with A[k,j] = W_(k,j)ᵀ; the header has the algorithm.
struct Summa : torch::autograd::Function<Summa> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, Grid2d* grid) {
    const int q = grid->q();
    const at::Tensor x2 = x.reshape({-1, x.size(-1)}).contiguous();
    const at::Tensor w = weight.contiguous();
    ctx->save_for_backward({x2, w});
    save_pointer(ctx, "grid", *grid);
    std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
    out_shape.back() = w.size(0);

    Ledger::PhaseScope phase(grid->all().ledger(), Phase::kForward);
    at::Tensor y = at::zeros({x2.size(0), w.size(0)}, x2.options());
    // Step k+1's pair is in flight while step k multiplies.
    auto next = launch_step(x2, w, 0, *grid);
    for (int k = 0; k < q; ++k) {
      auto current = std::move(next);
      if (k + 1 < q) next = launch_step(x2, w, k + 1, *grid);
      current.first.handle.wait();
      current.second.handle.wait();
      y.addmm_(current.first.buffer, current.second.buffer.t());
    }
    return y.view(out_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Grid2d& grid = saved_pointer<Grid2d>(ctx, "grid");
    const int q = grid.q(), i = grid.row_index(), j = grid.col_index();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x2 = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor dy = grads[0].reshape({-1, w.size(0)}).contiguous();

    Ledger::PhaseScope phase(grid.all().ledger(), Phase::kBackward);
    // Step k: with W_(k,j) (column broadcast) the partial dY[i,j]·W_(k,j) of dX[i,k], summed to (i,k) along the
    // row; with X[i,k] (row broadcast) the partial dY[i,j]ᵀ·X[i,k] of dW_(k,j), summed to (k,j) along the column.
    // This rank keeps the sums it is root of: dX at k = j, dW at k = i. Step k+1's broadcasts and step k−1's
    // reduces are in flight while step k multiplies.
    at::Tensor grad_x, grad_w;
    std::vector<dist::Handle> reduces;
    auto next = launch_step(x2, w, 0, grid);
    for (int k = 0; k < q; ++k) {
      auto current = std::move(next);
      if (k + 1 < q) next = launch_step(x2, w, k + 1, grid);
      current.second.handle.wait();
      at::Tensor part_x = dy.mm(current.second.buffer);
      dist::Handle reduce_x = grid.row().reduce_async(part_x, k);
      current.first.handle.wait();
      at::Tensor part_w = dy.t().mm(current.first.buffer);
      dist::Handle reduce_w = grid.col().reduce_async(part_w, k);
      for (auto& h : reduces) h.wait();  // step k−1's: at most two steps' partials alive
      reduces = {reduce_x, reduce_w};
      if (k == j) grad_x = part_x;
      if (k == i) grad_w = part_w;
    }
    for (auto& h : reduces) h.wait();
    std::vector<int64_t> x_shape(grads[0].sizes().begin(), grads[0].sizes().end());  // dY's leading dims, x's last
    x_shape.back() = x2.size(1);
    return {grad_x.view(x_shape), grad_w, at::Tensor()};
  }
};

// The statistics of a norm over the last dimension, split over `comm`'s ranks: x̂ = (x − μ)·rstd (LayerNorm,
// `centre`) or x·rstd (RMSNorm), per token, with the whole dimension's μ and rstd.
struct NormStats : torch::autograd::Function<NormStats> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double eps, bool centre, dist::Comm* comm) {
    const double C = static_cast<double>(x.size(-1)) * comm->size();
    Ledger::PhaseScope phase(comm->ledger(), Phase::kForward);
    at::Tensor centred = x;
    if (centre) {
      at::Tensor sum = x.sum(-1, /*keepdim=*/true).contiguous();
      comm->all_reduce(sum);
      centred = x - sum / C;
    }
    at::Tensor square = centred.pow(2).sum(-1, /*keepdim=*/true).contiguous();
    comm->all_reduce(square);
    const at::Tensor rstd = at::rsqrt(square / C + eps);
    at::Tensor normed = centred * rstd;
    ctx->save_for_backward({normed, rstd});
    ctx->saved_data["centre"] = centre;
    save_comm(ctx, *comm);
    return normed;
  }

  // dx = rstd·(g − mean(g) − x̂·mean(g·x̂)), means over the whole dimension (RMSNorm: without mean(g)).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    dist::Comm& comm = saved_comm(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& normed = saved[0];
    const at::Tensor& rstd = saved[1];
    const bool centre = ctx->saved_data["centre"].toBool();
    const double C = static_cast<double>(normed.size(-1)) * comm.size();
    const at::Tensor& g = grads[0];
    Ledger::PhaseScope phase(comm.ledger(), Phase::kBackward);
    at::Tensor sums = (centre ? at::stack({(g * normed).sum(-1, true), g.sum(-1, true)})
                              : (g * normed).sum(-1, true).unsqueeze(0))
                          .contiguous();
    comm.all_reduce(sums);
    sums /= C;
    at::Tensor inner = g - normed * sums[0];
    if (centre) inner = inner - sums[1];
    return {rstd * inner, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Rank (i, j)'s block ↔ rank (j, i)'s, on the tp group; its own dual.
struct Transpose : torch::autograd::Function<Transpose> {
  static at::Tensor exchange(const at::Tensor& x, Grid2d& grid, Phase phase) {
    const int partner = grid.col_index() * grid.q() + grid.row_index();
    Ledger::PhaseScope scope(grid.all().ledger(), phase);
    const at::Tensor out = x.contiguous();
    at::Tensor in = at::empty_like(out);
    dist::Handle sent = grid.all().send_async(out, partner);
    grid.all().recv(in, partner);
    sent.wait();
    return in;
  }
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Grid2d* grid) {
    save_pointer(ctx, "grid", *grid);
    return exchange(x, *grid, Phase::kForward);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {exchange(grads[0], saved_pointer<Grid2d>(ctx, "grid"), Phase::kBackward), at::Tensor()};
  }
};

at::Tensor transpose_blocks(const at::Tensor& x, Grid2d& grid) {
  if (grid.row_index() == grid.col_index()) return x;
  return Transpose::apply(x, &grid);
}

void check_divides(int64_t size, int64_t parts, const char* what) {
  KOLOS_CHECK(size % parts == 0, "tensor parallelism splits {} of size {} into {} parts; it must divide by {}", what,
              size, parts, parts);
}

}  // namespace

at::Tensor block_along(const at::Tensor& x, int64_t dim, int64_t index, int64_t parts, const char* what) {
  check_divides(x.size(dim), parts, what);
  const int64_t part = x.size(dim) / parts;
  return x.narrow(dim, index * part, part);
}

std::unique_ptr<Grid2d> Grid2d::create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp,
                                       dist::Comm::Options options) {
  const int t = tp.size();
  const int q = static_cast<int>(std::lround(std::sqrt(static_cast<double>(t))));
  KOLOS_CHECK(q * q == t,
              "2D tensor parallelism needs a square number of tp ranks (q × q); parallel.tp = {} is not one. Use "
              "parallel.tp = 4, 9, 16, ...",
              t);
  std::unique_ptr<Grid2d> grid(new Grid2d());
  grid->q_ = q;
  grid->i_ = tp.rank() / q;
  grid->j_ = tp.rank() % q;
  grid->all_ = &tp;
  if (!options.ledger) options.ledger = tp.shared_ledger();
  // Rows first, then columns, on every rank: the groups of one kind are disjoint, so they meet concurrently.
  auto row_store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("row/{}", grid->i_), store);
  grid->row_ = dist::Comm::create(row_store, grid->j_, q, tp.axis() + "_row", options);
  auto col_store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("col/{}", grid->j_), store);
  grid->col_ = dist::Comm::create(col_store, grid->i_, q, tp.axis() + "_col", options);
  return grid;
}

at::Tensor normalize_split(const at::Tensor& x, double eps, bool centre, dist::Comm& comm) {
  return NormStats::apply(x, eps, centre, &comm);
}

at::Tensor linear_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid2d& grid) {
  KOLOS_ASSERT(x.size(-1) == weight.size(1), "2D Linear: input block has {} features, weight block expects {}",
               x.size(-1), weight.size(1));
  at::Tensor y = Summa::apply(x, weight, &grid);
  if (!bias.defined()) return y;
  // b[j] from the column's q pieces; backward reduce-scatters Σ_tokens dY[i,j] back to them.
  return y + gather_rs(bias, 0, grid.col());
}

at::Tensor layer_norm_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                         Grid2d& grid) {
  at::Tensor normed = normalize_split(x, eps, /*centre=*/true, grid.row());
  if (!bias.defined()) return normed * gather_rs(weight, 0, grid.col());
  // Weight and bias pieces gathered together: one all-gather forward, one reduce-scatter backward.
  at::Tensor affine = gather_rs(at::stack({weight, bias}), 1, grid.col());
  return normed * affine[0] + affine[1];
}

at::Tensor rms_norm_2d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid2d& grid) {
  return normalize_split(x, eps, /*centre=*/false, grid.row()) * gather_rs(weight, 0, grid.col());
}

nn::Sharding tensor_parallel_2d(Grid2d& grid, int64_t vocab) { return grid_sharding(grid, vocab, GridDepth{}); }

at::Tensor GridDepth::shared(const at::Tensor& p) const {
  return size == 1 || !p.defined() ? p : copy_to(p, *group);
}

nn::Sharding grid_sharding(Grid2d& grid, int64_t vocab, GridDepth depth) {
  KOLOS_ASSERT(depth.size >= 1 && (depth.size == 1 || depth.group), "grid_sharding: depth {} without its group",
               depth.size);
  nn::Sharding s;
  s.parts = depth.size * grid.q() * grid.q();
  s.grid = true;
  s.depth = depth.size;
  Grid2d* g = &grid;
  auto shared = [depth](const at::Tensor& p) { return depth.shared(p); };
  s.column = s.row = [g, shared](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return linear_2d(x, shared(w), shared(b), *g);
  };
  s.head = [g, shared](const at::Tensor& x, const at::Tensor& w) {
    return linear_2d(x, shared(w), at::Tensor(), *g);
  };
  s.embedding = [g, shared, depth](const at::Tensor& w, const at::Tensor& ids) {
    check_divides(ids.size(0), static_cast<int64_t>(depth.size) * g->q(), "the batch");
    const at::Tensor layer_ids = block_along(ids, 0, depth.index, depth.size, "the batch");  // this layer's block
    // Features block i, every token of the layer.
    const at::Tensor rows = vocab_rows(shared(w), layer_ids, g->col_index() * w.size(0));
    return transpose_blocks(scatter(rows, 0, g->row()), *g);
  };
  s.cross_entropy = [g, vocab, depth](const at::Tensor& logits, const at::Tensor& targets) {
    const int64_t n = logits.size(0), blocks = static_cast<int64_t>(depth.size) * g->q();
    KOLOS_ASSERT(targets.size(0) == n * blocks, "grid cross-entropy: {} logits rows of {} targets on {} row blocks", n,
                 targets.size(0), blocks);
    const int64_t block = static_cast<int64_t>(depth.index) * g->q() + g->row_index();
    at::Tensor mean = vocab_cross_entropy(logits, targets.narrow(0, block * n, n), vocab, g->row());
    at::Tensor layer = reduce_from(mean.reshape({1}), g->col()) / g->q();
    if (depth.size > 1) layer = reduce_from(layer, *depth.group) / depth.size;
    return layer.squeeze(0);
  };
  s.layer_norm = [g, shared](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
    return layer_norm_2d(x, shared(w), shared(b), eps, *g);
  };
  s.rms_norm = [g, shared](const at::Tensor& x, const at::Tensor& w, double eps) {
    return rms_norm_2d(x, shared(w), eps, *g);
  };
  s.features = [g, shared](const at::Tensor& p) { return gather_rs(shared(p), p.dim() - 1, g->col()); };
  return s;
}

at::Tensor activation_block_2d(const at::Tensor& whole, int64_t token_dim, const Grid2d& grid) {
  const at::Tensor rows = block_along(whole, token_dim, grid.row_index(), grid.q(), "the tokens");
  return block_along(rows, -1, grid.col_index(), grid.q(), "the features").clone(at::MemoryFormat::Contiguous);
}

at::Tensor weight_block_2d(const at::Tensor& whole, const Grid2d& grid) {
  const at::Tensor out = block_along(whole, 0, grid.col_index(), grid.q(), "a weight's output features");
  return block_along(out, 1, grid.row_index(), grid.q(), "a weight's input features")
      .clone(at::MemoryFormat::Contiguous);
}

at::Tensor vector_piece_2d(const at::Tensor& whole, const Grid2d& grid) {
  const int q = grid.q();
  return block_along(whole, 0, grid.col_index() * q + grid.row_index(), q * q, "a bias or norm weight")
      .clone(at::MemoryFormat::Contiguous);
}

}  // namespace kolos::parallel::tensor
