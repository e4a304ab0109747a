// Every layer of src/kolos/nn, forward and backward, against an independent PyTorch reference
// (tests/reference/layers_ref.py: each layer rewritten from its formula in float64, run by Debian's python3-torch).
// Each test builds cases with fixed seeds, runs kolos's forward and the backward of sum(out * cotangent), hands
// inputs and cotangents to the reference as safetensors, and compares outputs and gradients with
// ||kolos - ref|| / ||ref|| <= 1e-5 (kolos in fp32).
#include <map>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kolos/checkpoint/safetensors.h"
#include "kolos/nn/attention.h"
#include "kolos/nn/head_loss.h"
#include "kolos/nn/layers.h"
#include "tests/support.h"

namespace kolos::nn {
namespace {

using checkpoint::TensorMap;
using nlohmann::json;

constexpr double kTolerance = 1e-5;  // ||kolos - ref|| / ||ref||, kolos in fp32, reference in fp64

#ifndef KOLOS_SKIP_WITHOUT_PYTHON_TORCH
#define KOLOS_SKIP_WITHOUT_PYTHON_TORCH()                                                             \
  if (!kolos::test::have_python_torch())                                                              \
  GTEST_SKIP() << "/usr/bin/python3 cannot import torch (Debian's python3-torch): no PyTorch reference"
#endif

// A batch of cases for tests/reference/layers_ref.py: the inputs it receives, what kolos computed, and the
// comparison of both. Tensor keys are "<case>.<arg>"; outputs "<case>.out", gradients "<case>.grad.<arg>".
class LayerReference {
 public:
  explicit LayerReference(uint64_t seed) : gen_(at::detail::createCPUGenerator(seed)), dir_("layers-ref") {}

  at::Tensor randn(at::IntArrayRef shape, double scale = 1.0) {
    return at::randn(shape, gen_, at::kFloat) * scale;
  }
  at::Tensor randint(int64_t high, at::IntArrayRef shape) { return at::randint(high, shape, gen_, at::kLong); }

  void add_case(const std::string& name, const std::string& op, json attrs = json::object()) {
    attrs["name"] = name;
    attrs["op"] = op;
    cases_.push_back(attrs);
  }
  // Registers `value` as input `arg` of case `name` and returns a leaf copy of it that requires grad.
  at::Tensor leaf(const std::string& name, const std::string& arg, const at::Tensor& value) {
    inputs_[name + "." + arg] = value.contiguous();
    return value.detach().clone().requires_grad_(true);
  }
  // Registers an input that takes no gradient (integer ids, targets).
  at::Tensor constant(const std::string& name, const std::string& arg, const at::Tensor& value) {
    inputs_[name + "." + arg] = value.contiguous();
    return value;
  }
  // Records kolos's result for `key` (compared with the reference's tensor of the same key).
  void record(const std::string& key, const at::Tensor& value) { ours_[key] = value.detach().clone(); }

  // Backward of sum(out * cotangent) (of out itself when it is a scalar), recording out and each leaf's gradient.
  void backward(const std::string& name, const at::Tensor& out, const std::map<std::string, at::Tensor>& leaves) {
    if (out.dim() == 0) {
      out.backward();
    } else {
      at::Tensor cot = randn(out.sizes());
      inputs_[name + ".cot"] = cot;
      (out * cot).sum().backward();
    }
    record(name + ".out", out);
    for (const auto& [arg, t] : leaves) {
      ASSERT_TRUE(t.grad().defined()) << name << ": no gradient reached " << arg;
      record(name + ".grad." + arg, t.grad());
    }
  }

  // Runs the reference and compares every recorded tensor with it.
  void compare(double tolerance = kTolerance) {
    const std::string in = dir_ / "in.safetensors", out = dir_ / "out.safetensors";
    checkpoint::save_safetensors(in, inputs_, {{"cases", json(cases_).dump()}});
    const std::string script = std::string(KOLOS_SOURCE_DIR) + "/tests/reference/layers_ref.py";
    const auto run = kolos::test::run_shell("/usr/bin/python3 -B '" + script + "' '" + in + "' '" + out + "'");
    ASSERT_EQ(run.exit_code, 0) << "reference failed:\n" << run.output;
    const TensorMap ref = checkpoint::load_safetensors(out);
    for (const auto& [key, got] : ours_) {
      auto it = ref.find(key);
      ASSERT_NE(it, ref.end()) << "the reference has no " << key;
      at::Tensor want = it->second.reshape(got.sizes());
      ASSERT_EQ(it->second.numel(), got.numel()) << key;
      const double ref_norm = want.norm().item<double>();
      const double err = (got.to(at::kDouble) - want).norm().item<double>() / std::max(ref_norm, 1e-30);
      EXPECT_LE(err, tolerance) << key << ": ||kolos - ref|| / ||ref|| = " << err << " (||ref|| = " << ref_norm << ")";
    }
  }

