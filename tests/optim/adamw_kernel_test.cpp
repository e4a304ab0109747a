// The fused AdamW kernel against a float64 AdamW written here from the formula (Loshchilov & Hutter, as in
// torch.optim.AdamW), and its SIMD paths against its scalar path.
#include "kolos/optim/adamw_kernel.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace kolos::optim {
namespace {

const std::vector<int64_t> kSizes = {1, 7, 15, 16, 17, 1000, 100003};
const std::vector<std::string> kIsas = {"scalar", "avx2", "avx512"};
constexpr int kSteps = 10;

// Hyper-parameters chosen so that every term matters: lr large enough that 10 updates move p by several percent,
// eps comparable to sqrt(v) for the smallest gradients, non-trivial weight decay and grad_scale.
AdamWStepArgs base_args() {
  AdamWStepArgs a;
  a.lr = 1e-2f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-4f;
  a.weight_decay = 0.1f;
  a.grad_scale = 0.37f;
  return a;
}

AdamWStepArgs args_at_step(AdamWStepArgs a, int t) {
  a.bias_correction1 = static_cast<float>(1.0 - std::pow(double(a.beta1), t));
  a.bias_correction2 = static_cast<float>(1.0 - std::pow(double(a.beta2), t));
  return a;
}

// The AdamW rule in float64, one plain loop; the bias corrections are computed here, not taken from args.
struct Reference {
  std::vector<double> p, m, v;
  void step(const std::vector<float>& g, const AdamWStepArgs& a, int t) {
    const double lr = a.lr, b1 = a.beta1, b2 = a.beta2, eps = a.eps, wd = a.weight_decay;
    const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      const double gi = double(g[i]) * double(a.grad_scale);
      m[i] = b1 * m[i] + (1.0 - b1) * gi;
      v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
      const double m_hat = m[i] / bc1, v_hat = v[i] / bc2;
      p[i] = p[i] - lr * wd * p[i] - lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

struct State {
  std::vector<float> p, m, v;
};

State random_state(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  State s{std::vector<float>(n), std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f)};
  for (auto& x : s.p) x = normal(rng);
  return s;
}

// Gradients spanning four decades, so that eps dominates sqrt(v) for some elements and not for others.
std::vector<float> random_grad(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> decade(-3.0f, 1.0f);
  std::vector<float> g(n);
  for (auto& x : g) x = normal(rng) * std::pow(10.0f, decade(rng));
  return g;
}

template <typename T>
double relative_error(const std::vector<float>& got, const std::vector<T>& want) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
    norm += double(want[i]) * double(want[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const auto& isa : kIsas)
    if (adamw_kernel_isa_supported(isa.c_str())) out.push_back(isa);
  return out;
}

// Runs kSteps steps of the kernel on path `isa` ("" for the default path) from a seeded start.
State run_kernel(const std::string& isa, int64_t n, uint32_t seed) {
  State s = random_state(n, seed);
  std::mt19937 grad_rng(seed + 1);
  for (int t = 1; t <= kSteps; ++t) {
    const std::vector<float> g = random_grad(n, grad_rng);
    const AdamWStepArgs a = args_at_step(base_args(), t);
    if (isa.empty())
      adamw_step_fp32(s.p.data(), g.data(), s.m.data(), s.v.data(), n, a);
    else
      adamw_step_fp32_isa(isa.c_str(), s.p.data(), g.data(), s.m.data(), s.v.data(), n, a);
  }
  return s;
}

TEST(AdamWKernel, MatchesFloat64ReferenceOverTenSteps) {
  std::vector<std::string> paths = supported_isas();
  paths.push_back("");  // the default, dispatched path
  for (const auto& isa : paths) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE("isa '" + isa + "', n = " + std::to_string(n));
      const uint32_t seed = 1000 + uint32_t(n);
      const State start = random_state(n, seed);
      Reference ref{std::vector<double>(start.p.begin(), start.p.end()), std::vector<double>(n, 0.0),
                    std::vector<double>(n, 0.0)};
      std::mt19937 grad_rng(seed + 1);
      for (int t = 1; t <= kSteps; ++t) ref.step(random_grad(n, grad_rng), base_args(), t);

      const State got = run_kernel(isa, n, seed);
      EXPECT_LE(relative_error(got.p, ref.p), 1e-6);
      EXPECT_LE(relative_error(got.m, ref.m), 1e-6);
      EXPECT_LE(relative_error(got.v, ref.v), 1e-6);
      // The comparison has teeth: the updates moved p far more than the tolerance.
      EXPECT_GT(relative_error(start.p, ref.p), 1e-2);
    }
  }
}

