#include "kolos/nn/param.h"

#include <ATen/CPUGeneratorImpl.h>

namespace kolos::nn {

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
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
