// The models of src/kolos/models: forward and backward against an independent PyTorch reference
// (tests/reference/models_ref.py, float64, run by Debian's python3-torch), parameter counts against the published
// sizes and a formula written out here, deterministic initialisation from (seed, name), and a tiny GPT that
// overfits one batch.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kolos/checkpoint/safetensors.h"
#include "kolos/config/config.h"
#include "kolos/models/model.h"
#include "tests/models/small_models.h"
#include "tests/support.h"

namespace kolos::models {
namespace {

using checkpoint::TensorMap;
using nlohmann::json;

// ||kolos - ref|| / ||ref||, kolos in fp32, reference in fp64 (DESIGN "Correctness": the parity tolerance).
constexpr double kTolerance = 1e-5;

// ---------------------------------------------------------------------------------------------------------------
// Forward and backward against PyTorch

using test::small_config;

void bind_random_params(Model& model, uint64_t seed) { model.bind_params(test::random_params(model, seed)); }

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  const double ref_norm = want.norm().item<double>();
  return (got.to(at::kDouble) - want.reshape(got.sizes())).norm().item<double>() / std::max(ref_norm, 1e-30);
}

// Runs kolos's forward (logits) and loss backward for random ids/targets (B, T), runs models_ref.py on the same
// parameters, and compares logits, loss and every parameter's gradient.
void check_against_pytorch(const ModelConfig& config, int64_t B, int64_t T, uint64_t seed) {
  auto model = Model::create(config);
  model->set_training(false);
  bind_random_params(*model, seed);
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);
  const at::Tensor ids = at::randint(config.vocab, {B, T}, gen, at::kLong);
  const at::Tensor targets = at::randint(config.vocab, {B, T}, gen, at::kLong);

  const at::Tensor logits = model->forward(ids).detach();
  const at::Tensor loss = model->loss(ids, targets);
  loss.backward();

  TensorMap inputs{{"ids", ids}, {"targets", targets}};
  for (const auto& [name, t] : model->params()) inputs["param." + name] = t.detach();
  const json cfg = {{"arch", config.arch},         {"layers", config.layers},
                    {"hidden", config.hidden},     {"heads", config.heads},
                    {"kv_heads", config.kv_heads}, {"vocab", config.vocab},
                    {"norm_eps", config.norm_eps}, {"rope_theta", config.rope_theta},
                    {"tie_embeddings", config.tie_embeddings}};
  kolos::test::TempDir dir("models-ref");
  const std::string in = dir / "in.safetensors", out = dir / "out.safetensors";
  checkpoint::save_safetensors(in, inputs, {{"config", cfg.dump()}});
  const std::string script = std::string(KOLOS_SOURCE_DIR) + "/tests/reference/models_ref.py";
  const auto run = kolos::test::run_shell("/usr/bin/python3 -B '" + script + "' '" + in + "' '" + out + "'");
  ASSERT_EQ(run.exit_code, 0) << "reference failed:\n" << run.output;
  const TensorMap ref = checkpoint::load_safetensors(out);

  EXPECT_LE(relative_error(logits, ref.at("logits")), kTolerance) << "logits";
  EXPECT_LE(relative_error(loss.detach().reshape({1}), ref.at("loss")), kTolerance) << "loss";
  for (const auto& [name, t] : model->params()) {
    ASSERT_TRUE(t.grad().defined()) << "no gradient reached " << name;
    ASSERT_TRUE(ref.count("grad." + name)) << "the reference has no gradient for " << name;
    const double err = relative_error(t.grad(), ref.at("grad." + name));
    EXPECT_LE(err, kTolerance) << "gradient of " << name << ": ||kolos - ref|| / ||ref|| = " << err;
  }
}

#ifndef KOLOS_SKIP_WITHOUT_PYTHON_TORCH
#define KOLOS_SKIP_WITHOUT_PYTHON_TORCH()                                                             \
  if (!kolos::test::have_python_torch())                                                              \
  GTEST_SKIP() << "/usr/bin/python3 cannot import torch (Debian's python3-torch): no PyTorch reference"
#endif

TEST(ModelsReference, GptMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  check_against_pytorch(small_config("gpt2"), /*B=*/2, /*T=*/20, /*seed=*/101);  // T < seq_len: wpe rows 0..19
}

TEST(ModelsReference, LlamaGroupedQueryAttentionMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  check_against_pytorch(small_config("llama"), 2, 20, 102);
}

// One key/value head for all query heads, tied head, and a sequence longer than the attention block (256), so
// the model runs the multi-block path of the kernel.
TEST(ModelsReference, LlamaMultiQueryTiedLongSequenceMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  ModelConfig c = small_config("llama");
  c.layers = 1;
  c.hidden = 16;
  c.heads = 2;
  c.kv_heads = 1;
  c.ffn_hidden = 24;
  c.seq_len = 300;
  c.tie_embeddings = true;
  check_against_pytorch(c, 1, 290, 103);
}

TEST(ModelsReference, ParityGptMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  const Config cfg = load_config("parity", {});
  check_against_pytorch(cfg.model, 2, cfg.model.seq_len, 104);
}

