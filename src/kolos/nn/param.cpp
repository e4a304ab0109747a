#include "kolos/nn/param.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>

#include "kolos/core/error.h"

namespace kolos::nn {

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<int64_t> ParamSpec::local_shape(int parts) const {
  std::vector<int64_t> local = shape;
  if (tp_dim >= 0 && parts > 1) local[tp_dim] = (local[tp_dim] + parts - 1) / parts;  // padded when uneven
  return local;
}

at::Tensor shard_param(const at::Tensor& whole, const ParamSpec& spec, int parts, int index) {
  if (spec.tp_dim < 0 || parts == 1) return whole;
  const int64_t d = spec.tp_dim, g = spec.tp_groups, size = whole.size(d);
  if (g == 1) {  // contiguous slices of ceil(size / parts), the last padded with zeros
    const int64_t c = (size + parts - 1) / parts, start = std::min(size, index * c), n = std::min(size, start + c) - start;
    at::Tensor piece = at::zeros(spec.local_shape(parts), whole.options());
    if (n > 0) piece.narrow(d, 0, n).copy_(whole.narrow(d, start, n));
    return piece;
  }
  KOLOS_ASSERT(size % (g * parts) == 0, "parameter {}: dimension {} of size {} does not split into {} groups of {}",
               spec.name, d, size, g, parts);
  // (..., g, parts, size / (g·parts), ...): keep index `index` of the parts axis.
  std::vector<int64_t> split(whole.sizes().begin(), whole.sizes().end());
  split[d] = size / (g * parts);
  split.insert(split.begin() + d, {g, static_cast<int64_t>(parts)});
  return whole.reshape(split).select(d + 1, index).reshape(spec.local_shape(parts)).contiguous();
}

at::Tensor unshard_param(const std::vector<at::Tensor>& pieces, const ParamSpec& spec) {
  const int parts = static_cast<int>(pieces.size());
  if (spec.tp_dim < 0 || parts == 1) return pieces.at(0);
  const int64_t d = spec.tp_dim, g = spec.tp_groups;
  if (g == 1) return at::cat(pieces, d).narrow(d, 0, spec.shape[d]).contiguous();  // the padding dropped
  std::vector<at::Tensor> grouped;  // each piece as (..., g, 1, local / g, ...)
  for (const auto& p : pieces) {
    std::vector<int64_t> split(p.sizes().begin(), p.sizes().end());
    split[d] /= g;
    split.insert(split.begin() + d, {g, 1});
    grouped.push_back(p.reshape(split));
  }
  return at::cat(grouped, d + 1).reshape(spec.shape);
}

int64_t count_params(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs) n += s.numel();
  return n;
}

uint64_t derive_seed(int64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  uint64_t z = h ^ (static_cast<uint64_t>(seed) + 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

at::Tensor init_param(const ParamSpec& spec, int64_t seed) {
  at::Tensor t = at::empty(spec.shape, at::kFloat);
  switch (spec.init) {
    case Init::kZeros:
      t.zero_();
      break;
    case Init::kOnes:
      t.fill_(1.0);
      break;
    case Init::kNormal: {
      at::Generator gen = at::detail::createCPUGenerator(derive_seed(seed, spec.name));
      t.normal_(0.0, spec.std, gen);
      break;
    }
  }
  return t;
}

}  // namespace kolos::nn