TEST(AdamWKernel, SimdPathsMatchScalar) {
  for (const auto& isa : supported_isas()) {
    if (isa == "scalar") continue;
    for (int64_t n : kSizes) {
      SCOPED_TRACE("isa '" + isa + "', n = " + std::to_string(n));
      const State scalar = run_kernel("scalar", n, 7 + uint32_t(n));
      const State simd = run_kernel(isa, n, 7 + uint32_t(n));
      EXPECT_LE(relative_error(simd.p, scalar.p), 1e-6);
      EXPECT_LE(relative_error(simd.m, scalar.m), 1e-6);
      EXPECT_LE(relative_error(simd.v, scalar.v), 1e-6);
    }
  }
}

TEST(AdamWKernel, DefaultPathIsTheWidestSupported) {
  const std::string isa = adamw_kernel_isa();
  EXPECT_TRUE(adamw_kernel_isa_supported(isa.c_str()));
  const std::string widest = adamw_kernel_isa_supported("avx512") ? "avx512"
                             : adamw_kernel_isa_supported("avx2") ? "avx2"
                                                                  : "scalar";
  EXPECT_EQ(isa, widest);
  EXPECT_FALSE(adamw_kernel_isa_supported("sse9"));
  float x = 0.0f;
  EXPECT_THROW(adamw_step_fp32_isa("sse9", &x, &x, &x, &x, 1, AdamWStepArgs{}), std::logic_error);
}

// With zero gradient and zero state the Adam term is exactly 0/(0+eps) = 0: p only decays, m and v stay 0.
TEST(AdamWKernel, ZeroGradientOnlyDecays) {
  for (const auto& isa : supported_isas()) {
    for (float weight_decay : {0.0f, 0.1f}) {
      SCOPED_TRACE("isa '" + isa + "', weight_decay = " + std::to_string(weight_decay));
      const int64_t n = 1000;
      State s = random_state(n, 3);
      const std::vector<float> p0 = s.p, g(n, 0.0f);
      AdamWStepArgs a = args_at_step(base_args(), 1);
      a.weight_decay = weight_decay;
      adamw_step_fp32_isa(isa.c_str(), s.p.data(), g.data(), s.m.data(), s.v.data(), n, a);
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = double(p0[i]) * (1.0 - double(a.lr) * double(weight_decay));
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(s.m[i], 0.0f);
        ASSERT_EQ(s.v[i], 0.0f);
        ASSERT_TRUE(std::isfinite(s.p[i]));
      }
      if (weight_decay == 0.0f)
        EXPECT_EQ(s.p, p0);
      else
        EXPECT_LE(relative_error(s.p, want), 1e-7);
    }
  }
}

// The split over threads is by whole blocks of elements, so the thread count cannot change a single bit.
TEST(AdamWKernel, ThreadCountDoesNotChangeResult) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const State one = run_kernel("", 100003, 11);
  at::set_num_threads(2);
  const State two = run_kernel("", 100003, 11);
  at::set_num_threads(threads);
  EXPECT_EQ(one.p, two.p);
  EXPECT_EQ(one.m, two.m);
  EXPECT_EQ(one.v, two.v);
}

TEST(AdamWKernel, EmptyRangeIsANoOpAndNegativeThrows) {
  adamw_step_fp32(nullptr, nullptr, nullptr, nullptr, 0, AdamWStepArgs{});
  float x = 1.0f;
  EXPECT_THROW(adamw_step_fp32(&x, &x, &x, &x, -1, AdamWStepArgs{}), std::logic_error);
}

}  // namespace
}  // namespace kolos::optim
