// 2D tensor parallelism (Optimus, arXiv 2104.05343): weights AND activations split over a q × q grid of the tp
// group, products by SUMMA. Standalone pieces — the grid, the Linear, the LayerNorm/RMSNorm statistics and the
// slicing of whole tensors into this rank's blocks — and the whole model's sharding built from them
// (tensor_parallel_2d, parallel.tp_mode = "2d").
//
// Grid. tp rank r (t = q² ranks) sits at row i = r / q, column j = r % q. Its row group is the q ranks of row i
// (ranked by j: ranks of one row are tp neighbours), its column group the q ranks of column j (ranked by i).
//
// Block layout of Y = X·A + b, with A = Wᵀ for a torch-style weight W (out, in) (nn::Linear: y = x Wᵀ + b). Below,
// a "token" is one position of the leading dimensions of X (the tokens are split along one of them, `token_dim`):
//   X (tokens, in)   rank (i, j) holds X[i, j]: tokens block i, input features block j  — (tokens/q, in/q)
//   Y (tokens, out)  rank (i, j) holds Y[i, j]: tokens block i, output features block j — (tokens/q, out/q)
//                    (the same layout as X: one 2D Linear's output is the next one's input)
//   A (in, out)      rank (i, j) holds A[i, j], i.e. W's block (out block j, in block i) — local W (out/q, in/q)
//   b (out)          split into q² pieces of out/q²: rank (i, j) holds piece j·q + i, so the column j holds
//                    b[j] (out block j) spread over its q rows. Forward all-gathers b[j] along the column,
//                    backward reduce-scatters the bias gradient (Σ over the rank's tokens of dY[i, j]) along it
//                    — ColossalAI's layout: every parameter at 1/q², no replicated parameter to keep in sync.
//   LayerNorm/RMSNorm weight and bias (C) split as b.
//
// Products (q steps each; step k's broadcasts are launched before step k−1's multiply, so they overlap it):
//   forward   Y[i,j]  = Σ_k X[i,k]·A[k,j]     X[i,k] broadcast along row i (root k), A[k,j] along column j (root k)
//   backward  dX[i,k] = Σ_j dY[i,j]·A[k,j]ᵀ   A[k,j] broadcast along column j; the partial dY[i,j]·A[k,j]ᵀ of every
//                                             rank of row i is reduced (summed) to its owner (i,k) along the row
//             dA[k,j] = Σ_i X[i,k]ᵀ·dY[i,j]   X[i,k] broadcast along row i; the partials reduced to (k,j) along
//                                             the column (Optimus's C = A·Bᵀ and C = Aᵀ·B)
//   bytes per rank (ledger convention: a broadcast or reduce of M bytes counts M on every rank, root or not), with
//   |X| = tokens·in/q² and |A| = in·out/q² elements of one block and e bytes per element:
//     forward   q·(|X| + |A|)·e in broadcasts          + the bias all-gather ((q−1)/q · out/q · e)
//     backward  2q·(|X| + |A|)·e in broadcasts/reduces + the bias reduce-scatter (the same)
//   i.e. 3q(|X| + |A|)·e = 3(tokens·in + in·out)·e/q per Linear, against 1D's all-reduces of whole activations.
//
// Norms. The hidden dimension is split along the row: the statistics of each token (mean, variance or mean square)
// are all-reduced along the row — LayerNorm two-pass (Σx, then Σ(x−μ)²: exact where Σx² − (Σx)²/C would cancel),
// RMSNorm one (Σx²); backward one all-reduce of the two (one for RMSNorm) per-token sums it needs.
//
// All ranks of the grid must run the same calls in the same order, forward and backward (as for any collective).
// Ledger phases "forward" and "backward" are set by these functions; the row and column groups are recorded under
// the axes "<tp axis>_row" and "<tp axis>_col".
#pragma once

#include <cstdint>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kolos/dist/comm.h"
#include "kolos/nn/layers.h"

namespace kolos::parallel::tensor {

class Grid2d {
 public:
  // Collective over the tp group: every rank passes its `tp` Comm (size q², a perfect square, else InputError
  // naming parallel.tp) and the same `store` — a namespace of its own (a c10d::PrefixStore), in which the row
  // groups live under "row/<i>/" and the column groups under "col/<j>/". `options` (timeout, interface, shm) apply
  // to both sub-groups; their ledger, when null, is tp's — so one ledger counts the whole grid.
  static std::unique_ptr<Grid2d> create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp,
                                        dist::Comm::Options options);

  int q() const { return q_; }
  int row_index() const { return i_; }  // i
  int col_index() const { return j_; }  // j
  dist::Comm& all() const { return *all_; }  // the whole tp group
  dist::Comm& row() const { return *row_; }  // the q ranks of row i; rank in it = j
  dist::Comm& col() const { return *col_; }  // the q ranks of column j; rank in it = i

 private:
  Grid2d() = default;
  int q_ = 1, i_ = 0, j_ = 0;
  dist::Comm* all_ = nullptr;
  std::shared_ptr<dist::Comm> row_, col_;
};

