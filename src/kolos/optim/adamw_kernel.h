// Fused AdamW over flat buffers: one pass reads g, m, v, p and writes m, v, p (and, for mixed precision, a bf16
// copy of p).
//
// For each element i, with g' = g[i] * grad_scale (grad_scale folds in 1/loss_scale and the clipping factor):
//   m = beta1*m + (1-beta1)*g'
//   v = beta2*v + (1-beta2)*g'^2
//   p = p - lr*weight_decay*p - lr * (m / bias_correction1) / (sqrt(v / bias_correction2) + eps)
// (decoupled weight decay, Loshchilov & Hutter; equal to torch.optim.AdamW).
// Vectorised with AVX-512 or AVX2+FMA chosen at run time (cpuid), a scalar path otherwise; the element order
// of arithmetic is the same in every path up to FMA contraction. Splits the range over at::get_num_threads()
// threads via at::parallel_for, in whole blocks of 4096 elements, so the thread count changes no bit of the result.
//
// bf16 here is the storage of at::BFloat16: the upper 16 bits of an fp32 value, held as uint16_t. Reading a bf16
// value is exact (a 16-bit shift); writing one rounds to nearest, ties to even, and turns every NaN into 0x7FC0 —
// bit for bit what c10::BFloat16(float) gives. Overflow rounds to ±inf.
//
// Memory traffic per element: fp32 reads 16 bytes and writes 12 (28 B); bf16 gradients save 2 bytes of reads, a
// bf16 copy of p adds 2 bytes of writes. The kernel is memory-bound: `kolos bench optim` compares it with the copy
// bandwidth.
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

// Mixed precision with bf16 gradients: p (the fp32 master weights), m, v: n floats; g_bf16: n bf16 gradients;
// p_bf16_out: n bf16 values that receive the updated p rounded to bf16 (the copy the forward pass reads), or null
// to skip it. Buffers non-overlapping. p, m and v are updated exactly as adamw_step_fp32 would with the gradients
// converted to fp32 first.
void adamw_step_bf16grad(float* p, const uint16_t* g_bf16, float* m, float* v, uint16_t* p_bf16_out, int64_t n,
                         const AdamWStepArgs& args);

// Mixed precision with fp32 gradients: adamw_step_fp32, and the updated p rounded to bf16 written to p_bf16_out
// (n values, not null) in the same pass.
void adamw_step_fp32grad_bf16out(float* p, const float* g, float* m, float* v, uint16_t* p_bf16_out, int64_t n,
                                 const AdamWStepArgs& args);

// Which SIMD path the functions above take on this machine: "avx512", "avx2" or "scalar".
const char* adamw_kernel_isa();

// For tests and benchmarks: whether this machine can run path `isa` ("avx512", "avx2", "scalar"), and the steps
// above forced onto that path. Throw std::logic_error for an unknown or unsupported `isa`.
bool adamw_kernel_isa_supported(const char* isa);
void adamw_step_fp32_isa(const char* isa, float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamWStepArgs& args);
void adamw_step_bf16grad_isa(const char* isa, float* p, const uint16_t* g_bf16, float* m, float* v,
                             uint16_t* p_bf16_out, int64_t n, const AdamWStepArgs& args);
void adamw_step_fp32grad_bf16out_isa(const char* isa, float* p, const float* g, float* m, float* v,
                                     uint16_t* p_bf16_out, int64_t n, const AdamWStepArgs& args);

}  // namespace kolos::optim
