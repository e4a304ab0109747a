// Small GPT-2 / LLaMA shapes and random parameters for tests that compare a model against a reference (PyTorch, one
// process): models_test.cpp, tests/parallel/tp1d_test.cpp, tp2d_test.cpp, sequence_test.cpp.
#pragma once

#include <cmath>
#include <memory>
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

// The one-process run a parallel model is compared with: random ids and targets (B, T) from `data_seed`, the whole
// parameters from random_params(`param_seed`) (kept untouched in `whole`; the model trains on copies), the loss,
// and after its backward every parameter's gradient in model->params().
struct ReferenceRun {
  at::Tensor ids, targets, loss;
  std::unique_ptr<models::Model> model;
  std::vector<at::Tensor> whole;
};

inline ReferenceRun reference_run(const ModelConfig& config, int64_t B, int64_t T, uint64_t data_seed,
                                  uint64_t param_seed) {
  ReferenceRun run;
  auto gen = at::detail::createCPUGenerator(data_seed);
  run.ids = at::randint(config.vocab, {B, T}, gen, at::kLong);
  run.targets = at::randint(config.vocab, {B, T}, gen, at::kLong);
  run.model = models::Model::create(config);
  run.whole = random_params(*run.model, param_seed);
  std::vector<at::Tensor> params;
  for (const auto& w : run.whole) params.push_back(w.clone());
  run.model->bind_params(params);
  run.loss = run.model->loss(run.ids, run.targets);
  run.loss.backward();
  return run;
}

}  // namespace kolos::test
