// The regions of tensor/sequence parallelism (src/kolos/parallel/tensor/regions.h) against references computed here
// from every rank's inputs: each forward value, each gradient (loss_r = Σ y_r · w_r with a different w_r per rank,
// so a wrong backward shows), and the ledger phase of each collective. Ranks are threads (tests/dist/thread_ranks.h).
#include "kolos/parallel/tensor/regions.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/dist/thread_ranks.h"

namespace kolos::parallel::tensor {
namespace {

at::Tensor randn(at::IntArrayRef shape, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::kDouble);
}

std::vector<at::Tensor> per_rank(int n, at::IntArrayRef shape, uint64_t seed) {
  std::vector<at::Tensor> out;
  for (int r = 0; r < n; ++r) out.push_back(randn(shape, seed * 100 + r));
  return out;
}

at::Tensor sum_of(const std::vector<at::Tensor>& xs) { return at::stack(xs).sum(0); }

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::allclose(got, want, 1e-12, 1e-12)) << what << ": max |diff| " << (got - want).abs().max().item<double>();
}

using Region = std::function<at::Tensor(const at::Tensor&, dist::Comm&)>;

// Runs y_r = region(x_r) on n thread ranks and backward of Σ y_r · w_r; returns (y_r, dL/dx_r) per rank and checks the
// ledger: `forward_ops` and `backward_ops` collectives in those phases.
struct Outcome {
  std::vector<at::Tensor> y, grad;
};
Outcome run(int n, const std::vector<at::Tensor>& x, const std::vector<at::Tensor>& w, const Region& region,
            int forward_ops, int backward_ops) {
  Outcome out{std::vector<at::Tensor>(n), std::vector<at::Tensor>(n)};
  test::run_thread_ranks(
      n,
      [&](dist::Comm& comm, int r) {
        at::Tensor xr = x[r].clone().requires_grad_(true);
        at::Tensor y = region(xr, comm);
        ASSERT_EQ(y.sizes(), w[r].sizes());
        (y * w[r]).sum().backward();
        out.y[r] = y.detach().clone();
        out.grad[r] = xr.grad().clone();
        int64_t fwd = 0, bwd = 0;
        for (const char* op : {"all_reduce", "all_gather", "reduce_scatter", "all_to_all"}) {
          fwd += comm.ledger().calls("tp", op, dist::Phase::kForward);
          bwd += comm.ledger().calls("tp", op, dist::Phase::kBackward);
        }
        EXPECT_EQ(fwd, forward_ops);
        EXPECT_EQ(bwd, backward_ops);
      },
      std::chrono::seconds(20), 0, "tp");
  return out;
}

class RegionsTest : public ::testing::TestWithParam<int> {};

TEST_P(RegionsTest, CopyToIsIdentityForwardAllReduceBackward) {
  const int n = GetParam();
  const at::Tensor x = randn({3, 8}, 1);
  auto w = per_rank(n, {3, 8}, 2);
  auto o = run(n, std::vector<at::Tensor>(n, x), w, copy_to, 0, 1);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], x, "y");
    expect_close(o.grad[r], sum_of(w), "grad");
  }
}

TEST_P(RegionsTest, ReduceFromIsAllReduceForwardIdentityBackward) {
  const int n = GetParam();
  auto x = per_rank(n, {3, 8}, 3), w = per_rank(n, {3, 8}, 4);
  auto o = run(n, x, w, reduce_from, 1, 0);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], sum_of(x), "y");
    expect_close(o.grad[r], w[r], "grad");
  }
}

TEST_P(RegionsTest, SplitAndGatherAreDuals) {
  const int n = GetParam();
  const at::Tensor x = randn({2, 8, 3}, 5);
  auto w = per_rank(n, {2, 8 / n, 3}, 6);
  auto o = run(n, std::vector<at::Tensor>(n, x), w, [](const at::Tensor& t, dist::Comm& c) { return split(t, 1, c); },
               0, 1);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], x.chunk(n, 1)[r], "split y");
    expect_close(o.grad[r], at::cat(w, 1), "split grad");
  }
  auto xs = per_rank(n, {2, 3, 4}, 7);
  const at::Tensor W = randn({2, 3 * n, 4}, 8);  // what a replicated consumer would send back
  o = run(n, xs, std::vector<at::Tensor>(n, W), [](const at::Tensor& t, dist::Comm& c) { return gather(t, -2, c); }, 1,
          0);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], at::cat(xs, 1), "gather y");
    expect_close(o.grad[r], W.chunk(n, 1)[r], "gather grad");
  }
}

TEST_P(RegionsTest, GatherReduceScatterAndScatterAreDuals) {
  const int n = GetParam();
  auto x = per_rank(n, {4, 2, 3}, 9), w = per_rank(n, {4 * n, 2, 3}, 10);
  auto o = run(n, x, w, [](const at::Tensor& t, dist::Comm& c) { return gather_rs(t, 0, c); }, 1, 1);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], at::cat(x, 0), "gather_rs y");
    expect_close(o.grad[r], sum_of(w).chunk(n, 0)[r], "gather_rs grad");
  }
  auto xs = per_rank(n, {2, 4 * n, 3}, 11), ws = per_rank(n, {2, 4, 3}, 12);
  o = run(n, xs, ws, [](const at::Tensor& t, dist::Comm& c) { return scatter(t, 1, c); }, 1, 1);
  for (int r = 0; r < n; ++r) {
    expect_close(o.y[r], sum_of(xs).chunk(n, 1)[r], "scatter y");
    expect_close(o.grad[r], at::cat(ws, 1), "scatter grad");
  }
}

// Ulysses: (B, T/n, H, D) sequence-split → (B, T, H/n, D) head-split and back.
TEST_P(RegionsTest, AllToAllMovesTheSplitBetweenDimensions) {
  const int n = GetParam();
  auto x = per_rank(n, {2, 3, 4 * n, 5}, 13);  // (B, T/n, H, D); scatter heads (2), gather sequence (1)
  auto w = per_rank(n, {2, 3 * n, 4, 5}, 14);
  auto o = run(n, x, w, [](const at::Tensor& t, dist::Comm& c) { return all_to_all(t, 2, 1, c); }, 1, 1);
  for (int r = 0; r < n; ++r) {
    std::vector<at::Tensor> pieces, grads;
    for (int j = 0; j < n; ++j) pieces.push_back(x[j].chunk(n, 2)[r]);
    expect_close(o.y[r], at::cat(pieces, 1), "all_to_all y");
    for (int q = 0; q < n; ++q) grads.push_back(w[q].chunk(n, 1)[r]);
    expect_close(o.grad[r], at::cat(grads, 2), "all_to_all grad");
  }
}

INSTANTIATE_TEST_SUITE_P(Regions, RegionsTest, ::testing::Values(2, 4), [](const auto& info) {
  return std::to_string(info.param) + "ranks";
});

}  // namespace
}  // namespace kolos::parallel::tensor
