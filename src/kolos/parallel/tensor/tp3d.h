// 3D tensor parallelism (Bian et al., arXiv 2105.14450): the tp group of t = q³ ranks is a q × q × q cube, rank
// r at (x, y, z) = (r / q², (r / q) % q, r % q); its three line groups are the q ranks that differ from it in one
// coordinate only, recorded in the ledger as "<tp axis>_x", "_y" and "_z". Activations and weights are both split
// q³ ways (1/q³ of each per rank). Standalone pieces; parallel::apply does not use them yet.
//
// A Linear Y = X·Wᵀ + b (X: tokens × in, W: out × in) on the cube has a K axis (y or z: the axis along which the
// input features are split) and an N axis (the other one: the output features); the tokens are split along x.
//   X   rank holds tokens block x·q + n of q² (n = its N-axis coordinate), input features block k of q
//   W   rank holds out block n of q, in block k of q, and of that the piece x of q along the input features
//   Y   rank holds tokens block x·q + k of q², output features block n of q
// so a Linear's output is the next Linear's input when the next one's K axis is this one's N axis: consecutive
// Linears alternate their K axis between y and z (the input and output groups swap roles, as in the paper).
//   forward   X[x, k] = all-gather of the tokens pieces along the N axis; W[n, k] = all-gather of the in pieces
//             along x; the local product X[x,k]·W[n,k]ᵀ is partial over k: reduce-scatter over the K axis
//             (summed, split by tokens) gives Y
//   backward  dY[x, n] all-gathered along the K axis; X[x, k] and W[n, k] gathered again as in forward (only the
//             rank's own pieces are kept between forward and backward: 1/q³ of each activation per rank); dX's
//             partial dY·W[n,k] reduce-scattered along the N axis; dW's partial dYᵀ·X[x,k] reduce-scattered along x
// With e bytes per element and the ledger's convention (an all-gather or reduce-scatter of a whole of M bytes
// counts (q−1)/q·M on every rank), per rank: forward (q−1)/q·(|X| + |W| + |Y|)·e, backward
// (q−1)/q·(2|X| + 2|W| + |Y|)·e, where |X| = tokens/q·in/q, |W| = out/q·in/q and |Y| = tokens/q·out/q are the
// gathered (whole-line) sizes.
// The bias b (out) is held as out block n, of which the piece k·q + x of q² (1/q³ per rank, as every parameter:
// none is replicated): forward all-gathered along x, then along the K axis; backward its gradient (Σ over the
// rank's tokens of dY) is reduce-scattered along the K axis, then along x, which together sum it over every token.
//
// The whole model (tensor_parallel_3d). Column Linears (q|k|v, the MLP's up/gate) have K axis y, row Linears (the
// attention's and the MLP's output projections) K axis z, so the hidden state between blocks — the residual stream
// — has the input layout of a K = y Linear: batch block x·q + z of q², features block y; inside a block the column
// Linears' outputs are batch block x·q + y, features (heads) block z, which the row Linears take. Tokens are split
// along the batch only (every rank sees whole sequences: attention is local), so the batch divides by q².
//   norms       features split along y: the per-token statistics all-reduced along the y line (normalize_split);
//               their weight and bias (C) held as a row Linear's bias (block y, piece z·q + x), gathered along x,
//               then z (reduce-scattered back in backward).
//   embedding   the table (V, C) holds the layout of a K = y weight (V out, C in): vocabulary block z (ceil(V/q)
//               rows, the last padded with zeros), features block y, and of that piece x. Forward: all-gather the
//               pieces along x (the (V/q, C/q) block), look up batch block x of q (the tokens of the x plane) in
//               those rows (zeros for ids outside them), reduce-scatter along z over the batch — summing the
//               vocabulary blocks and leaving batch block x·q + z: the residual layout. Backward: the duals.
//   head        the final hidden state times the table (tied or lm_head, the same layout): linear_3d with K axis
//               y, logits of batch block x·q + y, vocabulary block z; never gathered.
//   cross-entropy  vocab-parallel along the z line (tp1d.h's vocab_cross_entropy) on batch block x·q + y's
//               targets; the q² blocks' means averaged by all-reduces along x and y (identity backward).
//   the position table (P, C) of GPT-2, added to the residual stream: held as the norms' vectors.
#pragma once

