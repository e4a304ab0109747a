// Recomputation (nn::recompute) and activation checkpointing (train.activation_checkpointing): the same losses and
// gradients bit for bit as without it, dropout included; the spec names the blocks; bad values are exit 2; data
// parallelism over checkpointed blocks matches one process.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "kolos/config/config.h"
#include "kolos/core/error.h"
#include "kolos/models/model.h"
#include "kolos/nn/recompute.h"
#include "kolos/train/trainer.h"
#include "tests/dist/train_runs.h"
#include "tests/models/small_models.h"
#include "tests/support.h"

namespace kolos {
namespace {

// --- nn::recompute on a plain function ---

// A block-like function: a product with a parameter, dropout, a nonlinearity and a residual.
at::Tensor toy_block(const at::Tensor& w, const at::Tensor& x) {
  return x + at::dropout(at::tanh(at::matmul(x, w)), 0.3, /*train=*/true);
}

TEST(Recompute, FunctionMatchesPlainCallWithDropout) {
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor x0 = at::randn({4, 8});
  auto run = [&](bool recompute) {
    at::manual_seed(5);
    w.mutable_grad() = at::Tensor();
    at::Tensor x = x0.clone().requires_grad_(true);
    at::Tensor h = x * 2;  // x's gradient flows through a node before the recomputed function
    auto fn = [w](const at::Tensor& in) { return toy_block(w, in); };
    at::Tensor y = recompute ? nn::recompute(fn, h) : fn(h);
    // Draws after the block: the recomputation in backward must not shift them.
    at::Tensor after = at::rand({3});
    (y * y).sum().backward();
    at::Tensor after_backward = at::rand({3});
    return std::vector<at::Tensor>{y.detach(), w.grad().clone(), x.grad().clone(), after, after_backward};
  };
  const auto plain = run(false), ckpt = run(true);
  const char* names[] = {"output", "weight gradient", "input gradient", "draw after forward", "draw after backward"};
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::equal(plain[i], ckpt[i])) << names[i];
}

TEST(Recompute, InputWithoutGradStillReachesParameters) {
  // Block 0 after a frozen embedding: the input needs no gradient, the parameters do.
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor x = at::randn({4, 8});
  auto fn = [w](const at::Tensor& in) { return toy_block(w, in); };
  at::manual_seed(9);
  fn(x).sum().backward();
  const at::Tensor want = w.grad().clone();
  w.mutable_grad() = at::Tensor();
  at::manual_seed(9);
  at::Tensor y = nn::recompute(fn, x);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_TRUE(at::equal(w.grad(), want));
}

// A post-hook on a gradient accumulator that counts its calls.
struct Count : torch::autograd::FunctionPostHook {
  explicit Count(int* n) : n(n) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& out,
                                            const torch::autograd::variable_list&) override {
    ++*n;
    return out;
  }
  int* n;
};

TEST(Recompute, ParameterHooksFireOncePerBackward) {
  // DataParallel counts gradients through post-hooks on each parameter's AccumulateGrad node: with one parameter
  // per recomputed block (as in the models), each fires once per micro-step, as without recomputation.
  at::Tensor w1 = at::randn({8, 8}).requires_grad_(true), w2 = at::randn({8, 8}).requires_grad_(true);
  int fired1 = 0, fired2 = 0;
  auto acc1 = torch::autograd::impl::grad_accumulator(w1), acc2 = torch::autograd::impl::grad_accumulator(w2);
  acc1->add_post_hook(std::make_unique<Count>(&fired1));
  acc2->add_post_hook(std::make_unique<Count>(&fired2));
  at::Tensor x = at::randn({4, 8}).requires_grad_(true);
  for (int micro = 1; micro <= 3; ++micro) {
    at::Tensor h = nn::recompute([w1](const at::Tensor& in) { return toy_block(w1, in); }, x);
    nn::recompute([w2](const at::Tensor& in) { return toy_block(w2, in); }, h).sum().backward();
    EXPECT_EQ(fired1, micro);
    EXPECT_EQ(fired2, micro);
  }
}

