// The GPT-2 family: learned token and position embeddings, pre-LayerNorm blocks (causal multi-head attention,
// GELU MLP of ffn_hidden = 4C), final LayerNorm, output head tied to the token embedding.
//
// Parameter names (C hidden, F ffn hidden, V vocabulary, P = seq_len positions):
//   wte.weight (V, C), wpe.weight (P, C),
//   h.{i}.ln_1.{weight,bias} (C), h.{i}.attn.qkv.{weight (3C, C), bias (3C)}, h.{i}.attn.proj.{weight (C, C), bias},
//   h.{i}.ln_2.{weight,bias}, h.{i}.mlp.fc.{weight (F, C), bias (F)}, h.{i}.mlp.proj.{weight (C, F), bias (C)},
//   ln_f.{weight,bias}.
// Residual projections (attn.proj, mlp.proj) start with std init_std/sqrt(2*layers), as in GPT-2.
// Dropout (model.dropout) applies to the embedding sum and to each residual branch (not to attention
// probabilities, which the blockwise kernel never stores).
#pragma once

#include <vector>

#include "kolos/models/model.h"
#include "kolos/nn/layers.h"

namespace kolos::models {

class Gpt : public Model {
 public:
  explicit Gpt(const ModelConfig& config) : Model(config) {}
  std::vector<nn::ParamSpec> all_param_specs() const override;
  int64_t num_matmul_params() const override;
  std::string tied_embedding() const override { return "wte.weight"; }

 private:
  struct Block {
    at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    nn::Linear qkv, proj, fc, fc_proj;
  };
  void on_params_bound() override;
  at::Tensor stem(const at::Tensor& ids) const override;
  at::Tensor block(size_t i, const at::Tensor& x) const override;
  at::Tensor final_norm(const at::Tensor& x) const override;
  const at::Tensor& head_weight() const override { return wte_; }
  std::string block_prefix(int64_t i) const override { return "h." + std::to_string(i) + "."; }
  bool is_stem_param(const std::string& name) const override { return name == "wte.weight" || name == "wpe.weight"; }
  at::Tensor block_forward(const Block& b, const at::Tensor& x) const;

  at::Tensor wte_, wpe_, lnf_w_, lnf_b_;
  std::vector<Block> blocks_;
};

}  // namespace kolos::models