#include <cstdint>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kolos/dist/comm.h"
#include "kolos/nn/layers.h"

namespace kolos::parallel::tensor {

class Grid3d {
 public:
  enum Axis { kX = 0, kY = 1, kZ = 2 };

  // Collective over the tp group: every rank passes its `tp` Comm (size q³, else InputError naming parallel.tp)
  // and the same `store`, a namespace of its own (line groups under "x/<y>.<z>/", "y/<x>.<z>/", "z/<x>.<y>/").
  // The ledger of the line groups, when null in `options`, is tp's.
  static std::unique_ptr<Grid3d> create(const c10::intrusive_ptr<c10d::Store>& store, dist::Comm& tp,
                                        dist::Comm::Options options);

  int q() const { return q_; }
  int coord(Axis a) const { return coord_[a]; }
  dist::Comm& line(Axis a) const { return *line_[a]; }  // the q ranks differing from this one along a; rank = coord
  dist::Comm& all() const { return *all_; }

 private:
  Grid3d() = default;
  int q_ = 1;
  int coord_[3] = {0, 0, 0};
  dist::Comm* all_ = nullptr;
  std::shared_ptr<dist::Comm> line_[3];
};

// The other one of y and z.
inline Grid3d::Axis other_axis(Grid3d::Axis k) { return k == Grid3d::kY ? Grid3d::kZ : Grid3d::kY; }

// Y = X·Wᵀ + b with `k_axis` (kY or kZ) the K axis (layout above). x: (tokens/q², in/q) — any leading shape whose
// flattening is the rank's tokens, the first dimension being split; weight: (out/q, in/q²); bias: (out/q²) or
// undefined. Returns (tokens/q² ..., out/q). Differentiable in all three.
at::Tensor linear_3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Grid3d::Axis k_axis,
                     Grid3d& grid);

// LayerNorm / RMSNorm of the residual stream: x (..., C/q) features block y; weight, bias (C/q³) pieces as a K = z
// Linear's bias (vector_piece_3d(whole, kZ)); bias may be undefined. Returns this rank's block of the norm of the
// whole x. Differentiable in all three.
at::Tensor layer_norm_3d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps,
                         Grid3d& grid);
at::Tensor rms_norm_3d(const at::Tensor& x, const at::Tensor& weight, double eps, Grid3d& grid);

// The look-up of ids (B, T) — the whole batch, B divisible by q² — in the table piece (ceil(V/q), C/q²) of this
// rank (layout above); returns the residual-stream block (B/q², T, C/q). Differentiable in the table.
at::Tensor embedding_3d(const at::Tensor& table, const at::Tensor& ids, Grid3d& grid);

// Mean cross-entropy over every token from this rank's logits block (N/q², ceil(V/q)) — batch block x·q + y,
// vocabulary block z, the columns past `vocab` padding — against the whole batch's targets (N).
at::Tensor cross_entropy_3d(const at::Tensor& logits, const at::Tensor& targets, int64_t vocab, Grid3d& grid);

// The whole model on the cube: nn::Sharding for parallel::apply (layout above). `grid` must outlive the model.
nn::Sharding tensor_parallel_3d(Grid3d& grid, int64_t vocab);

// This rank's pieces of whole tensors (copies), for a Linear whose K axis is `k_axis`:
//   input (tokens along dim 0, features last): tokens block x·q + n of q², feature block k of q
//   output: tokens block x·q + k of q², feature block n of q  (= the input of a Linear with K axis other_axis(k))
//   weight (out, in): out block n, in block k, its piece x of q along in;  bias (out): block n, its piece k·q + x
// (vector_piece_3d: any vector of a Linear's outputs; with kZ, a vector acting on the residual stream's features)
at::Tensor input_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid);
at::Tensor output_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid);
at::Tensor weight_block_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid);
at::Tensor vector_piece_3d(const at::Tensor& whole, Grid3d::Axis k_axis, const Grid3d& grid);

}  // namespace kolos::parallel::tensor