// Mixed precision: bf16 CPU autocast around the forward. The recomputation must run under it too (the backward
// usually runs outside), and must not pick up a weight cast that autocast cached under the forward's no-grad (the
// weight would get no gradient): backward outside and inside the autocast region.
TEST(Recompute, AutocastOfTheForwardIsReplayed) {
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor x = at::randn({4, 8}).requires_grad_(true);
  // The product runs in bf16 under autocast; dropout keeps its dtype.
  auto fn = [w](const at::Tensor& in) { return at::dropout(at::matmul(in, w), 0.3, /*train=*/true); };
  for (bool backward_inside : {false, true}) {
    auto run = [&](bool recompute) {
      w.mutable_grad() = at::Tensor();
      x.mutable_grad() = at::Tensor();
      at::manual_seed(5);
      at::autocast::set_cpu_enabled(true);
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::Tensor y = recompute ? nn::recompute(fn, x) : fn(x);
      auto backward = [&] { y.to(at::kFloat).pow(2).sum().backward(); };
      if (backward_inside) backward();
      at::autocast::set_cpu_enabled(false);
      at::autocast::clear_cache();
      if (!backward_inside) backward();
      return std::vector<at::Tensor>{y.detach(), w.grad().defined() ? w.grad().clone() : at::zeros_like(w),
                                     x.grad().clone()};
    };
    SCOPED_TRACE(backward_inside ? "backward inside autocast" : "backward outside autocast");
    const auto plain = run(false), ckpt = run(true);
    EXPECT_EQ(plain[0].scalar_type(), at::kBFloat16);
    for (size_t i = 0; i < plain.size(); ++i) EXPECT_TRUE(at::equal(plain[i], ckpt[i])) << i;
  }
}

TEST(Recompute, InPlaceChangeOfTheInputIsCaught) {
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor x = at::randn({4, 8});
  at::Tensor y = nn::recompute([w](const at::Tensor& in) { return toy_block(w, in); }, x);
  x.add_(1);
  EXPECT_THROW(y.sum().backward(), std::exception);
}

TEST(Recompute, SharedParameterAsInputAccumulatesOnce) {
  // A tied table used by the embedding and by the recomputed head: captured inside the function, its accumulator
  // would run twice per backward (the recomputation's backward, then the rest), and data parallelism would take the
  // first, partial gradient as final. Passed as an input of recompute_many, it runs once, with the sum.
  at::Tensor w = at::randn({8, 8}).requires_grad_(true);
  at::Tensor x0 = at::randn({4, 8});
  int fired = 0;
  auto accumulator = torch::autograd::impl::grad_accumulator(w);  // a weak reference in w: keep it alive
  accumulator->add_post_hook(std::make_unique<Count>(&fired));
  auto head = [](const at::Tensor& h, const at::Tensor& table) {
    return at::tanh(at::matmul(h, table.t())).pow(2).sum();
  };
  auto run = [&](int how) {  // 0 plain, 1 captured, 2 as an input
    w.mutable_grad() = at::Tensor();
    fired = 0;
    at::Tensor x = x0.clone().requires_grad_(true);
    at::Tensor h = at::matmul(x, w);  // the "embedding" use
    at::Tensor loss;
    if (how == 0) loss = head(h, w);
    if (how == 1) loss = nn::recompute([w, head](const at::Tensor& in) { return head(in, w); }, h);
    if (how == 2)
      loss = nn::recompute_many([head](const std::vector<at::Tensor>& in) { return head(in[0], in[1]); }, {h, w});
    loss.backward();
    return std::make_pair(w.grad().clone(), x.grad().clone());
  };
  const auto plain = run(0);
  EXPECT_EQ(fired, 1);
  run(1);
  EXPECT_EQ(fired, 2);  // the hazard
  const auto input = run(2);
  EXPECT_EQ(fired, 1);
  EXPECT_LT(test::rel_diff(input.first, plain.first), 1e-6);
  EXPECT_LT(test::rel_diff(input.second, plain.second), 1e-6);
}

// --- models: one forward and backward with checkpointed blocks ---

struct LossAndGrads {
  at::Tensor loss;
  std::vector<at::Tensor> grads;
};