TEST(ModelsReference, ParityLlamaMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  const Config cfg =
      load_config("parity", {"model.arch=llama", "model.kv_heads=4", "model.tie_embeddings=false"});
  check_against_pytorch(cfg.model, 2, cfg.model.seq_len, 105);
}

// ---------------------------------------------------------------------------------------------------------------
// Parameter counts

// GPT-2: token and position tables, per layer two LayerNorms (weight + bias), qkv (3C x C + 3C), attention
// projection (C x C + C), MLP (F x C + F, C x F + C); the final LayerNorm; the head is tied to wte.
int64_t gpt2_count(const ModelConfig& m) {
  const int64_t C = m.hidden, F = m.ffn_hidden, V = m.vocab, P = m.seq_len;
  const int64_t per_layer = 2 * (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (F * C + F) + (C * F + C);
  return V * C + P * C + m.layers * per_layer + 2 * C;
}

// LLaMA: token table, per layer two RMSNorm weights, q (H*D x C), k and v (KV*D x C each), o (C x H*D), SwiGLU
// gate/up (F x C) and down (C x F), no biases; the final RMSNorm; an untied head (V x C) unless tied.
int64_t llama_count(const ModelConfig& m) {
  const int64_t C = m.hidden, F = m.ffn_hidden, V = m.vocab, H = m.heads, KV = m.kv_heads, D = C / H;
  const int64_t per_layer = 2 * C + H * D * C + 2 * KV * D * C + C * H * D + 3 * C * F;
  return V * C + m.layers * per_layer + C + (m.tie_embeddings ? 0 : V * C);
}

TEST(ModelsParamCount, NamedSizesMatchPublishedCounts) {
  const std::map<std::string, int64_t> published = {
      {"gpt2-small", 124'439'808}, {"gpt2-medium", 354'823'168}, {"gpt2-large", 774'030'080},
      {"gpt2-xl", 1'557'611'200},  {"llama-7b", 6'738'415'616},
  };
  for (const auto& [recipe, count] : published) {
    const Config cfg = load_config(recipe, {});
    EXPECT_EQ(Model::create(cfg.model)->num_params(), count) << recipe;  // from shapes: nothing is allocated
    const int64_t formula = cfg.model.arch == "gpt2" ? gpt2_count(cfg.model) : llama_count(cfg.model);
    EXPECT_EQ(formula, count) << recipe << ": the test's formula";
  }
}

TEST(ModelsParamCount, RecipesMatchFormula) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> recipes = {
      {"parity", {}},
      {"parity", {"model.arch=llama", "model.kv_heads=4", "model.tie_embeddings=false"}},
      {"tiny", {}},
      {"llama-tiny", {}},
  };
  for (const auto& [recipe, overrides] : recipes) {
    const Config cfg = load_config(recipe, overrides);
    const auto& m = cfg.model;
    const int64_t formula = m.arch == "gpt2" ? gpt2_count(m) : llama_count(m);
    EXPECT_EQ(Model::create(m)->num_params(), formula) << recipe << " (" << m.arch << ")";
  }
  // The parity GPT-2 written out: 261*64 + 32*64 + 8*(256 + 12480 + 4160 + 16640 + 16448) + 128.
  EXPECT_EQ(Model::create(load_config("parity", {}).model)->num_params(), 418'752);
}

// ---------------------------------------------------------------------------------------------------------------
// Initialisation from (seed, name)

std::map<std::string, at::Tensor> init(const ModelConfig& config, int64_t seed) {
  auto model = Model::create(config);
  model->init_params(seed);
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : model->params()) out[name] = t.detach();
  return out;
}

TEST(ModelsInit, SameSeedGivesIdenticalParams) {
  for (const char* arch : {"gpt2", "llama"}) {
    const auto a = init(small_config(arch), 7), b = init(small_config(arch), 7);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << arch << " " << name;
  }
}

TEST(ModelsInit, DifferentSeedGivesDifferentRandomParams) {
  for (const char* arch : {"gpt2", "llama"}) {
    auto model = Model::create(small_config(arch));
    const auto a = init(small_config(arch), 7), b = init(small_config(arch), 8);
    for (const auto& spec : model->param_specs()) {
      if (spec.init != nn::Init::kNormal) continue;
      EXPECT_FALSE(at::equal(a.at(spec.name), b.at(spec.name))) << arch << " " << spec.name;
    }
  }
}

