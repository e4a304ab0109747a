// 3D tensor parallelism (src/kolos/parallel/tensor/tp3d.h) against one process: two chained Linears (the first with
// K axis y, the second z, so one's output piece is the next one's input piece) on a 2 × 2 × 2 cube of thread
// ranks, each holding its pieces of the same whole tensors; outputs and every gradient must be that rank's piece of
// the one-process result. fp64 unless bytes are counted or the whole model runs. Then the norms, and GPT-2 and
// LLaMA under tensor_parallel_3d against one process (tests/parallel/grid_model.h).
#include "kolos/parallel/tensor/tp3d.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/nn/layers.h"
#include "tests/dist/thread_ranks.h"
#include "tests/support.h"
#include "tests/parallel/grid_model.h"

namespace kolos::parallel::tensor {
namespace {

constexpr double kTol = 1e-10;  // fp64: only the order of the sums differs from one process
using test::rel_diff;

void run_cube(int t, const std::function<void(Grid3d&, int)>& body) { test::run_grid_ranks<Grid3d>(t, body); }

TEST(TensorParallel3d, CubePlacesRanksAndLines) {
  run_cube(8, [](Grid3d& grid, int r) {
    EXPECT_EQ(grid.q(), 2);
    EXPECT_EQ(grid.coord(Grid3d::kX), r / 4);
    EXPECT_EQ(grid.coord(Grid3d::kY), (r / 2) % 2);
    EXPECT_EQ(grid.coord(Grid3d::kZ), r % 2);
    EXPECT_EQ(grid.line(Grid3d::kX).axis(), "tp_x");
    // The x line of r holds r % 4 and 4 + r % 4; the y line r and r ^ 2; the z line r and r ^ 1.
    const int want[3] = {2 * (r % 4) + 4, r + (r ^ 2), r + (r ^ 1)};
    for (int a = 0; a < 3; ++a) {
      at::Tensor sum = at::full({1}, static_cast<double>(r), at::kDouble);
      grid.line(static_cast<Grid3d::Axis>(a)).all_reduce(sum);
      EXPECT_EQ(sum.item<double>(), want[a]) << "rank " << r << " axis " << a;
    }
  });
  EXPECT_THROW(run_cube(4, [](Grid3d&, int) {}), InputError);  // 4 is not q³
}

TEST(TensorParallel3d, ChainedLinearsMatchOneProcess) {
  const int q = 2;
  const int64_t B = 8, T = 3, C = 8, F = 16;  // the biases split into q³ pieces
  auto gen = at::detail::createCPUGenerator(17);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto leaf_of = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(); };
  const at::Tensor x = leaf_of(at::randn({B, T, C}, gen, opts));
  const at::Tensor w1 = leaf_of(at::randn({F, C}, gen, opts)), b1 = leaf_of(at::randn({F}, gen, opts));
  const at::Tensor w2 = leaf_of(at::randn({C, F}, gen, opts)), b2 = leaf_of(at::randn({C}, gen, opts));
  const at::Tensor probe = at::randn({B, T, C}, gen, opts);
  const at::Tensor h = at::linear(x, w1, b1);
  const at::Tensor y = at::linear(h, w2, b2);
  (y * probe).sum().backward();

