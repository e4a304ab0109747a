// The fused AdamW kernel against a float64 AdamW written here from the formula (Loshchilov & Hutter, as in
// torch.optim.AdamW), and its SIMD paths against its scalar path; its mixed-precision forms (bf16 gradients in,
// bf16 copy of p out) against the same reference on the bf16-rounded gradients and c10::BFloat16's rounding.
#include "kolos/optim/adamw_kernel.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
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

// ‖got − want‖ / ‖want‖, or / min_norm where ‖want‖ is smaller.
template <typename T>
double relative_error(const std::vector<float>& got, const std::vector<T>& want, double min_norm = 1e-30) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
    norm += double(want[i]) * double(want[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), min_norm);
}

double l2(const std::vector<float>& x) {
  double sum = 0.0;
  for (float xi : x) sum += double(xi) * double(xi);
  return std::sqrt(sum);
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

// ----- mixed precision: bf16 gradients in, bf16 copy of p out -----

// c10's conversions are the reference for the bf16 bit patterns (round to nearest even, NaN -> 0x7FC0).
uint16_t to_bf16(float x) { return c10::BFloat16(x).x; }
float from_bf16(uint16_t bits) { return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits())); }

std::vector<uint16_t> random_grad_bf16(int64_t n, std::mt19937& rng) {
  const std::vector<float> g = random_grad(n, rng);
  std::vector<uint16_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = to_bf16(g[i]);
  return out;
}

std::vector<float> widen(const std::vector<uint16_t>& bf16) {
  std::vector<float> out(bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) out[i] = from_bf16(bf16[i]);
  return out;
}

// Elements whose bf16 copy is not c10's rounding of the fp32 master (bit patterns compared).
int64_t bf16_copy_mismatches(const std::vector<uint16_t>& copy, const std::vector<float>& master) {
  int64_t bad = 0;
  for (size_t i = 0; i < master.size(); ++i) bad += copy[i] != to_bf16(master[i]);
  return bad;
}

struct MixedState : State {
  std::vector<uint16_t> p_bf16;
};

// kSteps seeded bf16 gradients of n elements.
std::vector<std::vector<uint16_t>> grads_bf16(int64_t n, uint32_t seed) {
  std::mt19937 grad_rng(seed);
  std::vector<std::vector<uint16_t>> out;
  for (int t = 1; t <= kSteps; ++t) out.push_back(random_grad_bf16(n, grad_rng));
  return out;
}

// kSteps steps of adamw_step_bf16grad on path `isa` ("" for the default path) from a seeded start.
MixedState run_bf16grad(const std::string& isa, uint32_t seed, const std::vector<std::vector<uint16_t>>& grads,
                        bool with_copy = true) {
  const int64_t n = static_cast<int64_t>(grads[0].size());
  MixedState s{random_state(n, seed), std::vector<uint16_t>(n, 0xFFFF)};
  uint16_t* copy = with_copy ? s.p_bf16.data() : nullptr;
  for (int t = 1; t <= kSteps; ++t) {
    const uint16_t* g = grads[t - 1].data();
    const AdamWStepArgs a = args_at_step(base_args(), t);
    if (isa.empty())
      adamw_step_bf16grad(s.p.data(), g, s.m.data(), s.v.data(), copy, n, a);
    else
      adamw_step_bf16grad_isa(isa.c_str(), s.p.data(), g, s.m.data(), s.v.data(), copy, n, a);
  }
  return s;
}