LossAndGrads model_step(const std::string& arch, std::vector<bool> checkpointed) {
  ModelConfig c = test::small_config(arch);
  c.layers = 4;
  c.dropout = 0.1;
  auto model = models::Model::create(c);
  model->bind_params(test::random_params(*model, 11));
  model->set_checkpointing(std::move(checkpointed));
  at::Generator gen = at::detail::createCPUGenerator(3);
  at::Tensor ids = at::randint(c.vocab, {3, c.seq_len}, gen, at::kLong);
  at::Tensor targets = at::randint(c.vocab, {3, c.seq_len}, gen, at::kLong);
  at::manual_seed(21);  // dropout
  LossAndGrads out;
  out.loss = model->loss(ids, targets);
  out.loss.backward();
  for (const auto& [name, p] : model->params()) out.grads.push_back(p.grad().clone());
  return out;
}

void expect_same_step(const std::string& arch, const std::vector<bool>& checkpointed, const std::string& label) {
  SCOPED_TRACE(arch + " " + label);
  const auto ref = model_step(arch, {});
  const auto got = model_step(arch, checkpointed);
  EXPECT_TRUE(at::equal(ref.loss, got.loss)) << ref.loss.item<double>() << " vs " << got.loss.item<double>();
  ASSERT_EQ(ref.grads.size(), got.grads.size());
  for (size_t i = 0; i < ref.grads.size(); ++i) EXPECT_TRUE(at::equal(ref.grads[i], got.grads[i])) << "gradient " << i;
}

TEST(Recompute, GptAndLlamaStepBitIdenticalWithDropout) {
  for (const char* arch : {"gpt2", "llama"}) {
    expect_same_step(arch, {true, true, true, true}, "full");
    expect_same_step(arch, {true, false, true, false}, "every:2");
  }
}

TEST(Recompute, EvaluationAndNoGradForwardsAreUnchanged) {
  ModelConfig c = test::small_config("gpt2");
  c.dropout = 0.1;
  auto model = models::Model::create(c);
  model->bind_params(test::random_params(*model, 11));
  at::Tensor ids = at::randint(c.vocab, {2, c.seq_len}, at::kLong);
  model->set_training(false);
  const at::Tensor plain = model->forward(ids);
  model->set_checkpointing({true, true});
  EXPECT_TRUE(at::equal(model->forward(ids), plain));
  at::NoGradGuard no_grad;
  model->set_training(true);
  at::manual_seed(4);
  const at::Tensor a = model->forward(ids);
  model->set_checkpointing({});
  at::manual_seed(4);
  EXPECT_TRUE(at::equal(model->forward(ids), a));
}

// --- the trainer: train.activation_checkpointing ---

Config trainer_config(const std::string& arch, const std::string& checkpointing) {
  const std::string kv_heads = arch == "llama" ? "2" : "4";
  return load_config("tiny", {"model.arch=" + arch, "model.layers=3", "model.hidden=32", "model.heads=4",
                              "model.kv_heads=" + kv_heads, "model.seq_len=16", "model.vocab=64", "model.dropout=0.1",
                              "model.tie_embeddings=true", "data.synthetic=true", "train.steps=20",
                              "train.batch_size=2", "train.grad_accum=2", "optim.warmup_steps=0",
                              "optim.schedule=constant", "optim.min_lr=1e-3", "optim.lr=1e-3", "train.mfu=false",
                              "train.activation_checkpointing=" + checkpointing});
}

train::RunOptions no_files() { return train::RunOptions::in_memory(); }

TEST(Recompute, SpecNamesTheBlocks) {
  train::configure_threads(1);
  using Blocks = std::vector<bool>;
  EXPECT_EQ(train::Trainer(trainer_config("gpt2", "none"), no_files()).model().checkpointing(), Blocks(3, false));
  EXPECT_EQ(train::Trainer(trainer_config("gpt2", "full"), no_files()).model().checkpointing(), Blocks(3, true));
  EXPECT_EQ(train::Trainer(trainer_config("gpt2", "every:2"), no_files()).model().checkpointing(),
            (Blocks{true, false, true}));
  EXPECT_EQ(train::Trainer(trainer_config("gpt2", "every:1"), no_files()).model().checkpointing(), Blocks(3, true));
  EXPECT_EQ(train::Trainer(trainer_config("gpt2", "every:5"), no_files()).model().checkpointing(),
            (Blocks{true, false, false}));
}

