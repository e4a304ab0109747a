#include "kolos/models/model.h"

#include "kolos/nn/attention.h"

#include "kolos/core/error.h"
#include "kolos/models/gpt/gpt.h"
#include "kolos/models/llama/llama.h"
#include "kolos/nn/head_loss.h"
#include "kolos/nn/layers.h"
#include "kolos/nn/recompute.h"

namespace kolos::models {

std::unique_ptr<Model> Model::create(const ModelConfig& config) {
  if (config.arch == "gpt2") return std::make_unique<Gpt>(config);
  if (config.arch == "llama") return std::make_unique<Llama>(config);
  throw InputError(fmt::format("config key model.arch: expected \"gpt2\" or \"llama\", got \"{}\"", config.arch));
}

std::vector<nn::ParamSpec> Model::param_specs() const {
  std::vector<nn::ParamSpec> all = all_param_specs();
  if (segments_.empty()) return all;
  std::vector<nn::ParamSpec> held;
  for (auto& spec : all)
    for (const auto& segment : segments_)
      if (in_segment(spec.name, segment)) {
        held.push_back(std::move(spec));
        break;
      }
  return held;
}

bool Model::in_segment(const std::string& name, const Segment& segment) const {
  for (int64_t i = segment.first; i < segment.end; ++i)
    if (name.rfind(block_prefix(i), 0) == 0) return true;
  // Outside the segment's blocks: a parameter of another block, or of the stem or the head.
  for (int64_t i = 0; i < config_.layers; ++i)
    if (name.rfind(block_prefix(i), 0) == 0) return false;
  if (is_stem_param(name)) return segment.stem || (segment.head && name == tied_embedding());
  return segment.head;
}

int Model::param_block(const std::string& name) const {
  for (int64_t i = 0; i < config_.layers; ++i)
    if (name.rfind(block_prefix(i), 0) == 0) return static_cast<int>(i) + 1;
  return is_stem_param(name) ? 0 : static_cast<int>(config_.layers) + 1;
}

bool Model::has_param(const std::string& name) const {
  for (const auto& [n, t] : params_)
    if (n == name) return true;
  return false;
}

at::Tensor Model::hooked_forward(const at::Tensor& ids,
                                 const std::function<at::Tensor(const at::Tensor&)>& head_piece) {
  KOLOS_ASSERT(segments_.empty(), "Model::forward on a pipeline stage (use forward_segment)");
  // Piece b under the block hooks (set_block_hooks).
  auto hooked = [this](int b, auto&& piece) {
    if (hooks_.before) hooks_.before(b);
    at::Tensor y = piece();
    if (hooks_.after) hooks_.after(b);
    return hooks_.pre_backward ? hooks_.pre_backward(b, y) : y;
  };
  at::Tensor x = hooked(0, [&] { return stem(ids); });
  for (int64_t i = 0; i < config_.layers; ++i)
    x = hooked(static_cast<int>(i) + 1, [&] { return block(static_cast<size_t>(i), x); });
  return hooked(static_cast<int>(config_.layers) + 1, [&] { return head_piece(x); });
}

at::Tensor Model::forward(const at::Tensor& ids) {
  return hooked_forward(ids, [this](const at::Tensor& x) { return final_logits(x); });
}

at::Tensor Model::loss(const at::Tensor& ids, const at::Tensor& targets) {
  return hooked_forward(ids, [&](const at::Tensor& x) { return final_loss(x, targets); });
}

at::Tensor Model::forward_segment(size_t chunk, const at::Tensor& input, const at::Tensor& targets) {
  KOLOS_ASSERT(chunk < segments_.size(), "forward_segment: chunk {} of {}", chunk, segments_.size());
  const Segment& s = segments_[chunk];
  KOLOS_ASSERT(s.head || !targets.defined(), "forward_segment: targets for chunk {}, which has no head", chunk);
  at::Tensor x = s.stem ? stem(input) : input;
  for (int64_t i = s.first; i < s.end; ++i) x = block(static_cast<size_t>(i), x);
  if (!s.head) return x;
  return targets.defined() ? final_loss(x, targets) : final_logits(x);
}

at::Tensor Model::final_logits(const at::Tensor& x) const { return head(final_norm(x), head_weight()); }

at::Tensor Model::final_loss(const at::Tensor& x, const at::Tensor& targets) const {
  if (sharding_.cross_entropy) {  // tensor parallelism: this rank's slice of the vocabulary
    const at::Tensor t = targets.reshape({-1});
    auto loss_of = [this, t](const at::Tensor& h, const at::Tensor& weight) {
      at::Tensor logits = head(final_norm(h), weight);
      return sharding_.cross_entropy(logits.reshape({-1, logits.size(-1)}), t);
    };
    // The grid modes (2D, 2.5D, 3D) hold 1/q² or less of every activation, and a block of logits kept for the
    // cross-entropy's backward would outweigh several blocks' worth (one process's fused head and loss keeps none):
    // they recompute the final norm, the head and the loss in backward instead — their forward collectives run
    // twice. The head weight enters as an input of the recomputation, so a tied table's gradient is summed with the
    // embedding's before its accumulator runs (nn::recompute_many).
    if (sharding_.grid && training_ && at::GradMode::is_enabled())
      return nn::recompute_many([loss_of](const std::vector<at::Tensor>& in) { return loss_of(in[0], in[1]); },
                                {x, head_weight()});
    return loss_of(x, head_weight());
  }
  KOLOS_ASSERT(!sharding_.head, "a sharded output head without its vocab-parallel cross-entropy");
  at::Tensor h = final_norm(x);
  return nn::head_cross_entropy(h.reshape({-1, h.size(-1)}), head_weight(), at::Tensor(), targets.reshape({-1}));
}

void Model::init_params(int64_t seed) {
  KOLOS_ASSERT(sharding_.parts == 1, "init_params on a sharded model");
  std::vector<at::Tensor> tensors;
  for (const auto& spec : param_specs()) tensors.push_back(nn::init_param(spec, seed));
  bind_params(std::move(tensors));
}

void Model::bind_params(std::vector<at::Tensor> tensors) {
  const auto specs = param_specs();
  KOLOS_ASSERT(tensors.size() == specs.size(), "bind_params: {} tensors for {} parameters", tensors.size(),
               specs.size());
  params_.clear();
  for (size_t i = 0; i < specs.size(); ++i) {
    KOLOS_ASSERT(tensors[i].sizes().vec() == specs[i].local_shape(sharding_.layout()), "bind_params: wrong shape for {}",
                 specs[i].name);
    if (!tensors[i].requires_grad()) tensors[i].set_requires_grad(true);
    params_.emplace_back(specs[i].name, tensors[i]);
  }
  on_params_bound();
}

at::Tensor Model::param(const std::string& name) const {
  for (const auto& [n, t] : params_)
    if (n == name) return t;
  KOLOS_ASSERT(false, "no parameter named {}", name);
}

nn::Linear Model::linear(const std::string& prefix, bool bias) const {
  nn::Linear l{param(prefix + ".weight"), bias ? param(prefix + ".bias") : at::Tensor(), {}};
  if (sharding_.parts > 1) {
    for (const auto& spec : param_specs()) {
      if (spec.name != prefix + ".weight") continue;
      if (spec.tp_dim == 0) l.slot.forward = sharding_.column;
      if (spec.tp_dim == 1) l.slot.forward = sharding_.row;
    }
  }
  return l;
}

at::Tensor Model::embed(const at::Tensor& weight, const at::Tensor& ids) const {
  return sharding_.embedding ? sharding_.embedding(weight, ids) : nn::embedding(weight, ids);
}

at::Tensor Model::enter_blocks(const at::Tensor& x) const { return sharding_.enter ? sharding_.enter(x) : x; }

at::Tensor Model::position_rows(const at::Tensor& table, int64_t T) const {
  return sharding_.positions ? table.index_select(0, sharding_.positions(T)) : table.narrow(0, 0, T);
}

at::Tensor Model::attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const {
  return sharding_.attention ? sharding_.attention(q, k, v) : nn::causal_attention(q, k, v);
}

at::Tensor Model::head(const at::Tensor& x, const at::Tensor& weight) const {
  return sharding_.head ? sharding_.head(x, weight) : at::matmul(x, weight.t());
}

at::Tensor Model::layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) const {
  return sharding_.layer_norm ? sharding_.layer_norm(x, weight, bias, config_.norm_eps)
                              : nn::layer_norm(x, weight, bias, config_.norm_eps);
}

at::Tensor Model::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  return sharding_.rms_norm ? sharding_.rms_norm(x, weight, config_.norm_eps) : nn::rms_norm(x, weight, config_.norm_eps);
}

at::Tensor Model::position_embedding(const at::Tensor& table, int64_t T) const {
  return position_rows(sharding_.features ? sharding_.features(table) : table, T);
}

at::Tensor Model::run_block(size_t i, std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x) const {
  // Evaluation and no-grad forwards keep nothing anyway.
  if (i < checkpointed_.size() && checkpointed_[i] && training_ && at::GradMode::is_enabled())
    return nn::recompute(std::move(block), x);
  return block(x);
}

at::Tensor Model::dropout(const at::Tensor& x) const {
  if (!training_ || config_.dropout == 0.0) return x;
  return at::dropout(x, config_.dropout, /*train=*/true);
}

}  // namespace kolos::models