TEST(AdamWKernel, Bf16GradMatchesFloat64ReferenceOverTenSteps) {
  std::vector<std::string> paths = supported_isas();
  paths.push_back("");  // the default, dispatched path
  for (const auto& isa : paths) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE("isa '" + isa + "', n = " + std::to_string(n));
      const uint32_t seed = 2000 + uint32_t(n);
      const State start = random_state(n, seed);
      const auto grads = grads_bf16(n, seed + 1);
      Reference ref{std::vector<double>(start.p.begin(), start.p.end()), std::vector<double>(n, 0.0),
                    std::vector<double>(n, 0.0)};
      for (int t = 1; t <= kSteps; ++t) ref.step(widen(grads[t - 1]), base_args(), t);

      const MixedState got = run_bf16grad(isa, seed, grads);
      EXPECT_LE(relative_error(got.p, ref.p), 1e-6);
      EXPECT_LE(relative_error(got.m, ref.m), 1e-6);
      EXPECT_LE(relative_error(got.v, ref.v), 1e-6);
      EXPECT_GT(relative_error(start.p, ref.p), 1e-2);
      EXPECT_EQ(bf16_copy_mismatches(got.p_bf16, got.p), 0);
      // The copy is the master to bf16 precision (8 significant bits: relative rounding error < 2^-8).
      EXPECT_LE(relative_error(widen(got.p_bf16), ref.p), 1.0 / 256);

      // Without a copy, the fp32 state is the same bit for bit.
      const MixedState no_copy = run_bf16grad(isa, seed, grads, /*with_copy=*/false);
      EXPECT_EQ(no_copy.p, got.p);
      EXPECT_EQ(no_copy.m, got.m);
      EXPECT_EQ(no_copy.v, got.v);
      EXPECT_EQ(no_copy.p_bf16, std::vector<uint16_t>(n, 0xFFFF));
    }
  }
}

TEST(AdamWKernel, Bf16GradSimdPathsMatchScalar) {
  for (const auto& isa : supported_isas()) {
    if (isa == "scalar") continue;
    for (int64_t n : kSizes) {
      SCOPED_TRACE("isa '" + isa + "', n = " + std::to_string(n));
      const auto grads = grads_bf16(n, 18 + uint32_t(n));
      const MixedState scalar = run_bf16grad("scalar", 17 + uint32_t(n), grads);
      const MixedState simd = run_bf16grad(isa, 17 + uint32_t(n), grads);
      // p relative to the larger of its final and starting norms: with few elements the updates can carry p
      // close to zero (n = 1 ends at -2.4e-4 from -0.05), where a last-bit difference of FMA contraction in an
      // update is a large fraction of p itself.
      EXPECT_LE(relative_error(simd.p, scalar.p, l2(random_state(n, 17 + uint32_t(n)).p)), 1e-6);
      EXPECT_LE(relative_error(simd.m, scalar.m), 1e-6);
      EXPECT_LE(relative_error(simd.v, scalar.v), 1e-6);
      EXPECT_EQ(bf16_copy_mismatches(scalar.p_bf16, scalar.p), 0);
      EXPECT_EQ(bf16_copy_mismatches(simd.p_bf16, simd.p), 0);
    }
  }
}

