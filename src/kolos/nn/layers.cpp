#include "kolos/nn/layers.h"

#include <cmath>

namespace kolos::nn {

at::Tensor Linear::forward(const at::Tensor& x) const {
  return slot.forward ? slot.forward(x, weight, bias) : at::linear(x, weight, bias);
}

std::vector<at::Tensor> forward_many(const at::Tensor& x, const std::vector<const Linear*>& layers,
                                     const Sharding& sharding) {
  bool split = sharding.column_many != nullptr;
  for (const Linear* l : layers) split = split && l->slot.forward != nullptr;
  if (split) return sharding.column_many(x, layers);
  std::vector<at::Tensor> out;
  for (const Linear* l : layers) out.push_back(l->forward(x));
  return out;
}

at::Tensor embedding(const at::Tensor& weight, const at::Tensor& ids) { return at::embedding(weight, ids); }

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor rms = at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return x * rms * weight;
}

at::Tensor gelu(const at::Tensor& x) { return at::gelu(x, "tanh"); }

std::pair<at::Tensor, at::Tensor> rope_tables(int64_t T, int64_t D, double theta) {
  at::Tensor inv = at::empty({D / 2}, at::kDouble);
  auto acc = inv.accessor<double, 1>();
  for (int64_t i = 0; i < D / 2; ++i) acc[i] = std::pow(theta, -2.0 * i / D);
  at::Tensor pos = at::arange(T, at::kDouble);
  at::Tensor ang = at::outer(pos, inv);          // (T, D/2)
  at::Tensor full = at::cat({ang, ang}, -1);     // (T, D)
  return {full.cos().to(at::kFloat), full.sin().to(at::kFloat)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits, targets);
}

}  // namespace kolos::nn