// Y[i,j] = X[i,·]·A[·,j] + b[j] by SUMMA (layouts above). x: (..., in/q) this rank's block X[i,j] — every rank of
// a row passes the same leading shape; weight: (out/q, in/q) this rank's block of W; bias: (out/q²) this rank's
// piece, or undefined. Returns (..., out/q): Y[i,j]. Differentiable in x, weight and bias. `grid` must outlive the
// autograd graph.
at::Tensor linear_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid2d& grid);

// LayerNorm / RMSNorm over the last dimension (C), split along the row: x (..., C/q) this rank's block; weight,
// bias: (C/q²) pieces as b above (bias may be undefined). Returns (..., C/q), this rank's block of
// nn::layer_norm / nn::rms_norm of the whole x. Differentiable in all three.
at::Tensor layer_norm_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                         Grid2d& grid);
at::Tensor rms_norm_2d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid2d& grid);
// The normalised x̂ of a norm over the last dimension (C) split over `comm`'s ranks (x: (..., C/n), this rank's
// features): (x − μ)·rstd with `centre` (LayerNorm: two-pass statistics, Σx then Σ(x − μ)², each all-reduced),
// x·rstd without (RMSNorm: Σx²); backward one all-reduce of the per-token sums it needs. Shared by 2D (the row),
// 2.5D and 3D.
at::Tensor normalize_split(const at::Tensor& x, double eps, bool centre, dist::Comm& comm);

// The whole model on the grid: nn::Sharding for parallel::apply (parts = q², grid). Every Linear is linear_2d
// (column- and row-parallel alike), the norms layer_norm_2d / rms_norm_2d, GPT-2's position table gathered along
// the column (features), and the activations are blocks of the batch (i) × features (j): the batch (B) divides
// by q. `vocab`: the model's vocabulary. `grid` must outlive the model.
//   embedding   the table (V, C) as a weight (nn::TpLayout): rank (i, j) holds vocabulary block j (ceil(V/q) rows,
//               the last padded with zeros) of features block i. Each rank looks up every token (B, T) in its rows
//               (zeros for the others), the row reduce-scatters that along the batch — rank (i, j) then holds
//               the sum over the vocabulary of batch block j, features block i: X[j, i] — and the transposed
//               ranks (i, j) ↔ (j, i) exchange their blocks (a send and a receive on the tp group; the diagonal
//               keeps its own). Backward: the exchange, then the row's all-gather.
//   head        linear_2d of the final hidden state with the table (tied or lm_head, the same layout): logits
//               block (batch i, vocabulary block j) on rank (i, j); the full logits are never gathered.
//   cross_entropy  vocab-parallel along the row (tp1d.h's, on batch block i's targets), the rows' means averaged
//               by an all-reduce along the column (identity backward).
nn::Sharding tensor_parallel_2d(Grid2d& grid, int64_t vocab);

// The model's sharding on one q × q grid, shared by 2D (tensor_parallel_2d: one layer) and 2.5D
// (tensor_parallel_25d, tp25d.h: `depth` layers of the grid on blocks of the batch, holding the same pieces). With
// depth.size = d > 1 the grid is layer k = depth.index of d: the embedding first keeps batch block k of d of the
// token ids (the grid then splits it q ways as 2D does: rank (k, i, j) works on batch block k·q + i of d·q), every
// parameter piece enters each use through copy_to(depth.group) (identity forward, its gradient all-reduced along the
// depth backward: each layer saw only its tokens), and the cross-entropy's layer mean is averaged over the depth by
// an all-reduce (identity backward), so the loss and every gradient are one process's. parts = d·q², grid true,
// depth d. `grid` and depth.group must outlive the model.
struct GridDepth {
  dist::Comm* group = nullptr;  // the d ranks holding the same pieces (null for 2D)
  int index = 0, size = 1;      // k, d
  // A parameter piece (or undefined) as one use sees it: identity forward; with d > 1 its gradient summed over the
  // depth layers backward (copy_to along `group`).
  at::Tensor shared(const at::Tensor& p) const;
};
nn::Sharding grid_sharding(Grid2d& grid, int64_t vocab, GridDepth depth);

// This rank's block of whole tensors (copies, contiguous) — to shard parameters and inputs, and in tests.
//   activation: token block i along `token_dim`, feature block j along the last dimension (X[i, j], Y[i, j]).
//   weight (out, in): out block j, in block i.
//   vector (b, norm weights) of length n: piece j·q + i of n/q².
// The split dimensions must divide by q (vector: by q²); InputError otherwise.
// Block `index` of `parts` equal blocks of x along `dim` (a view; dim may be negative); InputError naming `what`
// when the dimension does not divide. Shared by the 2D, 2.5D and 3D slicing helpers.
at::Tensor block_along(const at::Tensor& x, int64_t dim, int64_t index, int64_t parts, const char* what);

at::Tensor activation_block_2d(const at::Tensor& whole, int64_t token_dim, const Grid2d& grid);
at::Tensor weight_block_2d(const at::Tensor& whole, const Grid2d& grid);
at::Tensor vector_piece_2d(const at::Tensor& whole, const Grid2d& grid);

}  // namespace kolos::parallel::tensor
