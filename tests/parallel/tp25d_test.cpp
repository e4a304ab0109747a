// 2.5D tensor parallelism (src/kolos/parallel/tensor/tp25d.h) against one process: two chained Linears, LayerNorm
// and RMSNorm on d layers of a q × q grid (thread ranks), each rank holding its blocks of the same whole tensors;
// outputs and every gradient must be that rank's block of the one-process result. fp64 unless bytes are counted or
// the whole model runs (GPT-2 and LLaMA under tensor_parallel_25d, fp32).
#include "kolos/parallel/tensor/tp25d.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/nn/layers.h"
#include "tests/dist/thread_ranks.h"
#include "tests/parallel/grid_model.h"
#include "tests/support.h"

namespace kolos::parallel::tensor {
namespace {

constexpr double kTol = 1e-10;  // fp64: only the order of the sums differs from one process
using test::rel_diff;

void run_grid(int t, int d, const std::function<void(Grid25d&, int)>& body) {
  test::run_grid_ranks<Grid25d>(t, body, d);
}

TEST(TensorParallel25d, GridPlacesLayersThenRowsAndColumns) {
  run_grid(8, 2, [](Grid25d& grid, int r) {
    EXPECT_EQ(grid.q(), 2);
    EXPECT_EQ(grid.depth_index(), r / 4);
    EXPECT_EQ(grid.layer().row_index(), (r % 4) / 2);
    EXPECT_EQ(grid.layer().col_index(), r % 2);
    EXPECT_EQ(grid.depth_group().axis(), "tp_depth");
    // The depth group of rank r holds r % 4 and 4 + r % 4.
    at::Tensor sum = at::full({1}, static_cast<double>(r), at::kDouble);
    grid.depth_group().all_reduce(sum);
    EXPECT_EQ(sum.item<double>(), 2 * (r % 4) + 4);
  });
  EXPECT_THROW(run_grid(6, 2, [](Grid25d&, int) {}), InputError);  // 3 ranks per layer: not q²
  EXPECT_THROW(run_grid(4, 3, [](Grid25d&, int) {}), InputError);  // 4 is not a multiple of 3
}

// h = X·W1ᵀ + b1, y = LayerNorm(h)·W2ᵀ + b2 (or RMSNorm); X: (B, T, C), the batch split d·q ways.
void check_block(int q, int d, bool layer_norm) {
  const int64_t B = 2 * d * q, T = 3, C = 4 * q, F = 3 * q * q;
  const double eps = 1e-5;
  auto gen = at::detail::createCPUGenerator(11);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto leaf_of = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(); };
  const at::Tensor x = leaf_of(at::randn({B, T, C}, gen, opts));
  const at::Tensor w1 = leaf_of(at::randn({F, C}, gen, opts)), b1 = leaf_of(at::randn({F}, gen, opts));
  const at::Tensor g = leaf_of(at::randn({F}, gen, opts) + 1.0), beta = leaf_of(at::randn({F}, gen, opts));
  const at::Tensor w2 = leaf_of(at::randn({C, F}, gen, opts)), b2 = leaf_of(at::randn({C}, gen, opts));
  const at::Tensor probe = at::randn({B, T, C}, gen, opts);
  const at::Tensor h = at::linear(x, w1, b1);
  const at::Tensor n = layer_norm ? at::layer_norm(h, {F}, g, beta, eps) : nn::rms_norm(h, g, eps);
  const at::Tensor y = at::linear(n, w2, b2);
  (y * probe).sum().backward();

