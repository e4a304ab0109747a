#include "kolos/models/gpt/gpt.h"

#include <cmath>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"

namespace kolos::models {

using nn::Init;
using nn::ParamSpec;

std::vector<ParamSpec> Gpt::param_specs() const {
  const auto& c = config_;
  const int64_t C = c.hidden, F = c.ffn_hidden, V = c.vocab, P = c.seq_len;
  const double std = c.init_std, proj_std = c.init_std / std::sqrt(2.0 * c.layers);
  std::vector<ParamSpec> s;
  auto weight = [&](std::string name, std::vector<int64_t> shape, double sd) {
    s.push_back({std::move(name), std::move(shape), Init::kNormal, sd, true, false});
  };
  auto bias = [&](std::string name, int64_t n) { s.push_back({std::move(name), {n}, Init::kZeros, 0, false, false}); };
  auto norm = [&](const std::string& name) {
    s.push_back({name + ".weight", {C}, Init::kOnes, 0, false, false});
    s.push_back({name + ".bias", {C}, Init::kZeros, 0, false, false});
  };
  s.push_back({"wte.weight", {V, C}, Init::kNormal, std, false, true});
  s.push_back({"wpe.weight", {P, C}, Init::kNormal, 0.01, false, true});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    norm(h + "ln_1");
    weight(h + "attn.qkv.weight", {3 * C, C}, std);
    bias(h + "attn.qkv.bias", 3 * C);
    weight(h + "attn.proj.weight", {C, C}, proj_std);
    bias(h + "attn.proj.bias", C);
    norm(h + "ln_2");
    weight(h + "mlp.fc.weight", {F, C}, std);
    bias(h + "mlp.fc.bias", F);
    weight(h + "mlp.proj.weight", {C, F}, proj_std);
    bias(h + "mlp.proj.bias", C);
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
  wte_ = param("wte.weight");
  wpe_ = param("wpe.weight");
  lnf_w_ = param("ln_f.weight");
  lnf_b_ = param("ln_f.bias");
  blocks_.clear();
  for (int64_t i = 0; i < config_.layers; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    Block b;
    b.ln1_w = param(h + "ln_1.weight");
    b.ln1_b = param(h + "ln_1.bias");
    b.ln2_w = param(h + "ln_2.weight");
    b.ln2_b = param(h + "ln_2.bias");
    b.qkv = {param(h + "attn.qkv.weight"), param(h + "attn.qkv.bias")};
    b.proj = {param(h + "attn.proj.weight"), param(h + "attn.proj.bias")};
    b.fc = {param(h + "mlp.fc.weight"), param(h + "mlp.fc.bias")};
    b.fc_proj = {param(h + "mlp.proj.weight"), param(h + "mlp.proj.bias")};
    blocks_.push_back(std::move(b));
  }
}

at::Tensor Gpt::block_forward(const Block& b, const at::Tensor& x) const {
  const int64_t B = x.size(0), T = x.size(1), C = config_.hidden, H = config_.heads, D = C / H;
  at::Tensor h = nn::layer_norm(x, b.ln1_w, b.ln1_b, config_.norm_eps);
  at::Tensor qkv = b.qkv.forward(h).view({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});  // (3, B, H, T, D)
  at::Tensor y = nn::causal_attention(qkv[0], qkv[1], qkv[2]);                       // (B, H, T, D)
  y = y.transpose(1, 2).reshape({B, T, C});
  at::Tensor r = x + dropout(b.proj.forward(y));
  h = nn::layer_norm(r, b.ln2_w, b.ln2_b, config_.norm_eps);
  return r + dropout(b.fc_proj.forward(nn::gelu(b.fc.forward(h))));
}

at::Tensor Gpt::forward(const at::Tensor& ids) {
  const int64_t T = ids.size(1);
  KOLOS_CHECK(T <= config_.seq_len, "sequence of {} tokens is longer than model.seq_len = {}", T, config_.seq_len);
  at::Tensor x = dropout(nn::embedding(wte_, ids) + wpe_.narrow(0, 0, T));
  for (const auto& b : blocks_) x = block_forward(b, x);
  x = nn::layer_norm(x, lnf_w_, lnf_b_, config_.norm_eps);
  return at::matmul(x, wte_.t());
}

}  // namespace kolos::models
