#include "kolos/optim/adamw_kernel.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kolos/core/error.h"

namespace kolos::optim {
namespace {

// The step's per-element constants, computed once per call. The update is written as
//   p = p*decay - step_size * m / (sqrt(v)*inv_sqrt_bc2 + eps)
// which is the header's formula with the divisions by the bias corrections hoisted out of the loop (as
// torch.optim.AdamW does), leaving one division and one square root per element.
struct Constants {
  float grad_scale, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay, step_size, inv_sqrt_bc2;
};

Constants make_constants(const AdamWStepArgs& a) {
  Constants c;
  c.grad_scale = a.grad_scale;
  c.beta1 = a.beta1;
  c.one_minus_beta1 = static_cast<float>(1.0 - double(a.beta1));
  c.beta2 = a.beta2;
  c.one_minus_beta2 = static_cast<float>(1.0 - double(a.beta2));
  c.eps = a.eps;
  c.decay = static_cast<float>(1.0 - double(a.lr) * double(a.weight_decay));
  c.step_size = static_cast<float>(double(a.lr) / double(a.bias_correction1));
  c.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(double(a.bias_correction2)));
  return c;
}

// The SIMD paths below perform exactly these operations in this order, with FMA where a multiply feeds an add.
inline void update_scalar(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end,
                          const Constants& c) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i] * c.grad_scale;
    const float mi = c.beta1 * m[i] + c.one_minus_beta1 * gi;
    const float vi = c.beta2 * v[i] + (c.one_minus_beta2 * gi) * gi;
    const float denom = std::sqrt(vi) * c.inv_sqrt_bc2 + c.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * c.decay - c.step_size * (mi / denom);
  }
}

__attribute__((target("avx2,fma"))) void update_avx2(float* p, const float* g, float* m, float* v, int64_t begin,
                                                      int64_t end, const Constants& c) {
  const __m256 grad_scale = _mm256_set1_ps(c.grad_scale);
  const __m256 beta1 = _mm256_set1_ps(c.beta1), one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(c.beta2), one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 eps = _mm256_set1_ps(c.eps), decay = _mm256_set1_ps(c.decay);
  const __m256 step_size = _mm256_set1_ps(c.step_size), inv_sqrt_bc2 = _mm256_set1_ps(c.inv_sqrt_bc2);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), grad_scale);
    const __m256 mi = _mm256_fmadd_ps(beta1, _mm256_loadu_ps(m + i), _mm256_mul_ps(one_minus_beta1, gi));
    const __m256 vi =
        _mm256_fmadd_ps(beta2, _mm256_loadu_ps(v + i), _mm256_mul_ps(_mm256_mul_ps(one_minus_beta2, gi), gi));
    const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), inv_sqrt_bc2, eps);
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(step_size, _mm256_div_ps(mi, denom), pi));
  }
  update_scalar(p, g, m, v, i, end, c);
}

// One 16-lane step of the update; `k` selects the lanes to load and store.
__attribute__((target("avx512f"))) inline void update_avx512_lanes(float* p, const float* g, float* m, float* v,
                                                                     __mmask16 k, const Constants& c) {
  const __m512 gi = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g), _mm512_set1_ps(c.grad_scale));
  const __m512 mi = _mm512_fmadd_ps(_mm512_set1_ps(c.beta1), _mm512_maskz_loadu_ps(k, m),
                                    _mm512_mul_ps(_mm512_set1_ps(c.one_minus_beta1), gi));
  const __m512 vi = _mm512_fmadd_ps(_mm512_set1_ps(c.beta2), _mm512_maskz_loadu_ps(k, v),
                                    _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(c.one_minus_beta2), gi), gi));
  // maskz_sqrt rather than sqrt: GCC 12 warns on the undefined pass-through vector inside _mm512_sqrt_ps.
  const __m512 denom =
      _mm512_fmadd_ps(_mm512_maskz_sqrt_ps(k, vi), _mm512_set1_ps(c.inv_sqrt_bc2), _mm512_set1_ps(c.eps));
  const __m512 pi = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p), _mm512_set1_ps(c.decay));
  _mm512_mask_storeu_ps(m, k, mi);
  _mm512_mask_storeu_ps(v, k, vi);
  _mm512_mask_storeu_ps(p, k, _mm512_fnmadd_ps(_mm512_set1_ps(c.step_size), _mm512_div_ps(mi, denom), pi));
}

__attribute__((target("avx512f"))) void update_avx512(float* p, const float* g, float* m, float* v, int64_t begin,
                                                       int64_t end, const Constants& constants) {
  const Constants c = constants;  // a local copy the stores cannot alias, so the broadcasts leave the loop
  int64_t i = begin;
  // Full vectors with an all-ones mask constant (which compiles to plain loads and stores: masked stores are slow
  // on AMD Zen 4), then the tail of fewer than 16 elements through the same instructions under a lane mask.
  for (; i + 16 <= end; i += 16) update_avx512_lanes(p + i, g + i, m + i, v + i, __mmask16(0xFFFF), c);
  if (i < end) update_avx512_lanes(p + i, g + i, m + i, v + i, __mmask16((1u << (end - i)) - 1u), c);
}

using UpdateFn = void (*)(float*, const float*, float*, float*, int64_t, int64_t, const Constants&);

bool isa_supported(const char* isa) {
  if (std::strcmp(isa, "scalar") == 0) return true;
  if (std::strcmp(isa, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx512") == 0) return __builtin_cpu_supports("avx512f");
  return false;
}

const char* best_isa() {
  static const char* const isa = isa_supported("avx512") ? "avx512" : isa_supported("avx2") ? "avx2" : "scalar";
  return isa;
}

UpdateFn update_fn(const char* isa) {
  KOLOS_ASSERT(isa_supported(isa), "AdamW kernel path '{}' is unknown or not supported by this CPU (best: '{}')", isa,
               best_isa());
  if (std::strcmp(isa, "avx512") == 0) return update_avx512;
  if (std::strcmp(isa, "avx2") == 0) return update_avx2;
  return update_scalar;
}

// Threads take whole blocks, so every block but the last starts at the same alignment as the buffers. A call
// splits over threads only from kGrainBlocks blocks (128K floats of traffic per array) up, where the work
// (~100 us) dwarfs the cost of waking the pool; smaller tensors run on the calling thread.
constexpr int64_t kBlock = 4096;
constexpr int64_t kGrainBlocks = 8;

void run(UpdateFn update, float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepArgs& args) {
  KOLOS_ASSERT(n >= 0, "adamw_step_fp32: n must be >= 0, got {}", n);
  if (n == 0) return;
  KOLOS_ASSERT(p && g && m && v, "adamw_step_fp32: null buffer for {} elements", n);
  KOLOS_ASSERT(args.bias_correction1 > 0.0f && args.bias_correction2 > 0.0f,
               "adamw_step_fp32: bias corrections must be > 0, got {} and {}", args.bias_correction1,
               args.bias_correction2);
  const Constants c = make_constants(args);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t first, int64_t last) {
    update(p, g, m, v, first * kBlock, std::min(n, last * kBlock), c);
  });
}

}  // namespace

void adamw_step_fp32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepArgs& args) {
  static const UpdateFn update = update_fn(best_isa());
  run(update, p, g, m, v, n, args);
}

const char* adamw_kernel_isa() { return best_isa(); }

bool adamw_kernel_isa_supported(const char* isa) { return isa_supported(isa); }

void adamw_step_fp32_isa(const char* isa, float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamWStepArgs& args) {
  run(update_fn(isa), p, g, m, v, n, args);
}

}  // namespace kolos::optim
