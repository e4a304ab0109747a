// Sequence-parallel attention (src/kolos/parallel/sequence/) against one process: causal attention over the whole
// sequence in float64 (grouped-query: 4 query heads, 2 key/value heads), then each rank's rows of the output and of
// the gradients of Σ out·w (w random) with respect to q, k and v. Ring attention with the zig-zag assignment of
// blocks, Ulysses with contiguous slices; p = 2 and 4. Also the ring's point-to-point volume.
// Ranks are threads (tests/dist/thread_ranks.h).
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"
#include "kolos/config/config.h"
#include "kolos/models/model.h"
#include "kolos/parallel/sequence/ring.h"
#include "kolos/parallel/sequence/sequence.h"
#include "kolos/parallel/sequence/ulysses.h"
#include "tests/dist/thread_ranks.h"
#include "tests/models/small_models.h"

namespace kolos::parallel::sequence {
namespace {

struct Case {
  at::Tensor q, k, v, w;                  // whole: q, w (B, H, T, D); k, v (B, KV, T, D)
  at::Tensor out, dq, dk, dv;             // the one-process reference
};

Case make_case(int64_t T, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t B = 2, H = 4, KV = 2, D = 8;  // grouped-query: each key/value head serves two query heads
  Case c;
  c.q = at::randn({B, H, T, D}, gen, at::kDouble);
  c.k = at::randn({B, KV, T, D}, gen, at::kDouble);
  c.v = at::randn({B, KV, T, D}, gen, at::kDouble);
  c.w = at::randn({B, H, T, D}, gen, at::kDouble);
  at::Tensor q = c.q.clone().requires_grad_(true), k = c.k.clone().requires_grad_(true),
             v = c.v.clone().requires_grad_(true);
  // Small blocks so that the kernel's block loop and masking are exercised at this length too.
  c.out = nn::causal_attention(q, k, v, 4);
  (c.out * c.w).sum().backward();
  c.out = c.out.detach();
  c.dq = q.grad();
  c.dk = k.grad();
  c.dv = v.grad();
  return c;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::allclose(got, want, 1e-10, 1e-10)) << what << ": max |diff| "
                                                     << (got - want).abs().max().item<double>();
}

using Attention = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, dist::Comm&)>;

// Bytes each rank must move in forward and in backward (0: not checked): `sent` point to point, `exchanged` in
// all-to-alls (the ledger's algorithmic bytes: the (p − 1)/p of the input that leaves the rank).
struct Volume {
  int64_t sent_forward = 0, sent_backward = 0, exchanged = 0;
};

void check(int p, int64_t T, const std::function<at::Tensor(int)>& positions_of, const Attention& attention,
           Volume volume = {}) {
  const Case c = make_case(T, 3 + p);
  test::run_thread_ranks(
      p,
      [&](dist::Comm& comm, int r) {
        const at::Tensor pos = positions_of(r);
        auto mine = [&](const at::Tensor& x) { return x.index_select(2, pos); };
        at::Tensor q = mine(c.q).requires_grad_(true), k = mine(c.k).requires_grad_(true),
                   v = mine(c.v).requires_grad_(true);
        at::Tensor out = attention(q, k, v, comm);
        const auto& ledger = comm.ledger();
        if (volume.sent_forward > 0) {
          EXPECT_EQ(ledger.bytes("sp", "send", dist::Phase::kForward), volume.sent_forward);
        }
        if (volume.exchanged > 0) {
          EXPECT_EQ(ledger.bytes("sp", "all_to_all", dist::Phase::kForward), volume.exchanged);
        }
        (out * mine(c.w)).sum().backward();
        if (volume.sent_backward > 0) {
          EXPECT_EQ(ledger.bytes("sp", "send", dist::Phase::kBackward), volume.sent_backward);
        }
        if (volume.exchanged > 0) {
          EXPECT_EQ(ledger.bytes("sp", "all_to_all", dist::Phase::kBackward), volume.exchanged);
        }
        expect_close(out.detach(), mine(c.out), "out");
        expect_close(q.grad(), mine(c.dq), "dq");
        expect_close(k.grad(), mine(c.dk), "dk");
        expect_close(v.grad(), mine(c.dv), "dv");
      },
      std::chrono::seconds(30), 0, "sp");
}

class SequenceParallelTest : public ::testing::TestWithParam<int> {};

