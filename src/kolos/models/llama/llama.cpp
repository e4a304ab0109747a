#include "kolos/models/llama/llama.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"

namespace kolos::models {

using nn::Init;
using nn::ParamSpec;

std::vector<ParamSpec> Llama::all_param_specs() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, V = c.vocab, D = c.hidden / c.heads;
  const double std = c.init_std, proj_std = c.init_std / std::sqrt(2.0 * c.layers);
  std::vector<ParamSpec> s;
  // Sharding plan (tensor parallelism): q, k, v, gate and up split by outputs (heads, KV heads, F), o and down
  // by inputs, the embedding and the output head by vocabulary.
  auto weight = [&](std::string name, std::vector<int64_t> shape, double sd, int tp_dim) {
    s.push_back({std::move(name), std::move(shape), Init::kNormal, sd, true, false, tp_dim});
  };
  auto norm = [&](std::string name) { s.push_back({std::move(name), {C}, Init::kOnes, 0, false, false, -1, 1, true}); };
  s.push_back({"embed_tokens.weight", {V, C}, Init::kNormal, std, false, true, 0});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string l = "layers." + std::to_string(i) + ".";
    norm(l + "input_layernorm.weight");
    weight(l + "self_attn.q_proj.weight", {c.heads * D, C}, std, 0);
    weight(l + "self_attn.k_proj.weight", {c.kv_heads * D, C}, std, 0);
    weight(l + "self_attn.v_proj.weight", {c.kv_heads * D, C}, std, 0);
    weight(l + "self_attn.o_proj.weight", {C, c.heads * D}, proj_std, 1);
    norm(l + "post_attention_layernorm.weight");
    weight(l + "mlp.gate_proj.weight", {F, C}, std, 0);
    weight(l + "mlp.up_proj.weight", {F, C}, std, 0);
    weight(l + "mlp.down_proj.weight", {C, F}, proj_std, 1);
  }
  norm("norm.weight");
  if (!c.tie_embeddings) weight("lm_head.weight", {V, C}, std, 0);
  return s;
}

int64_t Llama::num_matmul_params() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, D = c.hidden / c.heads;
  return c.layers * (2 * c.heads * D * C + 2 * c.kv_heads * D * C + 3 * C * F) + c.vocab * C;
}

void Llama::on_params_bound() {
  // A pipeline stage holds some of them (Model::set_segments); the others stay undefined.
  auto held = [this](const std::string& name) { return has_param(name) ? param(name) : at::Tensor(); };
  embed_ = held("embed_tokens.weight");
  norm_ = held("norm.weight");
  head_ = config_.tie_embeddings ? embed_ : held("lm_head.weight");
  std::tie(rope_cos_, rope_sin_) = nn::rope_tables(config_.seq_len, config_.hidden / config_.heads, config_.rope_theta);
  blocks_.assign(config_.layers, Block{});
  for (int64_t i = 0; i < config_.layers; ++i) {
    const std::string l = block_prefix(i);
    if (!has_param(l + "input_layernorm.weight")) continue;
    Block b;
    b.attn_norm = param(l + "input_layernorm.weight");
    b.mlp_norm = param(l + "post_attention_layernorm.weight");
    b.q = linear(l + "self_attn.q_proj", false);
    b.k = linear(l + "self_attn.k_proj", false);
    b.v = linear(l + "self_attn.v_proj", false);
    b.o = linear(l + "self_attn.o_proj", false);
    b.gate = linear(l + "mlp.gate_proj", false);
    b.up = linear(l + "mlp.up_proj", false);
    b.down = linear(l + "mlp.down_proj", false);
    blocks_[i] = std::move(b);
  }
}

at::Tensor Llama::block_forward(const Block& b, const at::Tensor& x) const {
  // The heads are those the q/k weights hold (all of them on one process).
  // The sequence is the one the projections return (whole, also when x is a slice of it under Megatron-SP).
  const int64_t B = x.size(0), D = config_.hidden / config_.heads;
  const int64_t H = b.q.weight.size(0) / D, KV = b.k.weight.size(0) / D;
  at::Tensor h = rms_norm(x, b.attn_norm);
  const auto qkv = nn::forward_many(h, {&b.q, &b.k, &b.v}, sharding_);
  const int64_t T = qkv[0].size(1);
  at::Tensor cos = position_rows(rope_cos_, T), sin = position_rows(rope_sin_, T);
  at::Tensor q = nn::apply_rope(qkv[0].view({B, T, H, D}).transpose(1, 2), cos, sin);
  at::Tensor k = nn::apply_rope(qkv[1].view({B, T, KV, D}).transpose(1, 2), cos, sin);
  at::Tensor v = qkv[2].view({B, T, KV, D}).transpose(1, 2);
  // k, v keep their KV heads: attention serves each to H/KV consecutive query heads.
  at::Tensor y = attention(q, k, v).transpose(1, 2).reshape({B, T, H * D});
  at::Tensor r = x + dropout(b.o.forward(y));
  h = rms_norm(r, b.mlp_norm);
  const auto gate_up = nn::forward_many(h, {&b.gate, &b.up}, sharding_);
  return r + dropout(b.down.forward(at::silu(gate_up[0]) * gate_up[1]));
}

at::Tensor Llama::stem(const at::Tensor& ids) const {
  const int64_t T = ids.size(1);
  KOLOS_CHECK(T <= config_.seq_len, "sequence of {} tokens is longer than model.seq_len = {}", T, config_.seq_len);
  return dropout(enter_blocks(embed(embed_, ids)));
}

at::Tensor Llama::block(size_t i, const at::Tensor& x) const {
  return run_block(i, [this, b = blocks_.at(i)](const at::Tensor& h) { return block_forward(b, h); }, x);
}

at::Tensor Llama::final_norm(const at::Tensor& x) const { return rms_norm(x, norm_); }

}  // namespace kolos::models
