#include "kolos/models/llama/llama.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"

namespace kolos::models {

using nn::Init;
using nn::ParamSpec;

std::vector<ParamSpec> Llama::param_specs() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, V = c.vocab, D = c.hidden / c.heads;
  const double std = c.init_std, proj_std = c.init_std / std::sqrt(2.0 * c.layers);
  std::vector<ParamSpec> s;
  auto weight = [&](std::string name, std::vector<int64_t> shape, double sd) {
    s.push_back({std::move(name), std::move(shape), Init::kNormal, sd, true, false});
  };
  auto norm = [&](std::string name) { s.push_back({std::move(name), {C}, Init::kOnes, 0, false, false}); };
  s.push_back({"embed_tokens.weight", {V, C}, Init::kNormal, std, false, true});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string l = "layers." + std::to_string(i) + ".";
    norm(l + "input_layernorm.weight");
    weight(l + "self_attn.q_proj.weight", {c.heads * D, C}, std);
    weight(l + "self_attn.k_proj.weight", {c.kv_heads * D, C}, std);
    weight(l + "self_attn.v_proj.weight", {c.kv_heads * D, C}, std);
    weight(l + "self_attn.o_proj.weight", {C, c.heads * D}, proj_std);
    norm(l + "post_attention_layernorm.weight");
    weight(l + "mlp.gate_proj.weight", {F, C}, std);
    weight(l + "mlp.up_proj.weight", {F, C}, std);
    weight(l + "mlp.down_proj.weight", {C, F}, proj_std);
  }
  norm("norm.weight");
  if (!c.tie_embeddings) weight("lm_head.weight", {V, C}, std);
  return s;
}

int64_t Llama::num_matmul_params() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, D = c.hidden / c.heads;
  return c.layers * (2 * c.heads * D * C + 2 * c.kv_heads * D * C + 3 * C * F) + c.vocab * C;
}

void Llama::on_params_bound() {
  embed_ = param("embed_tokens.weight");
  norm_ = param("norm.weight");
  head_ = config_.tie_embeddings ? embed_ : param("lm_head.weight");
  std::tie(rope_cos_, rope_sin_) = nn::rope_tables(config_.seq_len, config_.hidden / config_.heads, config_.rope_theta);
  blocks_.clear();
  for (int64_t i = 0; i < config_.layers; ++i) {
    const std::string l = "layers." + std::to_string(i) + ".";
    Block b;
    b.attn_norm = param(l + "input_layernorm.weight");
    b.mlp_norm = param(l + "post_attention_layernorm.weight");
    b.q = {param(l + "self_attn.q_proj.weight"), {}};
    b.k = {param(l + "self_attn.k_proj.weight"), {}};
    b.v = {param(l + "self_attn.v_proj.weight"), {}};
    b.o = {param(l + "self_attn.o_proj.weight"), {}};
    b.gate = {param(l + "mlp.gate_proj.weight"), {}};
    b.up = {param(l + "mlp.up_proj.weight"), {}};
    b.down = {param(l + "mlp.down_proj.weight"), {}};
    blocks_.push_back(std::move(b));
  }
}

at::Tensor Llama::block_forward(const Block& b, const at::Tensor& x) const {
  const int64_t B = x.size(0), T = x.size(1), H = config_.heads, KV = config_.kv_heads;
  const int64_t D = config_.hidden / H;
  at::Tensor cos = rope_cos_.narrow(0, 0, T), sin = rope_sin_.narrow(0, 0, T);
  at::Tensor h = nn::rms_norm(x, b.attn_norm, config_.norm_eps);
  at::Tensor q = nn::apply_rope(b.q.forward(h).view({B, T, H, D}).transpose(1, 2), cos, sin);
  at::Tensor k = nn::apply_rope(b.k.forward(h).view({B, T, KV, D}).transpose(1, 2), cos, sin);
  at::Tensor v = b.v.forward(h).view({B, T, KV, D}).transpose(1, 2);
  if (KV != H) {  // each key/value head serves H/KV consecutive query heads
    k = k.repeat_interleave(H / KV, /*dim=*/1);
    v = v.repeat_interleave(H / KV, /*dim=*/1);
  }
  at::Tensor y = nn::causal_attention(q, k, v).transpose(1, 2).reshape({B, T, H * D});
  at::Tensor r = x + dropout(b.o.forward(y));
  h = nn::rms_norm(r, b.mlp_norm, config_.norm_eps);
  return r + dropout(b.down.forward(at::silu(b.gate.forward(h)) * b.up.forward(h)));
}

at::Tensor Llama::forward(const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  KOLOS_CHECK(T <= config_.seq_len, "sequence of {} tokens is longer than model.seq_len = {}", T, config_.seq_len);
  at::Tensor x = dropout(nn::embedding(embed_, ids));
  for (const auto& b : blocks_) x = block_forward(b, x);
  x = nn::rms_norm(x, norm_, config_.norm_eps);
  return at::matmul(x, head_.t());
}

}  // namespace kolos::models