  run_grid(d * q * q, d, [&](Grid25d& grid, int r) {
    Grid2d& layer = grid.layer();
    const at::Tensor lx = leaf_of(activation_block_25d(x.detach(), 0, grid));
    const at::Tensor lw1 = leaf_of(weight_block_2d(w1.detach(), layer)), lb1 = leaf_of(vector_piece_2d(b1.detach(), layer));
    const at::Tensor lg = leaf_of(vector_piece_2d(g.detach(), layer)), lbeta = leaf_of(vector_piece_2d(beta.detach(), layer));
    const at::Tensor lw2 = leaf_of(weight_block_2d(w2.detach(), layer)), lb2 = leaf_of(vector_piece_2d(b2.detach(), layer));
    EXPECT_EQ(lx.sizes(), (std::vector<int64_t>{B / (d * q), T, C / q}));  // 1/(d·q²) of the activation
    EXPECT_EQ(lw1.numel() * q * q, w1.numel());                             // 1/q² of the weight
    const at::Tensor lh = linear_25d(lx, lw1, lb1, grid);
    const at::Tensor ln = layer_norm ? layer_norm_25d(lh, lg, lbeta, eps, grid) : rms_norm_25d(lh, lg, eps, grid);
    const at::Tensor ly = linear_25d(ln, lw2, lb2, grid);
    EXPECT_LT(rel_diff(ly, activation_block_25d(y.detach(), 0, grid)), kTol) << "rank " << r << " y";
    (ly * activation_block_25d(probe, 0, grid)).sum().backward();
    EXPECT_LT(rel_diff(lx.grad(), activation_block_25d(x.grad(), 0, grid)), kTol) << "rank " << r << " dx";
    // Parameter gradients: the whole model's (every layer's tokens), the same on each depth layer.
    EXPECT_LT(rel_diff(lw1.grad(), weight_block_2d(w1.grad(), layer)), kTol) << "rank " << r << " dW1";
    EXPECT_LT(rel_diff(lb1.grad(), vector_piece_2d(b1.grad(), layer)), kTol) << "rank " << r << " db1";
    EXPECT_LT(rel_diff(lg.grad(), vector_piece_2d(g.grad(), layer)), kTol) << "rank " << r << " dg";
    if (layer_norm) {
      EXPECT_LT(rel_diff(lbeta.grad(), vector_piece_2d(beta.grad(), layer)), kTol) << "rank " << r << " dbeta";
    }
    EXPECT_LT(rel_diff(lw2.grad(), weight_block_2d(w2.grad(), layer)), kTol) << "rank " << r << " dW2";
    EXPECT_LT(rel_diff(lb2.grad(), vector_piece_2d(b2.grad(), layer)), kTol) << "rank " << r << " db2";
  });
}

TEST(TensorParallel25d, LinearsAndLayerNormMatchOneProcess) { check_block(2, 2, true); }
TEST(TensorParallel25d, LinearsAndRmsNormMatchOneProcess) { check_block(2, 2, false); }

// Bytes one rank moves for one Linear Y = X·Wᵀ + b in fp32 (e = 4), X: (N tokens, C), W: (F, C), depth d, q × q
// layers. Within the layer, 2D's SUMMA on the layer's N/d tokens (derivation in tp2d_test.cpp): forward
// q·(|X| + |A|)·e in broadcasts plus the bias gather (q−1)/q·(F/q)·e, backward twice the broadcasts plus the bias
// reduce-scatter, with |X| = (N/d)/q·C/q and |A| = (F/q)·(C/q). Along the depth, backward only: one all-reduce of
// dW's block (|A|) and one of db's piece (F/q²), each 2(d−1)/d of its bytes (the ledger's ring convention).
// N = 16, C = 8, F = 8, q = d = 2: |X| = 16, |A| = 16, bias 8 bytes; depth 2·1/2·(16 + 2)·4 = 72 bytes.
TEST(TensorParallel25d, LedgerCountsLayerAndDepthBytes) {
  const int q = 2, d = 2;
  const int64_t B = 8, T = 2, C = 8, F = 8, e = 4, N = B * T;
  auto gen = at::detail::createCPUGenerator(13);
  const at::Tensor x = at::randn({B, T, C}, gen), w = at::randn({F, C}, gen), b = at::randn({F}, gen);
  run_grid(d * q * q, d, [&](Grid25d& grid, int r) {
    const at::Tensor lx = activation_block_25d(x, 0, grid).requires_grad_();
    const at::Tensor lw = weight_block_2d(w, grid.layer()).requires_grad_();
    const at::Tensor lb = vector_piece_2d(b, grid.layer()).requires_grad_();
    dist::Ledger& ledger = grid.all().ledger();
    ledger.reset();
    const at::Tensor y = linear_25d(lx, lw, lb, grid);
    const int64_t X = (N / d / q) * (C / q), A = (F / q) * (C / q), bias = (q - 1) * (F / q) * e / q;
    EXPECT_EQ(X, 16);
    EXPECT_EQ(ledger.total_bytes(), q * (X + A) * e + bias) << "rank " << r << ": " << ledger.to_json().dump();
    y.sum().backward();
    using dist::Phase;
    const int64_t depth = 2 * (d - 1) * (A + F / (q * q)) * e / d;
    EXPECT_EQ(depth, 72);
    EXPECT_EQ(ledger.calls("tp_depth", "all_reduce", Phase::kBackward), 2) << "rank " << r;
    EXPECT_EQ(ledger.bytes("tp_depth", "all_reduce", Phase::kBackward), depth) << "rank " << r;
    EXPECT_EQ(ledger.total_bytes(), 3 * q * (X + A) * e + 2 * bias + depth)
        << "rank " << r << ": " << ledger.to_json().dump();
  });
}

// The whole model under tensor_parallel_25d on 2 layers of a 2 × 2 grid against one process (fp32, as the 2D test;
// tests/parallel/grid_model.h): each layer holds the 2D pieces (nn::TpLayout with depth 2) and computes on half the
// batch, the depth all-reduce sums the layers' gradients. The pieces unshard from all 8 ranks' and from depth 0's
// alone, and only depth 0's count in the gradient norm. Vocabulary 37 (padded), LLaMA with grouped-query attention
// and an untied head, GPT-2 with a tied one, biases and a position table.
void check_model(const std::string& arch) {
  const int q = 2, d = 2;
  const nn::TpLayout layout(d * q * q, true, d);
  test::check_model_on_grid<Grid25d>(
      arch, layout, /*batch=*/8,  // 2 sequences per row block
      [](Grid25d& grid, int64_t vocab) { return tensor_parallel_25d(grid, vocab); },
      [&](Grid25d&, int r, const nn::ParamSpec& spec, const at::Tensor& whole, const at::Tensor& piece) {
        EXPECT_TRUE(at::equal(piece, nn::shard_param(whole, spec, nn::TpLayout(q * q, true), r % (q * q))))
            << "rank " << r << " " << spec.name << ": each layer holds the 2D pieces";
        std::vector<at::Tensor> layer0;
        for (int p = 0; p < q * q; ++p) layer0.push_back(nn::shard_param(whole, spec, layout, p));
        EXPECT_TRUE(at::equal(nn::unshard_param(layer0, spec, layout), whole)) << spec.name << ": depth 0 alone";
      },
      d);
  for (int r = 0; r < layout.parts; ++r) EXPECT_EQ(layout.counts_pieces(r), r < q * q) << r;
}

TEST(TensorParallel25d, GptMatchesOneProcess) { check_model("gpt2"); }
TEST(TensorParallel25d, LlamaWithGroupedQueryAttentionMatchesOneProcess) { check_model("llama"); }

}  // namespace
}  // namespace kolos::parallel::tensor
