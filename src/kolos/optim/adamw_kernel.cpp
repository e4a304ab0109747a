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

// One call's buffers. G, the gradient's element type, is float (fp32) or uint16_t (bf16 bits); p_bf16 is null
// when no bf16 copy of p is wanted.
template <typename G>
struct Buffers {
  float* p;
  const G* g;
  float* m;
  float* v;
  uint16_t* p_bf16;
};

// ----- scalar path -----
// The SIMD paths below perform exactly these operations in this order, with FMA where a multiply feeds an add.

inline float grad_to_float(float g) { return g; }

inline float grad_to_float(uint16_t g) {
  const uint32_t bits = uint32_t(g) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest, ties to even: adding 0x7FFF plus the lowest kept bit carries into the kept bits exactly when
// the dropped half is above one half, or is one half and the kept value is odd. NaN needs its own case: the carry
// could turn it into an infinity.
inline uint16_t float_to_bf16(float x) {
  if (std::isnan(x)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

template <typename G>
void update_scalar(const Buffers<G>& b, int64_t begin, int64_t end, const Constants& c) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = grad_to_float(b.g[i]) * c.grad_scale;
    const float mi = c.beta1 * b.m[i] + c.one_minus_beta1 * gi;
    const float vi = c.beta2 * b.v[i] + (c.one_minus_beta2 * gi) * gi;
    const float denom = std::sqrt(vi) * c.inv_sqrt_bc2 + c.eps;
    const float pi = b.p[i] * c.decay - c.step_size * (mi / denom);
    b.m[i] = mi;
    b.v[i] = vi;
    b.p[i] = pi;
    if (b.p_bf16) b.p_bf16[i] = float_to_bf16(pi);
  }
}

// The last few elements of a range, fewer than one vector of W, copied into zero-padded vectors so that they go
// through the same vector instructions as the rest (zero lanes compute 0 / eps = 0, no exception).
template <typename G, int W>
struct Tail {
  float p[W] = {}, m[W] = {}, v[W] = {};
  G g[W] = {};
  uint16_t p_bf16[W] = {};
  int64_t count;

  Tail(const Buffers<G>& b, int64_t begin, int64_t end) : count(end - begin) {
    std::copy(b.p + begin, b.p + end, p);
    std::copy(b.g + begin, b.g + end, g);
    std::copy(b.m + begin, b.m + end, m);
    std::copy(b.v + begin, b.v + end, v);
  }
  void store(const Buffers<G>& b, int64_t begin) const {
    std::copy(p, p + count, b.p + begin);
    std::copy(m, m + count, b.m + begin);
    std::copy(v, v + count, b.v + begin);
    if (b.p_bf16) std::copy(p_bf16, p_bf16 + count, b.p_bf16 + begin);
  }
};

// ----- AVX2 + FMA: 8 lanes -----

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* g) { return _mm256_loadu_ps(g); }

__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* g) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// float_to_bf16 on 8 lanes; the 32-bit results (each ≤ 0xFFFF) are narrowed with an unsigned saturating pack.
__attribute__((target("avx2,fma"))) inline void store8_bf16(uint16_t* out, __m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}

template <typename G, bool kBf16Out>
__attribute__((target("avx2,fma"))) inline void update8_avx2(float* p, const G* g, float* m, float* v,
                                                              uint16_t* p_bf16, const Constants& c) {
  const __m256 gi = _mm256_mul_ps(load8(g), _mm256_set1_ps(c.grad_scale));
  const __m256 mi = _mm256_fmadd_ps(_mm256_set1_ps(c.beta1), _mm256_loadu_ps(m),
                                    _mm256_mul_ps(_mm256_set1_ps(c.one_minus_beta1), gi));
  const __m256 vi = _mm256_fmadd_ps(_mm256_set1_ps(c.beta2), _mm256_loadu_ps(v),
                                    _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(c.one_minus_beta2), gi), gi));
  const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), _mm256_set1_ps(c.inv_sqrt_bc2), _mm256_set1_ps(c.eps));
  const __m256 pi = _mm256_fnmadd_ps(_mm256_set1_ps(c.step_size), _mm256_div_ps(mi, denom),
                                     _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(c.decay)));
  _mm256_storeu_ps(m, mi);
  _mm256_storeu_ps(v, vi);
  _mm256_storeu_ps(p, pi);
  if (kBf16Out) store8_bf16(p_bf16, pi);
}