  run_cube(q * q * q, [&](Grid3d& grid, int r) {
    const auto ky = Grid3d::kY, kz = Grid3d::kZ;
    const at::Tensor lx = leaf_of(input_block_3d(x.detach(), ky, grid));
    const at::Tensor lw1 = leaf_of(weight_block_3d(w1.detach(), ky, grid)), lb1 = leaf_of(vector_piece_3d(b1.detach(), ky, grid));
    const at::Tensor lw2 = leaf_of(weight_block_3d(w2.detach(), kz, grid)), lb2 = leaf_of(vector_piece_3d(b2.detach(), kz, grid));
    EXPECT_EQ(lx.numel() * q * q * q, x.numel());    // 1/q³ of the activation
    EXPECT_EQ(lw1.numel() * q * q * q, w1.numel());  // 1/q³ of the weight
    const at::Tensor lh = linear_3d(lx, lw1, lb1, ky, grid);
    EXPECT_LT(rel_diff(lh, output_block_3d(h.detach(), ky, grid)), kTol) << "rank " << r << " h";
    const at::Tensor ly = linear_3d(lh, lw2, lb2, kz, grid);
    EXPECT_LT(rel_diff(ly, output_block_3d(y.detach(), kz, grid)), kTol) << "rank " << r << " y";
    (ly * output_block_3d(probe, kz, grid)).sum().backward();
    EXPECT_LT(rel_diff(lx.grad(), input_block_3d(x.grad(), ky, grid)), kTol) << "rank " << r << " dx";
    EXPECT_LT(rel_diff(lw1.grad(), weight_block_3d(w1.grad(), ky, grid)), kTol) << "rank " << r << " dW1";
    EXPECT_LT(rel_diff(lb1.grad(), vector_piece_3d(b1.grad(), ky, grid)), kTol) << "rank " << r << " db1";
    EXPECT_LT(rel_diff(lw2.grad(), weight_block_3d(w2.grad(), kz, grid)), kTol) << "rank " << r << " dW2";
    EXPECT_LT(rel_diff(lb2.grad(), vector_piece_3d(b2.grad(), kz, grid)), kTol) << "rank " << r << " db2";
  });
}

// Bytes one rank moves for one Linear Y = X·Wᵀ (no bias) in fp32 (e = 4), X: (N tokens, C), W: (F, C), K axis y,
// q = 2. The ledger counts an all-gather or reduce-scatter of a whole of M bytes as (q−1)/q·M on every rank.
//   forward   all-gather X's tokens pieces along z (N axis) into X[x, k]: |X| = (N/q)·(C/q) elements
//             all-gather W's in pieces along x into W[n, k]:                |W| = (F/q)·(C/q)
//             reduce-scatter the partial product along y (K axis):          |Y| = (N/q)·(F/q)
//   backward  all-gather dY along y (|Y|), X along z (|X|) and W along x (|W|) again (forward keeps only the
//             rank's pieces), reduce-scatter dX's partial along z (|X|), dW's along x (|W|)
// N = 16, C = 8, F = 12: |X| = 32, |W| = 24, |Y| = 48; forward (32 + 24 + 48)·4/2 = 208 bytes, backward
// (2·32 + 2·24 + 48)·4/2 = 320.
TEST(TensorParallel3d, LedgerCountsGathersAndReduceScatters) {
  const int q = 2;
  const int64_t B = 8, T = 2, C = 8, F = 12, e = 4, N = B * T;
  auto gen = at::detail::createCPUGenerator(19);
  const at::Tensor x = at::randn({B, T, C}, gen), w = at::randn({F, C}, gen);
  run_cube(q * q * q, [&](Grid3d& grid, int r) {
    const at::Tensor lx = input_block_3d(x, Grid3d::kY, grid).requires_grad_();
    const at::Tensor lw = weight_block_3d(w, Grid3d::kY, grid).requires_grad_();
    dist::Ledger& ledger = grid.all().ledger();
    ledger.reset();
    const at::Tensor y = linear_3d(lx, lw, at::Tensor(), Grid3d::kY, grid);
    const int64_t X = (N / q) * (C / q), W = (F / q) * (C / q), Y = (N / q) * (F / q);
    using dist::Phase;
    const Phase fw = Phase::kForward, bw = Phase::kBackward;
    EXPECT_EQ(ledger.bytes("tp_z", "all_gather", fw), (q - 1) * X * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_x", "all_gather", fw), (q - 1) * W * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_y", "reduce_scatter", fw), (q - 1) * Y * e / q) << "rank " << r;
    EXPECT_EQ(ledger.total_bytes(), 208) << "rank " << r << ": " << ledger.to_json().dump();
    y.sum().backward();
    EXPECT_EQ(ledger.bytes("tp_y", "all_gather", bw), (q - 1) * Y * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_z", "all_gather", bw), (q - 1) * X * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_x", "all_gather", bw), (q - 1) * W * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_z", "reduce_scatter", bw), (q - 1) * X * e / q) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_x", "reduce_scatter", bw), (q - 1) * W * e / q) << "rank " << r;
    EXPECT_EQ(ledger.total_bytes(), 208 + 320) << "rank " << r << ": " << ledger.to_json().dump();
  });
}