 private:
  at::Generator gen_;
  kolos::test::TempDir dir_;
  std::vector<json> cases_;
  TensorMap inputs_, ours_;
};

TEST(LayersReference, LinearMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(11);
  {  // with bias, 3-D input
    ref.add_case("bias", "linear");
    at::Tensor x = ref.leaf("bias", "x", ref.randn({2, 3, 7}));
    at::Tensor w = ref.leaf("bias", "weight", ref.randn({5, 7}, 0.4));
    at::Tensor b = ref.leaf("bias", "bias", ref.randn({5}));
    ref.backward("bias", Linear{w, b}.forward(x), {{"x", x}, {"weight", w}, {"bias", b}});
  }
  {  // no bias, 2-D input
    ref.add_case("nobias", "linear");
    at::Tensor x = ref.leaf("nobias", "x", ref.randn({6, 9}));
    at::Tensor w = ref.leaf("nobias", "weight", ref.randn({4, 9}, 0.4));
    ref.backward("nobias", Linear{w, {}}.forward(x), {{"x", x}, {"weight", w}});
  }
  ref.compare();
}

TEST(LayersReference, EmbeddingMatchesPyTorchWithRepeatedIds) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(12);
  ref.add_case("emb", "embedding");
  at::Tensor w = ref.leaf("emb", "weight", ref.randn({11, 6}));
  // Repeated ids: their rows' gradients must accumulate.
  at::Tensor ids = ref.constant("emb", "ids", at::tensor({3, 0, 3, 10, 7, 3, 0, 5}, at::kLong).view({2, 4}));
  ref.backward("emb", nn::embedding(w, ids), {{"weight", w}});
  ref.compare();
}

TEST(LayersReference, LayerNormMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(13);
  // eps 1e-5 on unit-scale inputs, and a large eps on small inputs, where its place (inside the sqrt) matters.
  for (auto [name, eps, scale] : {std::tuple{"eps_small", 1e-5, 2.0}, std::tuple{"eps_large", 0.1, 0.3}}) {
    ref.add_case(name, "layer_norm", {{"eps", eps}});
    at::Tensor x = ref.leaf(name, "x", ref.randn({2, 5, 12}, scale) + 0.5);
    at::Tensor w = ref.leaf(name, "weight", ref.randn({12}, 0.3) + 1.0);
    at::Tensor b = ref.leaf(name, "bias", ref.randn({12}, 0.3));
    ref.backward(name, nn::layer_norm(x, w, b, eps), {{"x", x}, {"weight", w}, {"bias", b}});
  }
  ref.compare();
}

TEST(LayersReference, RmsNormMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(14);
  for (auto [name, eps, scale] : {std::tuple{"eps_small", 1e-6, 2.0}, std::tuple{"eps_large", 0.1, 0.3}}) {
    ref.add_case(name, "rms_norm", {{"eps", eps}});
    at::Tensor x = ref.leaf(name, "x", ref.randn({3, 4, 16}, scale));
    at::Tensor w = ref.leaf(name, "weight", ref.randn({16}, 0.3) + 1.0);
    ref.backward(name, nn::rms_norm(x, w, eps), {{"x", x}, {"weight", w}});
  }
  ref.compare();
}

TEST(LayersReference, GeluTanhMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(15);
  ref.add_case("gelu", "gelu");
  // Random values plus the tails and zero.
  at::Tensor values = at::cat({ref.randn({200}, 3.0), at::tensor({-8.f, -4.f, -1e-3f, 0.f, 1e-3f, 4.f, 8.f})});
  at::Tensor x = ref.leaf("gelu", "x", values);
  ref.backward("gelu", nn::gelu(x), {{"x", x}});
  ref.compare();
}

TEST(LayersReference, RopeTablesAndRotationMatchPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(16);
  for (auto [name, T, D, theta] : {std::tuple{"tables_a", 24, 16, 10000.0}, std::tuple{"tables_b", 7, 6, 500.0}}) {
    ref.add_case(name, "rope_tables", {{"T", T}, {"D", D}, {"theta", theta}});
    auto [cos, sin] = nn::rope_tables(T, D, theta);
    ref.record(std::string(name) + ".cos", cos);
    ref.record(std::string(name) + ".sin", sin);
  }
  // Tables built for 24 positions and narrowed to the sequence's 20, as the models do.
  const double theta = 10000.0;
  auto [cos, sin] = nn::rope_tables(24, 16, theta);
  ref.add_case("rope", "rope", {{"theta", theta}});
  at::Tensor x = ref.leaf("rope", "x", ref.randn({2, 3, 20, 16}));
  ref.backward("rope", nn::apply_rope(x, cos.narrow(0, 0, 20), sin.narrow(0, 0, 20)), {{"x", x}});
  ref.compare();
}

TEST(LayersReference, CrossEntropyMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(17);
  ref.add_case("ce", "cross_entropy");
  at::Tensor logits = ref.leaf("ce", "logits", ref.randn({12, 9}, 3.0));
  at::Tensor targets = ref.constant("ce", "targets", ref.randint(9, {12}));
  ref.backward("ce", nn::cross_entropy(logits, targets), {{"logits", logits}});
  ref.compare();
}

// The fused, token-chunked head + cross-entropy (nn/head_loss.h): 13 tokens in chunks of 5 (the last ragged), every
// fourth target ignored, with and without a bias.
TEST(LayersReference, HeadCrossEntropyMatchesPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(18);
  for (bool with_bias : {false, true}) {
    const std::string name = with_bias ? "head_bias" : "head";
    ref.add_case(name, "head_cross_entropy");
    at::Tensor h = ref.leaf(name, "hidden", ref.randn({13, 8}));
    at::Tensor w = ref.leaf(name, "weight", ref.randn({11, 8}, 0.8));
    at::Tensor b = with_bias ? ref.leaf(name, "bias", ref.randn({11})) : at::Tensor();
    at::Tensor t = ref.randint(11, {13});
    t.index_put_({at::arange(0, 13, 4)}, -100);
    ref.constant(name, "targets", t);
    std::map<std::string, at::Tensor> leaves{{"hidden", h}, {"weight", w}};
    if (with_bias) leaves["bias"] = b;
    ref.backward(name, nn::head_cross_entropy(h, w, b, t, /*chunk_tokens=*/5), leaves);
  }
  ref.compare();
}

// The blockwise kernel against full-matrix attention: one block (T < block, T = block), several blocks with a
// ragged last one (T = 20, 33 with block 8: multi-block masking and the log-sum-exp merge), sharp scores (the
// running max matters), the default block, and non-contiguous inputs laid out as the models produce them.
TEST(LayersAttention, BlockwiseMatchesFullSoftmaxInPyTorch) {
  KOLOS_SKIP_WITHOUT_PYTHON_TORCH();
  LayerReference ref(18);
  struct Shape {
    const char* name;
    int64_t T, block;
    double q_scale;
    bool strided;
  };
  const Shape shapes[] = {
      {"T5_block8", 5, 8, 1.0, false},     {"T8_block8", 8, 8, 1.0, false},
      {"T20_block8", 20, 8, 1.0, false},   {"T33_block8", 33, 8, 1.0, false},
      {"T33_block8_sharp", 33, 8, 6.0, false}, {"T33_block8_strided", 33, 8, 1.0, true},
      {"T40_default_block", 40, kAttentionBlock, 1.0, false},
  };
  const int64_t B = 2, H = 3, D = 12;
  for (const auto& s : shapes) {
    ref.add_case(s.name, "attention");
    at::Tensor q = ref.leaf(s.name, "q", ref.randn({B, H, s.T, D}, s.q_scale));
    at::Tensor k = ref.leaf(s.name, "k", ref.randn({B, H, s.T, D}));
    at::Tensor v = ref.leaf(s.name, "v", ref.randn({B, H, s.T, D}));
    at::Tensor out;
    if (s.strided) {  // (B, T, H, D) storage seen as (B, H, T, D), as after a head split
      auto as_strided = [](const at::Tensor& t) { return t.transpose(1, 2).contiguous().transpose(1, 2); };
      out = nn::causal_attention(as_strided(q), as_strided(k), as_strided(v), s.block);
    } else {
      out = nn::causal_attention(q, k, v, s.block);
    }
    ref.backward(s.name, out, {{"q", q}, {"k", k}, {"v", v}});
  }
  ref.compare();
}

}  // namespace
}  // namespace kolos::nn