template <typename G, bool kBf16Out>
__attribute__((target("avx2,fma"))) void range_avx2(const Buffers<G>& buffers, int64_t begin, int64_t end,
                                                     const Constants& constants) {
  // Local copies the stores cannot alias, so that the broadcasts and pointers stay in registers.
  const Constants c = constants;
  const Buffers<G> b = buffers;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8)
    update8_avx2<G, kBf16Out>(b.p + i, b.g + i, b.m + i, b.v + i, kBf16Out ? b.p_bf16 + i : nullptr, c);
  if (i < end) {
    Tail<G, 8> t(b, i, end);
    update8_avx2<G, kBf16Out>(t.p, t.g, t.m, t.v, t.p_bf16, c);
    t.store(b, i);
  }
}

template <typename G>
__attribute__((target("avx2,fma"))) void update_avx2(const Buffers<G>& b, int64_t begin, int64_t end,
                                                      const Constants& c) {
  if (b.p_bf16)
    range_avx2<G, true>(b, begin, end, c);
  else
    range_avx2<G, false>(b, begin, end, c);
}

// ----- AVX-512F: 16 lanes -----

// GCC 12's AVX-512 intrinsics pass a self-initialised "undefined" vector as the unused merge operand of shifts and
// conversions, which -Wmaybe-uninitialized reports once they are inlined here; the operand is never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__attribute__((target("avx512f"))) inline __m512 load16(const float* g) { return _mm512_loadu_ps(g); }

__attribute__((target("avx512f"))) inline __m512 load16(const uint16_t* g) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// float_to_bf16 on 16 lanes; vpmovdw narrows the 32-bit results (each ≤ 0xFFFF) to 16 bits.
__attribute__((target("avx512f"))) inline void store16_bf16(uint16_t* out, __m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(r));
}

template <typename G, bool kBf16Out>
__attribute__((target("avx512f"))) inline void update16_avx512(float* p, const G* g, float* m, float* v,
                                                                 uint16_t* p_bf16, const Constants& c) {
  const __m512 gi = _mm512_mul_ps(load16(g), _mm512_set1_ps(c.grad_scale));
  const __m512 mi = _mm512_fmadd_ps(_mm512_set1_ps(c.beta1), _mm512_loadu_ps(m),
                                    _mm512_mul_ps(_mm512_set1_ps(c.one_minus_beta1), gi));
  const __m512 vi = _mm512_fmadd_ps(_mm512_set1_ps(c.beta2), _mm512_loadu_ps(v),
                                    _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(c.one_minus_beta2), gi), gi));
  const __m512 denom = _mm512_fmadd_ps(_mm512_sqrt_ps(vi), _mm512_set1_ps(c.inv_sqrt_bc2), _mm512_set1_ps(c.eps));
  const __m512 pi = _mm512_fnmadd_ps(_mm512_set1_ps(c.step_size), _mm512_div_ps(mi, denom),
                                     _mm512_mul_ps(_mm512_loadu_ps(p), _mm512_set1_ps(c.decay)));
  _mm512_storeu_ps(m, mi);
  _mm512_storeu_ps(v, vi);
  _mm512_storeu_ps(p, pi);
  if (kBf16Out) store16_bf16(p_bf16, pi);
}

template <typename G, bool kBf16Out>
__attribute__((target("avx512f"))) void range_avx512(const Buffers<G>& buffers, int64_t begin, int64_t end,
                                                       const Constants& constants) {
  // Local copies the stores cannot alias, so that the broadcasts and pointers stay in registers.
  const Constants c = constants;
  const Buffers<G> b = buffers;
  int64_t i = begin;
  for (; i + 16 <= end; i += 16)
    update16_avx512<G, kBf16Out>(b.p + i, b.g + i, b.m + i, b.v + i, kBf16Out ? b.p_bf16 + i : nullptr, c);
  if (i < end) {
    Tail<G, 16> t(b, i, end);
    update16_avx512<G, kBf16Out>(t.p, t.g, t.m, t.v, t.p_bf16, c);
    t.store(b, i);
  }
}

template <typename G>
__attribute__((target("avx512f"))) void update_avx512(const Buffers<G>& b, int64_t begin, int64_t end,
                                                        const Constants& c) {
  if (b.p_bf16)
    range_avx512<G, true>(b, begin, end, c);
  else
    range_avx512<G, false>(b, begin, end, c);
}

