// The LLaMA family: token embedding, pre-RMSNorm blocks (causal attention with rotary positions and grouped-query
// attention: kv_heads key/value heads shared by heads/kv_heads query heads each; SwiGLU MLP), final RMSNorm and
// an untied output head (tied when model.tie_embeddings = true). No biases.
//
// Parameter names (Hugging Face LLaMA names without the "model." prefix; C hidden, F ffn hidden, D head dim):
//   embed_tokens.weight (V, C),
//   layers.{i}.input_layernorm.weight (C),
//   layers.{i}.self_attn.q_proj.weight (H*D, C), k_proj.weight (KV*D, C), v_proj.weight (KV*D, C),
//   o_proj.weight (C, H*D), layers.{i}.post_attention_layernorm.weight (C),
//   layers.{i}.mlp.gate_proj.weight (F, C), up_proj.weight (F, C), down_proj.weight (C, F),
//   norm.weight (C), lm_head.weight (V, C) unless tied.
#pragma once

#include <vector>

#include "kolos/models/model.h"
#include "kolos/nn/layers.h"

namespace kolos::models {

class Llama : public Model {
 public:
  explicit Llama(const ModelConfig& config) : Model(config) {}
  std::vector<nn::ParamSpec> all_param_specs() const override;
  int64_t num_matmul_params() const override;
  std::string tied_embedding() const override { return config_.tie_embeddings ? "embed_tokens.weight" : ""; }

 private:
  struct Block {
    at::Tensor attn_norm, mlp_norm;
    nn::Linear q, k, v, o, gate, up, down;
  };
  void on_params_bound() override;
  at::Tensor stem(const at::Tensor& ids) const override;
  at::Tensor block(size_t i, const at::Tensor& x) const override;
  at::Tensor final_norm(const at::Tensor& x) const override;
  const at::Tensor& head_weight() const override { return head_; }
  std::string block_prefix(int64_t i) const override { return "layers." + std::to_string(i) + "."; }
  bool is_stem_param(const std::string& name) const override { return name == "embed_tokens.weight"; }
  at::Tensor block_forward(const Block& b, const at::Tensor& x) const;

  at::Tensor embed_, norm_, head_;
  at::Tensor rope_cos_, rope_sin_;
  std::vector<Block> blocks_;
};

}  // namespace kolos::models
