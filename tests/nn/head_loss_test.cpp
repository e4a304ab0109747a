// nn::head_cross_entropy (the token-chunked output head + cross-entropy) against the unfused formula: ATen's
// cross-entropy of the whole logits hidden·Wᵀ + b — the value and the gradients of hidden, weight and bias, for
// chunk sizes that divide the token count and that do not, with ignored targets; in fp32 (float rounding) and fp64
// (to 1e-12); under bf16 autocast (bf16 products, fp32 loss); and its input checks.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include "kolos/core/error.h"
#include "kolos/nn/head_loss.h"

namespace kolos::nn {
namespace {

double relative_error(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor w = want.to(at::kDouble);
  return (got.to(at::kDouble) - w).norm().item<double>() / std::max(w.norm().item<double>(), 1e-30);
}

struct Case {
  at::Tensor hidden, weight, bias, targets;
};

// N tokens of hidden C against a vocabulary of V (logits of O(3), so the soft-max is far from uniform), every
// `ignore_every`-th target the ignore index (0: none).
Case make_case(int64_t N, int64_t C, int64_t V, bool bias, int64_t ignore_every, at::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Case c;
  c.hidden = at::randn({N, C}, gen, at::kDouble).to(dtype);
  c.weight = (at::randn({V, C}, gen, at::kDouble) * (3.0 / std::sqrt(static_cast<double>(C)))).to(dtype);
  if (bias) c.bias = at::randn({V}, gen, at::kDouble).to(dtype);
  c.targets = at::randint(V, {N}, gen, at::kLong);
  if (ignore_every > 0) c.targets.index_put_({at::arange(0, N, ignore_every)}, -100);
  return c;
}

struct Result {
  at::Tensor loss, d_hidden, d_weight, d_bias;
};

// The loss (times a non-unit upstream gradient, 1.7) and its gradients, fused or from the whole logits.
Result run(const Case& c, bool fused, int64_t chunk = kHeadChunkTokens) {
  at::Tensor h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true);
  at::Tensor b = c.bias.defined() ? c.bias.clone().requires_grad_(true) : at::Tensor();
  at::Tensor loss = fused ? head_cross_entropy(h, w, b, c.targets, chunk)
                          : at::cross_entropy_loss(at::linear(h, w, b), c.targets);
  (loss * 1.7).backward();
  return {loss.detach(), h.grad(), w.grad(), b.defined() ? b.grad() : at::Tensor()};
}

void expect_close(const Result& got, const Result& want, double tolerance) {
  EXPECT_EQ(got.loss.scalar_type(), want.loss.scalar_type());
  EXPECT_LE(relative_error(got.loss, want.loss), tolerance) << got.loss.item<double>() << " vs "
                                                            << want.loss.item<double>();
  EXPECT_LE(relative_error(got.d_hidden, want.d_hidden), tolerance) << "d hidden";
  EXPECT_LE(relative_error(got.d_weight, want.d_weight), tolerance) << "d weight";
  ASSERT_EQ(got.d_bias.defined(), want.d_bias.defined());
  if (want.d_bias.defined()) EXPECT_LE(relative_error(got.d_bias, want.d_bias), tolerance) << "d bias";
  EXPECT_EQ(got.d_hidden.scalar_type(), want.d_hidden.scalar_type());
  EXPECT_EQ(got.d_weight.scalar_type(), want.d_weight.scalar_type());
}

// Chunks that divide N = 48 (1, 16, 48) and that do not (7, 20, 100 > N); with and without bias; with every third
// target ignored and with none.
void check_against_unfused(at::ScalarType dtype, double tolerance) {
  for (int64_t ignore_every : {0, 3}) {
    for (bool bias : {false, true}) {
      const Case c = make_case(48, 16, 53, bias, ignore_every, dtype, 11 + ignore_every + bias);
      const Result want = run(c, /*fused=*/false);
      for (int64_t chunk : {1, 7, 16, 20, 48, 100}) {
        SCOPED_TRACE("chunk " + std::to_string(chunk) + (bias ? ", bias" : "") +
                     ", ignore every " + std::to_string(ignore_every));
        expect_close(run(c, /*fused=*/true, chunk), want, tolerance);
      }
    }
  }
}

TEST(HeadCrossEntropy, MatchesUnfusedFp32) { check_against_unfused(at::kFloat, 2e-6); }

TEST(HeadCrossEntropy, MatchesUnfusedFp64) { check_against_unfused(at::kDouble, 1e-12); }

TEST(HeadCrossEntropy, ChunkingChangesOnlyRounding) {
  // The default chunk (here one chunk) against ragged small ones on a larger case: the per-token terms are the
  // same, only the order of the sums over tokens differs.
  const Case c = make_case(kHeadChunkTokens, 32, 1000, false, 5, at::kFloat, 3);
  const Result whole = run(c, true), chunked = run(c, true, 96);
  EXPECT_LE(relative_error(chunked.loss, whole.loss), 1e-6);
  EXPECT_LE(relative_error(chunked.d_hidden, whole.d_hidden), 1e-6);
  EXPECT_LE(relative_error(chunked.d_weight, whole.d_weight), 1e-6);
}

TEST(HeadCrossEntropy, AllIgnoredIsNanLikeAten) {
  Case c = make_case(8, 4, 5, false, 0, at::kFloat, 4);
  c.targets.fill_(-100);
  EXPECT_TRUE(std::isnan(run(c, true, 3).loss.item<double>()));
  EXPECT_TRUE(std::isnan(run(c, false).loss.item<double>()));
}

TEST(HeadCrossEntropy, TargetOutsideVocabularyIsInputError) {
  for (int64_t bad : {5, -1, -99}) {
    Case c = make_case(8, 4, 5, false, 0, at::kFloat, 5);
    c.targets[3] = bad;
    try {
      head_cross_entropy(c.hidden, c.weight, at::Tensor(), c.targets, 3);
      ADD_FAILURE() << "target " << bad << " accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("outside the vocabulary [0, 5)"), std::string::npos) << e.what();
    }
  }
}

TEST(HeadCrossEntropy, Bf16AutocastLikeUnfused) {
  // Under CPU bf16 autocast, as at::linear + cross-entropy run: bf16 products, an fp32 loss, fp32 gradients of the
  // fp32 inputs; the values agree to bf16 rounding.
  const Case c = make_case(40, 32, 61, true, 4, at::kFloat, 6);
  auto autocast = [&](bool fused) {
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::Tensor h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true);
    at::Tensor b = c.bias.clone().requires_grad_(true);
    at::Tensor loss = fused ? head_cross_entropy(h, w, b, c.targets, 16)
                            : at::cross_entropy_loss(at::linear(h, w, b), c.targets);
    at::autocast::set_cpu_enabled(false);
    at::autocast::clear_cache();
    loss.backward();
    return Result{loss.detach(), h.grad(), w.grad(), b.grad()};
  };
  const Result got = autocast(true), want = autocast(false), exact = run(c, false);
  EXPECT_EQ(got.loss.scalar_type(), at::kFloat);
  EXPECT_EQ(got.d_weight.scalar_type(), at::kFloat);
  expect_close(got, want, 1e-2);
  // The products really ran in bf16: not the fp32 value.
  EXPECT_GT(std::abs(got.loss.item<double>() - exact.loss.item<double>()), 1e-6);
}

}  // namespace
}  // namespace kolos::nn
