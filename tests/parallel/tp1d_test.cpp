// 1D tensor parallelism (src/kolos/parallel/tensor/tp1d.h) against one process: GPT-2 and LLaMA (grouped-query
// attention, untied head) built on every tp rank with the sharding of tensor_parallel_1d and its pieces of the same
// random parameters; the loss and every parameter's gradient (this rank's piece of the one-process gradient) must
// agree. Also the ledger: the analytical all-reduce count and volume of 1D tensor parallelism, and the unsharding
// of every parameter. Ranks are threads (tests/dist/thread_ranks.h).
#include "kolos/parallel/tensor/tp1d.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <vector>

#include "kolos/config/config.h"
#include "kolos/models/model.h"
#include "tests/dist/thread_ranks.h"
#include "tests/support.h"
#include "tests/models/small_models.h"

namespace kolos::parallel::tensor {
namespace {

ModelConfig config_for(const std::string& arch) {
  ModelConfig c = test::small_config(arch);
  c.vocab = arch == "llama" ? 36 : 37;  // 37: not divisible by tp, padded
  c.seq_len = 16;
  return c;
}


// With `sequence` (Megatron-SP) the gradients of sequence_sliced parameters are summed over tp here, as the trainer
// does, before the comparison.
void check_arch(const std::string& arch, int tp, bool sequence = false) {
  const ModelConfig config = config_for(arch);
  const int64_t B = 2, T = 12;
  const auto ref = test::reference_run(config, B, T, 7, 11);
  const auto& whole = ref.whole;
  const auto& ids = ref.ids;
  const auto& targets = ref.targets;
  const at::Tensor& ref_loss = ref.loss;
  const auto specs = ref.model->param_specs();

  std::vector<std::vector<at::Tensor>> pieces(tp);  // per rank: its parameters, to unshard
  test::run_thread_ranks(
      tp,
      [&](dist::Comm& comm, int r) {
        auto model = models::Model::create(config);
        model->set_sharding(tensor_parallel_1d(comm, config.vocab, sequence));
        std::vector<at::Tensor> local;
        for (size_t i = 0; i < specs.size(); ++i) local.push_back(nn::shard_param(whole[i], specs[i], tp, r).clone());
        model->bind_params(local);
        pieces[r] = local;
        at::Tensor loss = model->loss(ids, targets);
        EXPECT_LT(std::abs(loss.item<double>() - ref_loss.item<double>()), 1e-5 * std::abs(ref_loss.item<double>()))
            << arch << " rank " << r << ": " << loss.item<double>() << " vs " << ref_loss.item<double>();
        loss.backward();
        for (size_t i = 0; i < specs.size(); ++i)
          if (sequence && specs[i].sequence_sliced) comm.all_reduce(local[i].mutable_grad());
        for (size_t i = 0; i < specs.size(); ++i) {
          const at::Tensor want = nn::shard_param(ref.model->params()[i].second.grad(), specs[i], tp, r);
          EXPECT_LT(test::rel_diff(local[i].grad(), want), 1e-5) << arch << " rank " << r << " " << specs[i].name;
        }
        // Per layer, forward: one all-reduce after attention and one after the MLP of B·T·C floats, plus the
        // embedding's; backward: one at each column-parallel input (q|k|v and fc, or gate|up, each fused into one)
        // and the head's. So 8·B·T·C·(t−1)/t elements per layer (yardsticks §5), plus the embedding, head and loss.
        // Megatron-SP replaces each all-reduce by an all-gather and a reduce-scatter of the same total volume.
        const int64_t L = config.layers, C = config.hidden;
        const int64_t whole = B * T * C * 4, loss_terms = 3 * dist::algorithmic_bytes("all_reduce", B * T * 4, tp);
        const int64_t ar = dist::algorithmic_bytes("all_reduce", whole, tp);
        const auto& ledger = comm.ledger();
        auto volume = [&](dist::Phase phase) {
          return ledger.bytes("tp", "all_reduce", phase) + ledger.bytes("tp", "all_gather", phase) +
                 ledger.bytes("tp", "reduce_scatter", phase);
        };
        if (!sequence) {
          EXPECT_EQ(ledger.calls("tp", "all_reduce", dist::Phase::kBackward), 2 * L + 1);
          EXPECT_EQ(ledger.calls("tp", "all_reduce", dist::Phase::kForward), 2 * L + 1 + 3);
        } else {
          EXPECT_EQ(ledger.calls("tp", "all_gather", dist::Phase::kForward), 2 * L + 1);  // + the head's input
          EXPECT_EQ(ledger.calls("tp", "reduce_scatter", dist::Phase::kForward), 2 * L);
          EXPECT_EQ(ledger.calls("tp", "reduce_scatter", dist::Phase::kBackward), 2 * L + 1);
          EXPECT_EQ(ledger.calls("tp", "all_gather", dist::Phase::kBackward), 2 * L + 1);  // + the entry split
          EXPECT_EQ(ledger.calls("tp", "all_reduce", dist::Phase::kForward), 1 + 3);       // embedding, loss
        }
        // Backward: the layers and the head (with SP: 2L + 1 reduce-scatters at the column inputs, 2L all-gathers at
        // the row outputs and one at the blocks' entry, each half an all-reduce: the same total).
        EXPECT_EQ(volume(dist::Phase::kBackward), (2 * L + 1) * ar);
        // Forward: the layers, the embedding and the loss (and, with SP, the head's input all-gather).
        EXPECT_EQ(volume(dist::Phase::kForward), (2 * L + 1) * ar + loss_terms + (sequence ? ar / 2 : 0));
      },
      std::chrono::seconds(30), 0, "tp");
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (int r = 0; r < tp; ++r) parts.push_back(pieces[r][i].detach());
    EXPECT_TRUE(at::equal(nn::unshard_param(parts, specs[i]), whole[i])) << specs[i].name;
  }
}

TEST(TensorParallel1d, GptTwoAndFourRanksMatchOneProcess) {
  check_arch("gpt2", 2);
  check_arch("gpt2", 4);
}

TEST(TensorParallel1d, LlamaWithGroupedQueryAttentionTwoRanksMatchesOneProcess) { check_arch("llama", 2); }

TEST(TensorParallel1d, MegatronSequenceParallelMatchesOneProcess) {
  check_arch("gpt2", 2, true);
  check_arch("gpt2", 4, true);
  check_arch("llama", 2, true);
}

// The column-parallel input gradient's all-reduce overlaps the weight gradients, from the ledger's timestamps: one
// fused q|k|v-like step of three products whose input-gradient and weight-gradient products cost the same. Were the
// all-reduce issued after the weight gradients (no overlap), it would start at the very end of backward; here it
// starts after the input-gradient products — about half-way — so the weight-gradient products run while it is in
// flight. (When it completes depends on the peer thread's progress too, so that is not asserted.)
TEST(TensorParallel1d, ColumnInputGradientAllReduceOverlapsTheWeightGradients) {
  test::run_thread_ranks(
      2,
      [&](dist::Comm& comm, int r) {
        const nn::Sharding sharding = tensor_parallel_1d(comm, 8);
        auto gen = at::detail::createCPUGenerator(21 + r);
        const int64_t M = 512, K = 512, N = 512;  // tokens, inputs, this rank's outputs of each product
        const at::Tensor x = at::randn({M, K}, gen).requires_grad_(true);
        std::vector<nn::Linear> layers;
        for (int i = 0; i < 3; ++i)
          layers.push_back({at::randn({N, K}, gen).requires_grad_(true), at::randn({N}, gen).requires_grad_(true), {}});
        const auto outs = sharding.column_many(x, {&layers[0], &layers[1], &layers[2]});
        at::Tensor loss = (outs[0] + outs[1] + outs[2]).sum();
        const auto before = comm.ledger().events().size();
        const auto t0 = dist::Ledger::Clock::now();
        loss.backward();
        const auto t1 = dist::Ledger::Clock::now();
        const auto events = comm.ledger().events();
        ASSERT_EQ(events.size(), before + 1);
        const auto& e = events.back();
        EXPECT_EQ(e.op, "all_reduce");
        EXPECT_EQ(e.phase, dist::Phase::kBackward);
        ASSERT_NE(e.end, dist::Ledger::Clock::time_point{});
        const double span = std::chrono::duration<double>(t1 - t0).count();
        const double start = std::chrono::duration<double>(e.start - t0).count();
        EXPECT_LT(start, 0.75 * span) << "rank " << r << ": the all-reduce started at " << start * 1e3 << " ms of "
                                      << span * 1e3 << " ms of backward";
        EXPECT_GT(start, 0.0);
        EXPECT_TRUE(x.grad().defined());
      },
      std::chrono::seconds(30), 0, "tp");
}

}  // namespace
}  // namespace kolos::parallel::tensor
