// 2.5D tensor parallelism (Tesseract, arXiv 2105.14500): the tp group of t = d·q² ranks is d layers ("depth") of a
// q × q grid. Activations are split d·q ways along the tokens and q ways along the features, so each rank holds
// 1/(d·q²) of every activation; weights are split q × q as in 2D and the same blocks are held by each depth layer
// (1/q² of every parameter per rank). Within a layer the products are 2D's SUMMA (tp2d.h) on the layer's tokens;
// the gradient of every weight, bias and norm piece is then summed over the d layers (an all-reduce along the
// depth), since each layer saw only its own tokens: the depth is a data-parallel axis for the grid's parameters.
// The standalone pieces below, and the whole model's sharding (tensor_parallel_25d, parallel.tp_mode = "2.5d").
//
// Grid. tp rank r sits at depth k = r / q², and within its layer at the 2D position of r % q² (row i = (r % q²) / q,
// column j = r % q). Its depth group is the d ranks of the same (i, j) (ranked by k), recorded in the ledger under
// "<tp axis>_depth"; its layer's row and column groups are 2D's ("<tp axis>_row", "<tp axis>_col").
//
// Layout, with tp2d.h's names: X (tokens, in): rank (k, i, j) holds tokens block k·q + i of d·q, features block j.
// W (out, in) and the vectors (bias, norm weights): 2D's blocks of the layer grid, the same on every depth.
//
// Bytes per rank of one Linear, e bytes per element, N tokens: 2D's SUMMA on N/d tokens, 3q(|X| + |A|)·e with
// |X| = (N/d)·in/q² and |A| = in·out/q², plus the bias gather and reduce-scatter of 2D, plus, backward, the
// depth all-reduce of the weight block's and bias piece's gradients: 2(d−1)/d·(|A| + out/q²)·e.
#pragma once

#include <cstdint>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kolos/dist/comm.h"
#include "kolos/parallel/tensor/tp2d.h"

namespace kolos::parallel::tensor {

class Grid25d {
 public:
  // Collective over the tp group: every rank passes its `tp` Comm (size d·q², q ≥ 1 — else InputError naming
  // parallel.tp and parallel.tp_depth) and the same `store`, a namespace of its own: the layers live under
  // "layer/<k>/", the depth groups under "depth/<r % q²>/". The ledger of the sub-groups, when null in `options`,
  // is tp's.
  static std::unique_ptr<Grid25d> create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp, int depth,
                                         dist::Comm::Options options);

  int q() const { return layer_->q(); }
  int depth() const { return d_; }
  int depth_index() const { return k_; }  // k
  Grid2d& layer() const { return *layer_; }  // this rank's q × q layer
  dist::Comm& depth_group() const { return *depth_group_; }  // the d ranks of this (i, j); rank in it = k
  dist::Comm& all() const { return *all_; }  // the whole tp group
  GridDepth depth_view() const { return {depth_group_.get(), k_, d_}; }  // this rank's place in the depth

 private:
  Grid25d() = default;
  int d_ = 1, k_ = 0;
  dist::Comm* all_ = nullptr;
  std::shared_ptr<dist::Comm> layer_comm_, depth_group_;
  std::unique_ptr<Grid2d> layer_;
};

// Y = X·Wᵀ + b on this rank's blocks (layout above): linear_2d within the layer, whose weight and bias gradients
// are then all-reduced along the depth. Differentiable in all three; `grid` must outlive the autograd graph.
at::Tensor linear_25d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid25d& grid);
at::Tensor layer_norm_25d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                          Grid25d& grid);
at::Tensor rms_norm_25d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid25d& grid);

// The whole model on the d layers: 2D's sharding (tensor_parallel_2d, tp2d.h) on this rank's layer, through
// grid_sharding with the depth: the token ids' batch (B) split d·q ways (rank (k, i, j) works on batch block
// k·q + i), every parameter piece's gradient all-reduced along the depth at each use (the tied embedding twice:
// look-up and head), and the cross-entropy's layer mean averaged over the depth (one all-reduce, identity
// backward). B must divide by d·q. parts = d·q², grid true, depth d; `grid` must outlive the model.
nn::Sharding tensor_parallel_25d(Grid25d& grid, int64_t vocab);

// This rank's block of a whole activation: tokens block k·q + i of d·q along `token_dim`, feature block j (copy).
// Weights and vectors: weight_block_2d / vector_piece_2d with grid.layer().
at::Tensor activation_block_25d(const at::Tensor& whole, int64_t token_dim, const Grid25d& grid);

}  // namespace kolos::parallel::tensor