// 20 steps of 2 micro-steps each from the same generator state, as `kolos train` runs them (the dropout draws of a
// step follow those of the step before, so a recomputation that shifted the generator would show).
std::pair<std::vector<train::StepResult>, std::vector<at::Tensor>> train_20(const std::string& arch,
                                                                           const std::string& checkpointing) {
  train::Trainer trainer(trainer_config(arch, checkpointing), no_files());
  at::manual_seed(77);
  std::vector<train::StepResult> steps;
  for (int64_t s = 0; s < 20; ++s) steps.push_back(trainer.train_step(s));
  std::vector<at::Tensor> params;
  for (const auto& [name, p] : trainer.model().params()) params.push_back(p.detach().clone());
  return {steps, params};
}

TEST(Recompute, TwentyTrainingStepsBitIdenticalWithDropout) {
  train::configure_threads(1);
  for (const char* arch : {"gpt2", "llama"}) {
    const auto ref = train_20(arch, "none");
    for (const char* mode : {"full", "every:2"}) {
      SCOPED_TRACE(std::string(arch) + " " + mode);
      const auto got = train_20(arch, mode);
      for (size_t s = 0; s < ref.first.size(); ++s) {
        EXPECT_EQ(ref.first[s].loss, got.first[s].loss) << "step " << s;
        EXPECT_EQ(ref.first[s].grad_norm, got.first[s].grad_norm) << "step " << s;
      }
      for (size_t i = 0; i < ref.second.size(); ++i) EXPECT_TRUE(at::equal(ref.second[i], got.second[i])) << i;
    }
  }
}

std::string config_error(const std::string& value) {
  try {
    load_config("tiny", {"train.activation_checkpointing=" + value});
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Recompute, BadValuesAreInputErrors) {
  for (const char* bad :
       {"some", "Full", "every", "every:", "every:0", "every:-1", "every:2.5", "every:x", "every:2 "}) {
    const std::string e = config_error(bad);
    EXPECT_NE(e.find("train.activation_checkpointing"), std::string::npos) << bad << ": \"" << e << "\"";
    EXPECT_NE(e.find("every:K"), std::string::npos) << bad << ": \"" << e << "\"";
  }
  for (const char* good : {"none", "full", "every:1", "every:3"}) EXPECT_EQ(config_error(good), "") << good;
  auto r = test::run_kolos({"train", "--config", "tiny", "--set", "data.synthetic=true", "--set",
                            "train.activation_checkpointing=every:0", "--out", "/nonexistent/never-written"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("train.activation_checkpointing"), std::string::npos) << r.output;
}

// --- data parallelism over checkpointed blocks (the hooks fire from the recomputation's backward) ---

TEST(RecomputeParity, TwoRanksDataParallelMatchOneProcess) {
  test::TempDir dir("recompute_dp2");
  auto j = test::run_verify("dp=2,train.activation_checkpointing=full;dp=2,zero=2,grad_accum=2,"
                            "train.activation_checkpointing=every:2",
                            dir.path());
  test::expect_layouts_ok(j, 2);
}

// Under tensor and sequence parallelism the recomputed blocks run their forward collectives again in backward;
// verify's op counts include them (the forward phase counts every block forward). The parameters are compared at
// 1e-4 as in tests/dist/tensor_parallel_test.cpp (Adam-amplified rounding of the split products).
TEST(RecomputeParity, TensorAndSequenceParallelRecomputeTheirCollectives) {
  test::TempDir dir("recompute_tp_sp");
  auto j = test::run_verify("tp=2,megatron_sp=true,train.activation_checkpointing=full;"
                            "sp=2,sp_mode=ulysses,train.activation_checkpointing=every:3",
                            dir.path(), 0, {"--tolerance", "1e-4"});
  test::expect_layouts_ok(j, 2, 1e-4);
}

}  // namespace
}  // namespace kolos
