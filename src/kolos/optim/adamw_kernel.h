// Fused AdamW over flat fp32 buffers: one pass reads g, m, v, p and writes m, v, p.
//
// For each element i, with g' = g[i] * grad_scale (grad_scale folds in 1/loss_scale and the clipping factor):
//   m = beta1*m + (1-beta1)*g'
//   v = beta2*v + (1-beta2)*g'^2
//   p = p - lr*weight_decay*p - lr * (m / bias_correction1) / (sqrt(v / bias_correction2) + eps)
// (decoupled weight decay, Loshchilov & Hutter; equal to torch.optim.AdamW).
// Vectorised with AVX-512 or AVX2+FMA chosen at run time (cpuid), a scalar path otherwise; the element order
// of arithmetic is the same in every path up to FMA contraction. Splits the range over at::get_num_threads()
// threads via at::parallel_for.
#pragma once

#include <cstdint>

namespace kolos::optim {

struct AdamWStepArgs {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;
  float bias_correction1 = 1.0f;  // 1 - beta1^t
  float bias_correction2 = 1.0f;  // 1 - beta2^t
  float grad_scale = 1.0f;
};

// p, g, m, v: n floats each, non-overlapping. Thread-safe for disjoint buffers.
void adamw_step_fp32(float* p, const float* g, float* m, float* v, int64_t n, const AdamWStepArgs& args);

// Which SIMD path adamw_step_fp32 takes on this machine: "avx512", "avx2" or "scalar".
const char* adamw_kernel_isa();

// For tests and benchmarks: whether this machine can run path `isa` ("avx512", "avx2", "scalar"), and
// adamw_step_fp32 forced onto that path. Throws std::logic_error for an unknown or unsupported `isa`.
bool adamw_kernel_isa_supported(const char* isa);
void adamw_step_fp32_isa(const char* isa, float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamWStepArgs& args);

}  // namespace kolos::optim
