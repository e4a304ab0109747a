// 2D tensor parallelism (src/kolos/parallel/tensor/tp2d.h) against one process: the SUMMA Linear (two chained,
// so one's output block is the next one's input block), LayerNorm and RMSNorm on q × q thread ranks, each holding
// its blocks of the same whole tensors; outputs and every gradient must be that rank's block of the one-process
// result (at::linear, at::layer_norm, nn::rms_norm). The ledger tests check the bytes of the algorithms against
// their derivations; the whole GPT-2 and LLaMA under tensor_parallel_2d against one process (fp32). Ranks are
// threads (tests/dist/thread_ranks.h), fp64 unless bytes are counted or the whole model runs.
#include "kolos/parallel/tensor/tp2d.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/nn/layers.h"
#include "kolos/models/model.h"
#include "tests/dist/thread_ranks.h"
#include "tests/parallel/grid_model.h"
#include "tests/support.h"

namespace kolos::parallel::tensor {
namespace {

constexpr double kTol = 1e-10;  // fp64: only the order of the sums differs from one process


void run_grid(int t, const std::function<void(Grid2d&, int)>& body) { test::run_grid_ranks<Grid2d>(t, body); }

TEST(TensorParallel2d, GridPlacesRanksRowMajor) {
  run_grid(4, [](Grid2d& grid, int r) {
    EXPECT_EQ(grid.q(), 2);
    EXPECT_EQ(grid.row_index(), r / 2);
    EXPECT_EQ(grid.col_index(), r % 2);
    EXPECT_EQ(grid.row().rank(), r % 2);
    EXPECT_EQ(grid.col().rank(), r / 2);
    EXPECT_EQ(grid.row().axis(), "tp_row");
    EXPECT_EQ(grid.col().axis(), "tp_col");
    // Row i holds tp ranks 2i and 2i+1; column j holds j and 2 + j.
    at::Tensor sum = at::full({1}, static_cast<double>(r), at::kDouble);
    grid.row().all_reduce(sum);
    EXPECT_EQ(sum.item<double>(), 4 * (r / 2) + 1);
    sum.fill_(r);
    grid.col().all_reduce(sum);
    EXPECT_EQ(sum.item<double>(), 2 * (r % 2) + 2);
  });
  EXPECT_THROW(run_grid(2, [](Grid2d&, int) {}), InputError);  // 2 is not q²
}

// h = X·W1ᵀ + b1, y = h·W2ᵀ + b2 on a q × q grid; X: (B, T, C) with the batch split over the grid's rows.
void check_linear(int q, int64_t B, int64_t T, int64_t C, int64_t F) {
  auto gen = at::detail::createCPUGenerator(5);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({B, T, C}, gen, opts).requires_grad_();
  const at::Tensor w1 = at::randn({F, C}, gen, opts).requires_grad_();
  const at::Tensor b1 = at::randn({F}, gen, opts).requires_grad_();
  const at::Tensor w2 = at::randn({C, F}, gen, opts).requires_grad_();
  const at::Tensor b2 = at::randn({C}, gen, opts).requires_grad_();
  const at::Tensor probe = at::randn({B, T, C}, gen, opts);  // dL/dy: a loss that weighs every output differently
  const at::Tensor h = at::linear(x, w1, b1);
  const at::Tensor y = at::linear(h, w2, b2);
  (y * probe).sum().backward();
  // The ranks (threads) slice plain tensors, never the reference's graph.
  const at::Tensor X = x.detach(), W1 = w1.detach(), B1 = b1.detach(), W2 = w2.detach(), B2 = b2.detach();
  const at::Tensor H = h.detach(), Y = y.detach();

  run_grid(q * q, [&](Grid2d& grid, int r) {
    auto leaf = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(); };
    const at::Tensor lx = leaf(activation_block_2d(X, 0, grid));
    const at::Tensor lw1 = leaf(weight_block_2d(W1, grid)), lb1 = leaf(vector_piece_2d(B1, grid));
    const at::Tensor lw2 = leaf(weight_block_2d(W2, grid)), lb2 = leaf(vector_piece_2d(B2, grid));
    EXPECT_EQ(lx.sizes(), (std::vector<int64_t>{B / q, T, C / q}));
    EXPECT_EQ(lw1.sizes(), (std::vector<int64_t>{F / q, C / q}));
    EXPECT_EQ(lb1.sizes(), (std::vector<int64_t>{F / (q * q)}));
    const at::Tensor lh = linear_2d(lx, lw1, lb1, grid);
    const at::Tensor ly = linear_2d(lh, lw2, lb2, grid);
    EXPECT_LT(test::rel_diff(lh, activation_block_2d(H, 0, grid)), kTol) << "rank " << r << " h";
    EXPECT_LT(test::rel_diff(ly, activation_block_2d(Y, 0, grid)), kTol) << "rank " << r << " y";
    (ly * activation_block_2d(probe, 0, grid)).sum().backward();
    EXPECT_LT(test::rel_diff(lx.grad(), activation_block_2d(x.grad(), 0, grid)), kTol) << "rank " << r << " dx";
    EXPECT_LT(test::rel_diff(lw1.grad(), weight_block_2d(w1.grad(), grid)), kTol) << "rank " << r << " dW1";
    EXPECT_LT(test::rel_diff(lb1.grad(), vector_piece_2d(b1.grad(), grid)), kTol) << "rank " << r << " db1";
    EXPECT_LT(test::rel_diff(lw2.grad(), weight_block_2d(w2.grad(), grid)), kTol) << "rank " << r << " dW2";
    EXPECT_LT(test::rel_diff(lb2.grad(), vector_piece_2d(b2.grad(), grid)), kTol) << "rank " << r << " db2";
  });
}

TEST(TensorParallel2d, LinearMatchesOneProcess) { check_linear(2, 4, 3, 8, 12); }

// q = 3: steps whose root is neither 0 nor the last rank, and grid rows ≠ columns in every block index.
TEST(TensorParallel2d, LinearMatchesOneProcessOnThreeByThree) { check_linear(3, 6, 2, 9, 18); }

// Bytes one rank sends for one Linear Y = X·Wᵀ + b, fp32 (e = 4 bytes), X: (N tokens, C), W: (F, C), q × q grid.
// Blocks: |X| = (N/q)·(C/q) elements (X[i,k], and dX's partials, which have its shape), |A| = (F/q)·(C/q) (W's
// block and dW's partials). The ledger counts a broadcast or reduce of M bytes as M on every rank, root or not,
// and an all-gather/reduce-scatter of a whole of M bytes as (q−1)·M/q (src/kolos/dist/ledger.h).
//   forward   q steps, each: broadcast X[i,k] along the row, W[k,j] along the column     row: q·|X|·e
//                                                                                       col: q·|A|·e
//             bias: all-gather b[j] (F/q elements) from the column's q pieces           col: (q−1)/q·(F/q)·e
//   backward  q steps, each: broadcast W[k,j] along the column (for dX) and X[i,k] along the row (for dW);
//             reduce dX's partial (|X|) to (i,k) along the row, dW's (|A|) to (k,j) along the column
//                                                   row: q·|X|·e broadcast + q·|X|·e reduce
//                                                   col: q·|A|·e broadcast + q·|A|·e reduce
//             bias: reduce-scatter Σ_tokens dY[i,j] (F/q) to the column's pieces        col: (q−1)/q·(F/q)·e
// With N = 12, C = 8, F = 12, q = 2: |X| = 24, |A| = 24, so forward 2·24·4 = 192 bytes on each of row and column
// plus 12 for the bias; backward twice the SUMMA bytes plus 12. Nothing else — in particular nothing on the tp
// group itself, and no activation or weight is ever gathered whole.
TEST(TensorParallel2d, LedgerCountsSummaBytes) {
  const int q = 2;
  const int64_t B = 4, T = 3, C = 8, F = 12, e = 4, N = B * T;
  auto gen = at::detail::createCPUGenerator(9);
  const at::Tensor x = at::randn({B, T, C}, gen);
  const at::Tensor w = at::randn({F, C}, gen), b = at::randn({F}, gen);
  run_grid(q * q, [&](Grid2d& grid, int r) {
    const at::Tensor lx = activation_block_2d(x, 0, grid).requires_grad_();
    const at::Tensor lw = weight_block_2d(w, grid).requires_grad_();
    const at::Tensor lb = vector_piece_2d(b, grid).requires_grad_();
    dist::Ledger& ledger = grid.all().ledger();
    ledger.reset();
    const at::Tensor y = linear_2d(lx, lw, lb, grid);
    const int64_t X = (N / q) * (C / q), A = (F / q) * (C / q), bias = (q - 1) * (F / q) * e / q;
    using dist::Phase;
    const Phase fw = Phase::kForward, bw = Phase::kBackward;
    EXPECT_EQ(ledger.calls("tp_row", "broadcast", fw), q);
    EXPECT_EQ(ledger.bytes("tp_row", "broadcast", fw), q * X * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_col", "broadcast", fw), q);
    EXPECT_EQ(ledger.bytes("tp_col", "broadcast", fw), q * A * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_col", "all_gather", fw), 1);
    EXPECT_EQ(ledger.bytes("tp_col", "all_gather", fw), bias) << "rank " << r;
    EXPECT_EQ(ledger.total_bytes(), q * (X + A) * e + bias) << "rank " << r << ": " << ledger.to_json().dump();
    EXPECT_EQ(q * (X + A) * e + bias, 2 * 192 + 12);  // the figures of the comment above

    y.sum().backward();
    EXPECT_EQ(ledger.calls("tp_col", "broadcast", bw), q);
    EXPECT_EQ(ledger.bytes("tp_col", "broadcast", bw), q * A * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_row", "reduce", bw), q);
    EXPECT_EQ(ledger.bytes("tp_row", "reduce", bw), q * X * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_row", "broadcast", bw), q);
    EXPECT_EQ(ledger.bytes("tp_row", "broadcast", bw), q * X * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_col", "reduce", bw), q);
    EXPECT_EQ(ledger.bytes("tp_col", "reduce", bw), q * A * e) << "rank " << r;
    EXPECT_EQ(ledger.calls("tp_col", "reduce_scatter", bw), 1);
    EXPECT_EQ(ledger.bytes("tp_col", "reduce_scatter", bw), bias) << "rank " << r;
    EXPECT_EQ(ledger.total_bytes(), 3 * q * (X + A) * e + 2 * bias) << "rank " << r << ": " << ledger.to_json().dump();
  });
}

// LayerNorm (or RMSNorm) of x: (B, T, C), the hidden dimension split along the grid's rows' ranks (columns j).
void check_norm(bool layer_norm) {
  const int q = 2;
  const int64_t B = 4, T = 3, C = 16;
  const double eps = 1e-5;
  auto gen = at::detail::createCPUGenerator(3);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  // A mean far from 0 relative to the spread, as after a residual stream: a one-pass E[x²] − E[x]² would lose digits.
  const at::Tensor x = (at::randn({B, T, C}, gen, opts) * 0.5 + 3.0).requires_grad_();
  const at::Tensor weight = (at::randn({C}, gen, opts) + 1.0).requires_grad_();
  const at::Tensor bias = at::randn({C}, gen, opts).requires_grad_();
  const at::Tensor probe = at::randn({B, T, C}, gen, opts);
  const at::Tensor y = layer_norm ? at::layer_norm(x, {C}, weight, bias, eps) : nn::rms_norm(x, weight, eps);
  (y * probe).sum().backward();
  const at::Tensor X = x.detach(), Wt = weight.detach(), Bs = bias.detach(), Y = y.detach();

  run_grid(q * q, [&](Grid2d& grid, int r) {
    auto leaf = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(); };
    const at::Tensor lx = leaf(activation_block_2d(X, 0, grid));
    const at::Tensor lw = leaf(vector_piece_2d(Wt, grid)), lb = leaf(vector_piece_2d(Bs, grid));
    const at::Tensor ly = layer_norm ? layer_norm_2d(lx, lw, lb, eps, grid) : rms_norm_2d(lx, lw, eps, grid);
    EXPECT_LT(test::rel_diff(ly, activation_block_2d(Y, 0, grid)), kTol) << "rank " << r << " y";
    (ly * activation_block_2d(probe, 0, grid)).sum().backward();
    EXPECT_LT(test::rel_diff(lx.grad(), activation_block_2d(x.grad(), 0, grid)), kTol) << "rank " << r << " dx";
    EXPECT_LT(test::rel_diff(lw.grad(), vector_piece_2d(weight.grad(), grid)), kTol) << "rank " << r << " dweight";
    if (layer_norm) {
      EXPECT_LT(test::rel_diff(lb.grad(), vector_piece_2d(bias.grad(), grid)), kTol) << "rank " << r << " dbias";
    }

    // Per token of the rank's n = (B/q)·T, e = 8 bytes: forward all-reduces of the row's partial sums — Σx and
    // Σ(x−μ)² for LayerNorm, Σx² for RMSNorm — each 2(q−1)/q·n·e; backward one of (Σg·x̂, Σg) (RMSNorm: Σg·x̂).
    // The affine pieces: one all-gather of the column's (2 or 1)·C/q elements, and its reduce-scatter backward.
    const dist::Ledger& ledger = grid.all().ledger();
    const int64_t n = (B / q) * T, e = 8, stats = layer_norm ? 2 : 1, affine = layer_norm ? 2 : 1;
    using dist::Phase;
    EXPECT_EQ(ledger.calls("tp_row", "all_reduce", Phase::kForward), stats);
    EXPECT_EQ(ledger.bytes("tp_row", "all_reduce", Phase::kForward), stats * 2 * (q - 1) * n * e / q);
    EXPECT_EQ(ledger.calls("tp_row", "all_reduce", Phase::kBackward), 1);
    EXPECT_EQ(ledger.bytes("tp_row", "all_reduce", Phase::kBackward), 2 * (q - 1) * stats * n * e / q);
    EXPECT_EQ(ledger.bytes("tp_col", "all_gather", Phase::kForward), (q - 1) * affine * (C / q) * e / q);
    EXPECT_EQ(ledger.bytes("tp_col", "reduce_scatter", Phase::kBackward), (q - 1) * affine * (C / q) * e / q);
  });
}

TEST(TensorParallel2d, LayerNormMatchesOneProcess) { check_norm(true); }
TEST(TensorParallel2d, RmsNormMatchesOneProcess) { check_norm(false); }

// The whole model under tensor_parallel_2d on a 2 × 2 grid against one process (fp32, as the 1D test;
// tests/parallel/grid_model.h). The vocabulary (37) does not divide by q, so the table's padding is exercised; LLaMA
// has grouped-query attention (4 heads, 2 key/value heads) and an untied head, GPT-2 a tied one, biases and a
// position table.
void check_model(const std::string& arch) {
  const int q = 2;
  test::check_model_on_grid<Grid2d>(
      arch, nn::TpLayout(q * q, true), /*batch=*/4,
      [](Grid2d& grid, int64_t vocab) { return tensor_parallel_2d(grid, vocab); },
      [q](Grid2d& grid, int, const nn::ParamSpec& spec, const at::Tensor& whole, const at::Tensor& piece) {
        // The placements are the blocks the 2D layers compute on (ungrouped, unpadded ones: the same slicing).
        const bool matrix = spec.shape.size() == 2 && spec.tp_dim >= 0;
        if (matrix && spec.tp_groups == 1 && spec.shape[0] % q == 0) {
          EXPECT_TRUE(at::equal(piece, weight_block_2d(whole, grid))) << spec.name;
        }
        if (spec.shape.size() == 1 && spec.tp_groups == 1) {
          EXPECT_TRUE(at::equal(piece, vector_piece_2d(whole, grid))) << spec.name;
        }
      });
}

TEST(TensorParallel2d, GptMatchesOneProcess) { check_model("gpt2"); }
TEST(TensorParallel2d, LlamaWithGroupedQueryAttentionMatchesOneProcess) { check_model("llama"); }

}  // namespace
}  // namespace kolos::parallel::tensor