TEST(ModelsInit, FollowsTheSpecs) {
  ModelConfig c = small_config("gpt2");
  c.hidden = 128;  // enough elements for a meaningful sample standard deviation
  c.ffn_hidden = 512;
  auto model = Model::create(c);
  model->init_params(3);
  for (const auto& spec : model->param_specs()) {
    const at::Tensor t = model->param(spec.name).detach();
    EXPECT_EQ(t.sizes().vec(), spec.shape) << spec.name;
    EXPECT_EQ(t.scalar_type(), at::kFloat) << spec.name;
    EXPECT_TRUE(model->param(spec.name).requires_grad()) << spec.name;
    switch (spec.init) {
      case nn::Init::kOnes: EXPECT_TRUE(at::equal(t, at::ones_like(t))) << spec.name; break;
      case nn::Init::kZeros: EXPECT_TRUE(at::equal(t, at::zeros_like(t))) << spec.name; break;
      case nn::Init::kNormal:
        EXPECT_NEAR(t.std().item<double>(), spec.std, 0.1 * spec.std) << spec.name;
        EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.1 * spec.std) << spec.name;
        break;
    }
  }
  // GPT-2's residual projections start at init_std / sqrt(2 * layers).
  for (const auto& spec : model->param_specs()) {
    if (spec.name == "h.0.attn.proj.weight" || spec.name == "h.1.mlp.proj.weight") {
      EXPECT_DOUBLE_EQ(spec.std, c.init_std / std::sqrt(2.0 * c.layers)) << spec.name;
    }
  }
}

// A parameter's values depend only on (seed, its name, its init rule): not on which other parameters exist.
TEST(ModelsInit, ValuesDoNotDependOnOtherParams) {
  {  // GPT-2 with 2 vs 4 layers: every tensor of the 2-layer model equals the 4-layer one's, up to the depth-scaled
     // std of the residual projections (same normal draws, other scale).
    ModelConfig deep = small_config("gpt2");
    deep.layers = 4;
    auto shallow_model = Model::create(small_config("gpt2")), deep_model = Model::create(deep);
    const auto a = init(small_config("gpt2"), 5), b = init(deep, 5);
    std::map<std::string, double> deep_std;
    for (const auto& s : deep_model->param_specs()) deep_std[s.name] = s.std;
    for (const auto& s : shallow_model->param_specs()) {
      ASSERT_TRUE(b.count(s.name)) << s.name;
      if (s.init == nn::Init::kNormal && s.std != deep_std.at(s.name))
        EXPECT_TRUE(at::allclose(a.at(s.name) / s.std, b.at(s.name) / deep_std.at(s.name), 1e-6, 1e-7)) << s.name;
      else
        EXPECT_TRUE(at::equal(a.at(s.name), b.at(s.name))) << s.name;
    }
  }
  {  // LLaMA tied vs untied (lm_head present or not): the shared tensors are identical.
    ModelConfig untied = small_config("llama"), tied = small_config("llama");
    tied.tie_embeddings = true;
    const auto a = init(untied, 9), b = init(tied, 9);
    EXPECT_EQ(a.size(), b.size() + 1);
    for (const auto& [name, t] : b) EXPECT_TRUE(at::equal(t, a.at(name))) << name;
  }
  {  // Different parameters with the same shape get different values.
    const auto a = init(small_config("llama"), 9);
    EXPECT_FALSE(at::equal(a.at("layers.0.mlp.gate_proj.weight"), a.at("layers.0.mlp.up_proj.weight")));
    EXPECT_FALSE(at::equal(a.at("layers.0.self_attn.k_proj.weight"), a.at("layers.1.self_attn.k_proj.weight")));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Training sanity

// A tiny GPT trained with plain SGD with momentum (at::Tensor arithmetic, no kolos optimizer) on one fixed batch
// memorises it.
TEST(ModelsTraining, TinyGptOverfitsOneBatch) {
  ModelConfig c;
  c.arch = "gpt2";
  c.layers = 2;
  c.hidden = 32;
  c.heads = 4;
  c.kv_heads = 4;
  c.ffn_hidden = 128;
  c.vocab = 16;
  c.seq_len = 16;
  auto model = Model::create(c);
  model->init_params(1);
  model->set_training(true);  // dropout 0: training mode changes nothing

  at::Generator gen = at::detail::createCPUGenerator(2);
  const at::Tensor tokens = at::randint(c.vocab, {4, c.seq_len + 1}, gen, at::kLong);
  const at::Tensor ids = tokens.narrow(1, 0, c.seq_len), targets = tokens.narrow(1, 1, c.seq_len);

  const double lr = 0.1, momentum = 0.9;
  std::vector<at::Tensor> velocity;
  for (const auto& [name, t] : model->params()) velocity.push_back(at::zeros_like(t).detach());
  const double initial = model->loss(ids, targets).item<double>();
  EXPECT_NEAR(initial, std::log(16.0), 0.3);  // small init: close to uniform predictions
  double loss = initial;
  int step = 0;
  for (; step < 500 && loss >= 0.1; ++step) {
    for (const auto& [name, t] : model->params()) t.mutable_grad() = at::Tensor();
    at::Tensor l = model->loss(ids, targets);
    l.backward();
    loss = l.item<double>();
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < model->params().size(); ++i) {
      const at::Tensor& p = model->params()[i].second;
      velocity[i].mul_(momentum).add_(p.grad());
      p.sub_(velocity[i], lr);
    }
  }
  EXPECT_LT(loss, 0.1) << "after " << step << " steps (initial " << initial << ")";
}

}  // namespace
}  // namespace kolos::models