// The keys and values travel with their KV heads: forward sends 2·(p − 1)·B·(T/p)·KV·D elements per rank
// (yardsticks, "Ring attention"). Backward (yardsticks: ≈ twice that) sends the keys and values round again (p − 1
// shifts) and the gradient accumulators with them, which take one more shift to get home: (4p − 2)·B·(T/p)·KV·D.
TEST_P(SequenceParallelTest, RingAttentionZigZagMatchesOneProcess) {
  const int p = GetParam();
  const int64_t T = 8 * p, B = 2, KV = 2, D = 8;
  EXPECT_TRUE(at::equal(zigzag_positions(8, 2, 0), at::tensor({0, 1, 6, 7}, at::kLong)));
  EXPECT_TRUE(at::equal(zigzag_positions(8, 2, 1), at::tensor({2, 3, 4, 5}, at::kLong)));
  check(p, T, [&](int r) { return zigzag_positions(T, p, r); },
        [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& c) {
          return ring_attention(q, k, v, c);
        },
        {2 * (p - 1) * B * (T / p) * KV * D * 8, (4 * p - 2) * B * (T / p) * KV * D * 8});
}

// Ulysses (yardsticks, "Ulysses"): per rank, forward all-to-alls its slice of q and the output (H heads) and of k and
// v (KV heads, or H when KV does not divide by p: expanded first): (2·H + 2·KV)·B·(T/p)·D elements, of which
// (p − 1)/p leave the rank; backward the same.
TEST_P(SequenceParallelTest, UlyssesMatchesOneProcess) {
  const int p = GetParam();
  const int64_t T = 6 * p, B = 2, H = 4, KV = 2, D = 8;
  check(p, T, [&](int r) { return at::arange(r * (T / p), (r + 1) * (T / p), at::kLong); },
        [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& c) {
          return ulysses_attention(q, k, v, c);
        },
        {0, 0, (2 * H + 2 * (KV % p == 0 ? KV : H)) * B * (T / p) * D * 8 * (p - 1) / p});
}

// Whole models on sp ranks: each rank's loss is the mean over its tokens, so the mean of the ranks' losses is the
// one-process loss and the mean of their gradients the one-process gradient.
void check_model(const std::string& arch, const std::string& mode, int p) {
  ModelConfig config = test::small_config(arch);
  config.seq_len = 16;
  const int64_t T = 16;
  const auto ref = test::reference_run(config, /*B=*/2, T, 5, 6);
  const auto& reference = ref.model;
  const auto& whole = ref.whole;
  const auto& ids = ref.ids;
  const auto& targets = ref.targets;
  const at::Tensor& ref_loss = ref.loss;
  test::run_thread_ranks(
      p,
      [&](dist::Comm& comm, int r) {
        auto model = models::Model::create(config);
        nn::Sharding sharding;
        add_sequence_parallel(sharding, comm, mode);
        model->set_sharding(sharding);
        std::vector<at::Tensor> local;
        for (const auto& w : whole) local.push_back(w.clone());
        model->bind_params(local);
        const at::Tensor pos = sequence_positions(mode, T, p, r);
        at::Tensor loss = model->loss(ids.index_select(1, pos), targets.index_select(1, pos));
        loss.backward();
        at::Tensor mean = loss.detach().reshape({1}).to(at::kDouble);
        comm.all_reduce(mean, dist::ReduceOp::kAvg);
        EXPECT_NEAR(mean.item<double>(), ref_loss.item<double>(), 1e-5 * ref_loss.item<double>()) << arch << mode;
        for (size_t i = 0; i < local.size(); ++i) {
          at::Tensor g = local[i].grad().clone();
          comm.all_reduce(g, dist::ReduceOp::kAvg);
          const at::Tensor want = reference->params()[i].second.grad();
          EXPECT_LT((g - want).norm().item<double>(), 1e-5 * std::max(1e-3, want.norm().item<double>()))
              << arch << " " << mode << " " << reference->params()[i].first;
        }
      },
      std::chrono::seconds(30), 0, "sp");
}

TEST(SequenceParallel, GptAndLlamaOnSpRanksMatchOneProcess) {
  for (const char* mode : {"ring", "ulysses"}) {
    check_model("gpt2", mode, 2);
    check_model("llama", mode, 2);
    check_model("gpt2", mode, 4);
  }
}

TEST(SequenceParallel, ZigZagNeedsTheSequenceDivisibleByTwiceSp) {
  EXPECT_THROW(zigzag_positions(10, 4, 0), InputError);
}

INSTANTIATE_TEST_SUITE_P(SequenceParallel, SequenceParallelTest, ::testing::Values(2, 4), [](const auto& info) {
  return std::to_string(info.param) + "ranks";
});

}  // namespace
}  // namespace kolos::parallel::sequence