// LayerNorm and RMSNorm of the residual stream (features split along y; weight and bias pieces of a K = z vector)
// against at::layer_norm / nn::rms_norm in fp64, values and every gradient.
void check_norm(bool layer) {
  const int q = 2;
  const int64_t B = 8, T = 3, C = 16;
  const double eps = 1e-5;
  auto gen = at::detail::createCPUGenerator(23);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto leaf_of = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(); };
  const at::Tensor x = leaf_of(2.0 * at::randn({B, T, C}, gen, opts) + 0.5);
  const at::Tensor w = leaf_of(1.0 + 0.2 * at::randn({C}, gen, opts)), b = leaf_of(0.2 * at::randn({C}, gen, opts));
  const at::Tensor probe = at::randn({B, T, C}, gen, opts);
  const at::Tensor y = layer ? at::layer_norm(x, {C}, w, b, eps) : nn::rms_norm(x, w, eps);
  (y * probe).sum().backward();
  run_cube(q * q * q, [&](Grid3d& grid, int r) {
    const auto ky = Grid3d::kY, kz = Grid3d::kZ;
    const at::Tensor lx = leaf_of(input_block_3d(x.detach(), ky, grid));  // the residual stream's block
    const at::Tensor lw = leaf_of(vector_piece_3d(w.detach(), kz, grid)), lb = leaf_of(vector_piece_3d(b.detach(), kz, grid));
    EXPECT_EQ(lw.numel() * q * q * q, C);
    const at::Tensor ly = layer ? layer_norm_3d(lx, lw, lb, eps, grid) : rms_norm_3d(lx, lw, eps, grid);
    EXPECT_LT(rel_diff(ly, input_block_3d(y.detach(), ky, grid)), kTol) << "rank " << r;
    (ly * input_block_3d(probe, ky, grid)).sum().backward();
    EXPECT_LT(rel_diff(lx.grad(), input_block_3d(x.grad(), ky, grid)), kTol) << "rank " << r << " dx";
    EXPECT_LT(rel_diff(lw.grad(), vector_piece_3d(w.grad(), kz, grid)), kTol) << "rank " << r << " dw";
    if (layer) EXPECT_LT(rel_diff(lb.grad(), vector_piece_3d(b.grad(), kz, grid)), kTol) << "rank " << r << " db";
  });
}

TEST(TensorParallel3d, LayerNormMatchesOneProcess) { check_norm(true); }
TEST(TensorParallel3d, RmsNormMatchesOneProcess) { check_norm(false); }

// The whole model on a 2 × 2 × 2 cube; the placements of the (ungrouped, unpadded) matrices and vectors are the
// pieces the 3D layers compute on: K axis y for tp_dim 0, z otherwise.
void check_model(const std::string& arch) {
  const int q = 2;
  test::check_model_on_grid<Grid3d>(
      arch, nn::TpLayout(q * q * q, true, /*depth=*/1, /*cube=*/true), /*batch=*/4,
      [](Grid3d& grid, int64_t vocab) { return tensor_parallel_3d(grid, vocab); },
      [q](Grid3d& grid, int, const nn::ParamSpec& spec, const at::Tensor& whole, const at::Tensor& piece) {
        const auto k = spec.tp_dim == 0 ? Grid3d::kY : Grid3d::kZ;
        const bool matrix = spec.shape.size() == 2 && spec.tp_dim >= 0;
        if (matrix && spec.tp_groups == 1 && spec.shape[0] % q == 0) {
          EXPECT_TRUE(at::equal(piece, weight_block_3d(whole, k, grid))) << spec.name;
        }
        if (spec.shape.size() == 1 && spec.tp_groups == 1) {
          EXPECT_TRUE(at::equal(piece, vector_piece_3d(whole, k, grid))) << spec.name;
        }
      });
}

TEST(TensorParallel3d, GptMatchesOneProcess) { check_model("gpt2"); }
TEST(TensorParallel3d, LlamaWithGroupedQueryAttentionMatchesOneProcess) { check_model("llama"); }

}  // namespace
}  // namespace kolos::parallel::tensor
