#include "kolos/models/gpt/gpt.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"

namespace kolos::models {

using nn::Init;
using nn::ParamSpec;

std::vector<ParamSpec> Gpt::all_param_specs() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, V = c.vocab, P = c.seq_len;
  const double std = c.init_std, proj_std = c.init_std / std::sqrt(2.0 * c.layers);
  std::vector<ParamSpec> s;
  // Sharding plan (tensor parallelism): q|k|v and fc split by outputs (qkv in three groups, so each rank keeps
  // its heads of each), the projections by inputs, the token embedding (and tied head) by vocabulary.
  auto weight = [&](std::string name, std::vector<int64_t> shape, double sd, int tp_dim, int groups = 1) {
    s.push_back({std::move(name), std::move(shape), Init::kNormal, sd, true, false, tp_dim, groups});
  };
  // Replicated biases (after a row-parallel product) and norms act on the residual stream: sequence_sliced.
  auto bias = [&](std::string name, int64_t n, int tp_dim, int groups = 1) {
    s.push_back({std::move(name), {n}, Init::kZeros, 0, false, false, tp_dim, groups, tp_dim < 0});
  };
  auto norm = [&](const std::string& name) {
    s.push_back({name + ".weight", {C}, Init::kOnes, 0, false, false, -1, 1, true});
    s.push_back({name + ".bias", {C}, Init::kZeros, 0, false, false, -1, 1, true});
  };
  s.push_back({"wte.weight", {V, C}, Init::kNormal, std, false, true, 0});
  s.push_back({"wpe.weight", {P, C}, Init::kNormal, 0.01, false, true});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    norm(h + "ln_1");
    weight(h + "attn.qkv.weight", {3 * C, C}, std, 0, 3);
    bias(h + "attn.qkv.bias", 3 * C, 0, 3);
    weight(h + "attn.proj.weight", {C, C}, proj_std, 1);
    bias(h + "attn.proj.bias", C, -1);
    norm(h + "ln_2");
    weight(h + "mlp.fc.weight", {F, C}, std, 0);
    bias(h + "mlp.fc.bias", F, 0);
    weight(h + "mlp.proj.weight", {C, F}, proj_std, 1);
    bias(h + "mlp.proj.bias", C, -1);
  }
  norm("ln_f");
  return s;
}

int64_t Gpt::num_matmul_params() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden;
  return c.layers * (3 * C * C + C * C + 2 * C * F) + c.vocab * C;
}

void Gpt::on_params_bound() {
  // A pipeline stage holds some of them (Model::set_segments); the others stay undefined.
  auto held = [this](const std::string& name) { return has_param(name) ? param(name) : at::Tensor(); };
  wte_ = held("wte.weight");
  wpe_ = held("wpe.weight");
  lnf_w_ = held("ln_f.weight");
  lnf_b_ = held("ln_f.bias");
  blocks_.assign(config_.layers, Block{});
  for (int64_t i = 0; i < config_.layers; ++i) {
    const std::string h = block_prefix(i);
    if (!has_param(h + "ln_1.weight")) continue;
    Block b;
    b.ln1_w = param(h + "ln_1.weight");
    b.ln1_b = param(h + "ln_1.bias");
    b.ln2_w = param(h + "ln_2.weight");
    b.ln2_b = param(h + "ln_2.bias");
    b.qkv = linear(h + "attn.qkv", true);
    b.proj = linear(h + "attn.proj", true);
    b.fc = linear(h + "mlp.fc", true);
    b.fc_proj = linear(h + "mlp.proj", true);
    blocks_[i] = std::move(b);
  }
}

at::Tensor Gpt::block_forward(const Block& b, const at::Tensor& x) const {
  // The heads are those the qkv weight holds (all of them on one process).
  // The sequence is the one the qkv product returns (whole, also when x is a slice of it under Megatron-SP).
  const int64_t B = x.size(0), D = config_.hidden / config_.heads, H = b.qkv.weight.size(0) / (3 * D);
  at::Tensor h = layer_norm(x, b.ln1_w, b.ln1_b);
  at::Tensor qkv = b.qkv.forward(h);
  const int64_t T = qkv.size(1);
  qkv = qkv.view({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});  // (3, B, H, T, D)
  at::Tensor y = attention(qkv[0], qkv[1], qkv[2]);                                  // (B, H, T, D)
  y = y.transpose(1, 2).reshape({B, T, H * D});
  at::Tensor r = x + dropout(b.proj.forward(y));
  h = layer_norm(r, b.ln2_w, b.ln2_b);
  return r + dropout(b.fc_proj.forward(nn::gelu(b.fc.forward(h))));
}

at::Tensor Gpt::stem(const at::Tensor& ids) const {
  const int64_t T = ids.size(1);
  KOLOS_CHECK(T <= config_.seq_len, "sequence of {} tokens is longer than model.seq_len = {}", T, config_.seq_len);
  return dropout(enter_blocks(embed(wte_, ids) + position_embedding(wpe_, T)));
}

at::Tensor Gpt::block(size_t i, const at::Tensor& x) const {
  return run_block(i, [this, b = blocks_.at(i)](const at::Tensor& h) { return block_forward(b, h); }, x);
}

at::Tensor Gpt::final_norm(const at::Tensor& x) const {
  return layer_norm(x, lnf_w_, lnf_b_);
}

}  // namespace kolos::models
