#include "kolos/parallel/sequence/ulysses.h"

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"
#include "kolos/parallel/tensor/regions.h"

namespace kolos::parallel::sequence {

at::Tensor ulysses_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& sp) {
  if (sp.size() == 1) return nn::causal_attention(q, k, v);
  KOLOS_ASSERT(q.size(1) % sp.size() == 0, "Ulysses: {} heads do not divide by sp = {}", q.size(1), sp.size());
  // (B, H, T/p, D) → (B, H/p, T, D): scatter the heads (dim 1), gather the sequence (dim 2).
  auto to_heads = [&](const at::Tensor& x) { return tensor::all_to_all(x.contiguous(), 1, 2, sp); };
  // Keys and values move with their KV heads when those divide by p too; else expanded to H first.
  const bool grouped = k.size(1) % sp.size() == 0;
  const at::Tensor kx = grouped ? k : nn::expand_kv(k, q.size(1)), vx = grouped ? v : nn::expand_kv(v, q.size(1));
  at::Tensor y = nn::causal_attention(to_heads(q), to_heads(kx), to_heads(vx));
  return tensor::all_to_all(y.contiguous(), 2, 1, sp);
}

}  // namespace kolos::parallel::sequence