// fp32 gradients with a bf16 copy out: the fp32 step of the same path, bit for bit, plus the rounding.
TEST(AdamWKernel, Fp32GradBf16OutIsTheFp32StepPlusItsRounding) {
  for (const auto& isa : supported_isas()) {
    for (int64_t n : kSizes) {
      SCOPED_TRACE("isa '" + isa + "', n = " + std::to_string(n));
      State fp32 = random_state(n, 5), mixed = fp32;
      std::vector<uint16_t> copy(n, 0xFFFF);
      std::mt19937 grad_rng(6);
      for (int t = 1; t <= 3; ++t) {
        const std::vector<float> g = random_grad(n, grad_rng);
        const AdamWStepArgs a = args_at_step(base_args(), t);
        adamw_step_fp32_isa(isa.c_str(), fp32.p.data(), g.data(), fp32.m.data(), fp32.v.data(), n, a);
        adamw_step_fp32grad_bf16out_isa(isa.c_str(), mixed.p.data(), g.data(), mixed.m.data(), mixed.v.data(),
                                        copy.data(), n, a);
      }
      EXPECT_EQ(mixed.p, fp32.p);
      EXPECT_EQ(mixed.m, fp32.m);
      EXPECT_EQ(mixed.v, fp32.v);
      EXPECT_EQ(bf16_copy_mismatches(copy, mixed.p), 0);
    }
  }
  float x = 0.0f;
  EXPECT_THROW(adamw_step_fp32grad_bf16out(&x, &x, &x, &x, nullptr, 1, AdamWStepArgs{}), std::logic_error);
}

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Rounding to bf16 at its edges, on every path: with lr = 0 and zero gradients the step leaves p exactly as it
// is, so the copy is the rounding of the values written here. Expected patterns worked out by hand from
// round-to-nearest-even (and checked against c10 as well).
TEST(AdamWKernel, Bf16CopyRoundsToNearestEvenAtTheEdges) {
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3F800000, 0x3F80},  // 1.0, exact
      {0x3F808000, 0x3F80},  // a tie, kept part even: down
      {0x3F818000, 0x3F82},  // a tie, kept part odd: up
      {0x3F808001, 0x3F81},  // just above a tie: up
      {0x3F807FFF, 0x3F80},  // just below a tie: down
      {0xBF818000, 0xBF82},  // negative tie, odd: away from zero
      {0x7F7FFFFF, 0x7F80},  // the largest float rounds to +inf
      {0x7F800000, 0x7F80},  // +inf
      {0xFF800000, 0xFF80},  // -inf
      {0x80000000, 0x8000},  // -0
      {0x00018000, 0x0002},  // a subnormal tie, odd: up
      {0x00008000, 0x0000},  // a subnormal tie, even: down to +0
      {0x7FC00000, 0x7FC0},  // quiet NaN
      {0xFFC00001, 0x7FC0},  // negative NaN with a payload
      {0x7F800001, 0x7FC0},  // signalling NaN
  };
  // Three rounds of the cases: 45 elements fill whole vectors of 8 and 16 lanes and leave a tail for both.
  std::vector<float> p0;
  std::vector<uint16_t> want;
  for (int round = 0; round < 3; ++round)
    for (const auto& [bits, expected] : cases) {
      p0.push_back(from_bits(bits));
      want.push_back(expected);
      ASSERT_EQ(to_bf16(from_bits(bits)), expected) << std::hex << bits;
    }
  const int64_t n = static_cast<int64_t>(p0.size());
  AdamWStepArgs a = args_at_step(base_args(), 1);
  a.lr = 0.0f;
  for (const auto& isa : supported_isas()) {
    for (bool bf16_grad : {true, false}) {
      SCOPED_TRACE("isa '" + isa + "', bf16 gradients: " + std::to_string(bf16_grad));
      std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f), g(n, 0.0f);
      std::vector<uint16_t> g_bf16(n, 0), copy(n, 0x1234);
      if (bf16_grad)
        adamw_step_bf16grad_isa(isa.c_str(), p.data(), g_bf16.data(), m.data(), v.data(), copy.data(), n, a);
      else
        adamw_step_fp32grad_bf16out_isa(isa.c_str(), p.data(), g.data(), m.data(), v.data(), copy.data(), n, a);
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(copy[i], want[i]) << "element " << i << ", p = " << p0[i];
    }
  }
}

TEST(AdamWKernel, Bf16GradThreadCountDoesNotChangeResult) {
  const auto grads = grads_bf16(100003, 14);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const MixedState one = run_bf16grad("", 13, grads);
  at::set_num_threads(2);
  const MixedState two = run_bf16grad("", 13, grads);
  at::set_num_threads(threads);
  EXPECT_EQ(one.p, two.p);
  EXPECT_EQ(one.m, two.m);
  EXPECT_EQ(one.v, two.v);
  EXPECT_EQ(one.p_bf16, two.p_bf16);
}

}  // namespace
}  // namespace kolos::optim