#pragma GCC diagnostic pop

// ----- dispatch -----

template <typename G>
using UpdateFn = void (*)(const Buffers<G>&, int64_t, int64_t, const Constants&);

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

template <typename G>
UpdateFn<G> update_fn(const char* isa) {
  KOLOS_ASSERT(isa_supported(isa), "AdamW kernel path '{}' is unknown or not supported by this CPU (best: '{}')", isa,
               best_isa());
  if (std::strcmp(isa, "avx512") == 0) return update_avx512<G>;
  if (std::strcmp(isa, "avx2") == 0) return update_avx2<G>;
  return update_scalar<G>;
}

template <typename G>
UpdateFn<G> best_update_fn() {
  static const UpdateFn<G> update = update_fn<G>(best_isa());
  return update;
}

// Threads take whole blocks, so every block but the last starts at the same alignment as the buffers and the
// split cannot change a bit. A call splits over threads only from kGrainBlocks blocks (128K floats of traffic per
// array) up, where the work (~100 us) dwarfs the cost of waking the pool; smaller tensors run on the calling thread.
constexpr int64_t kBlock = 4096;
constexpr int64_t kGrainBlocks = 8;

template <typename G>
void run(const char* what, UpdateFn<G> update, const Buffers<G>& b, int64_t n, const AdamWStepArgs& args) {
  KOLOS_ASSERT(n >= 0, "{}: n must be >= 0, got {}", what, n);
  if (n == 0) return;
  KOLOS_ASSERT(b.p && b.g && b.m && b.v, "{}: null buffer for {} elements", what, n);
  KOLOS_ASSERT(args.bias_correction1 > 0.0f && args.bias_correction2 > 0.0f,
               "{}: bias corrections must be > 0, got {} and {}", what, args.bias_correction1, args.bias_correction2);
  const Constants c = make_constants(args);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t first, int64_t last) {
    update(b, first * kBlock, std::min(n, last * kBlock), c);
  });
}

}  // namespace

void adamw_step_fp32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepArgs& args) {
  run<float>("adamw_step_fp32", best_update_fn<float>(), {p, g, m, v, nullptr}, n, args);
}

void adamw_step_bf16grad(float* p, const uint16_t* g_bf16, float* m, float* v, uint16_t* p_bf16_out, int64_t n,
                         const AdamWStepArgs& args) {
  run<uint16_t>("adamw_step_bf16grad", best_update_fn<uint16_t>(), {p, g_bf16, m, v, p_bf16_out}, n, args);
}

void adamw_step_fp32grad_bf16out(float* p, const float* g, float* m, float* v, uint16_t* p_bf16_out, int64_t n,
                                 const AdamWStepArgs& args) {
  KOLOS_ASSERT(p_bf16_out || n == 0, "adamw_step_fp32grad_bf16out: null bf16 output for {} elements", n);
  run<float>("adamw_step_fp32grad_bf16out", best_update_fn<float>(), {p, g, m, v, p_bf16_out}, n, args);
}

const char* adamw_kernel_isa() { return best_isa(); }

bool adamw_kernel_isa_supported(const char* isa) { return isa_supported(isa); }

void adamw_step_fp32_isa(const char* isa, float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamWStepArgs& args) {
  run<float>("adamw_step_fp32", update_fn<float>(isa), {p, g, m, v, nullptr}, n, args);
}

void adamw_step_bf16grad_isa(const char* isa, float* p, const uint16_t* g_bf16, float* m, float* v,
                             uint16_t* p_bf16_out, int64_t n, const AdamWStepArgs& args) {
  run<uint16_t>("adamw_step_bf16grad", update_fn<uint16_t>(isa), {p, g_bf16, m, v, p_bf16_out}, n, args);
}

void adamw_step_fp32grad_bf16out_isa(const char* isa, float* p, const float* g, float* m, float* v,
                                     uint16_t* p_bf16_out, int64_t n, const AdamWStepArgs& args) {
  KOLOS_ASSERT(p_bf16_out || n == 0, "adamw_step_fp32grad_bf16out: null bf16 output for {} elements", n);
  run<float>("adamw_step_fp32grad_bf16out", update_fn<float>(isa), {p, g, m, v, p_bf16_out}, n, args);
}

}  // namespace kolos::optim
