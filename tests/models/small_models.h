// Small GPT-2 / LLaMA shapes and random parameters for tests that compare a model against a reference (PyTorch, one
// process): models_test.cpp, tests/parallel/tp1d_test.cpp, tests/parallel/sequence_test.cpp.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "kolos/config/config.h"
#include "kolos/models/model.h"

namespace kolos::test {

// 2 layers, hidden 32, 4 heads (LLaMA: 2 key/value heads, grouped-query), vocabulary 37, sequence 24.
inline ModelConfig small_config(const std::string& arch) {
  ModelConfig c;
  c.arch = arch;
  c.layers = 2;
  c.hidden = 32;
  c.heads = 4;
  c.kv_heads = arch == "llama" ? 2 : 4;  // grouped-query attention: 2 query heads per key/value head
  c.ffn_hidden = arch == "llama" ? 72 : 128;
  c.vocab = 37;
  c.seq_len = 24;
  c.tie_embeddings = arch == "gpt2";
  return c;
}

// Random parameters on the model's global shapes, on scales where every part of the model matters (O(1)
// activations, peaked attention, norms and biases away from their 1 / 0 initial values).
inline std::vector<at::Tensor> random_params(const models::Model& model, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> tensors;
  for (const auto& spec : model.param_specs()) {
    at::Tensor r = at::randn(spec.shape, gen, at::kFloat);
    switch (spec.init) {
      case nn::Init::kOnes: tensors.push_back(1.0 + 0.2 * r); break;
      case nn::Init::kZeros: tensors.push_back(0.2 * r); break;
      case nn::Init::kNormal:
        tensors.push_back(spec.is_embedding ? 0.5 * r : r / std::sqrt(static_cast<double>(spec.shape.back())));
        break;
    }
  }
  return tensors;
}

}  // namespace kolos::test
