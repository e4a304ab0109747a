// A language model written once as single-device code. Parallelism is applied from outside (parallel::apply in
// later issues); a model's forward never mentions ranks.
//
// Parameters live in one table (name -> tensor) in a fixed order given by param_specs(). The trainer may
// replace the tensors with views into its own flat buffers (bind_params) before training.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/config/config.h"
#include "kolos/nn/layers.h"
#include "kolos/nn/param.h"

namespace kolos::models {

using NamedTensor = std::pair<std::string, at::Tensor>;

class Model {
 public:
  explicit Model(const ModelConfig& config) : config_(config) {}
  virtual ~Model() = default;

  // Builds the model for config.arch. Nothing is allocated until init_params/bind_params.
  static std::unique_ptr<Model> create(const ModelConfig& config);

  const ModelConfig& config() const { return config_; }

  // Every parameter of the whole model with its global shape, init rule and weight-decay class, in a fixed order.
  virtual std::vector<nn::ParamSpec> all_param_specs() const = 0;
  // The parameters this rank holds, in the same order: all of them, or under pipeline parallelism those of its
  // segments (set_segments).
  std::vector<nn::ParamSpec> param_specs() const;
  int64_t num_params() const { return nn::count_params(all_param_specs()); }
  // Weights used in matrix products, counting the output head (also when tied) but not embedding look-ups:
  // N' of the MFU formula (yardsticks §4.1).
  virtual int64_t num_matmul_params() const = 0;

  // Tensor parallelism from outside (parallel::apply): set before the parameters are bound; the bound tensors
  // then have ParamSpec::local_shape(sharding.parts).
  void set_sharding(nn::Sharding sharding) { sharding_ = std::move(sharding); }
  const nn::Sharding& sharding() const { return sharding_; }

  // Allocates and initialises every parameter from (seed, name); requires_grad set. One process only (a sharded
  // model binds its pieces, parallel::apply).
  void init_params(int64_t seed);
  // Uses the given tensors (same order as param_specs, shapes local_shape(sharding().parts)) as the parameters.
  void bind_params(std::vector<at::Tensor> tensors);
  const std::vector<NamedTensor>& params() const { return params_; }
  at::Tensor param(const std::string& name) const;

  // Activation checkpointing from outside (parallel::apply): block i keeps only its input after forward and is
  // recomputed in backward (nn::recompute, dropout masks replayed) when checkpointed[i]; empty or short: the rest
  // are not. Applies in training mode with grad mode on; losses and gradients are bit-identical either way.
  void set_checkpointing(std::vector<bool> checkpointed) { checkpointed_ = std::move(checkpointed); }
  const std::vector<bool>& checkpointing() const { return checkpointed_; }

  // Block hooks from outside (parallel::apply, ZeRO-3 chunks): Model::forward calls them around its pieces, indexed
  // in forward order — 0 the stem, 1 + i transformer block i, layers + 1 the head (final norm and output head):
  //   before(b); y = piece(x); after(b); y = pre_backward(b, y)
  // outside nn::recompute, so a recomputed block's pre-backward node (which gathers it) runs before it reruns.
  // Unset callables are skipped; not applied by forward_segment (pipeline stages).
  struct BlockHooks {
    std::function<void(int)> before, after;
    std::function<at::Tensor(int, const at::Tensor&)> pre_backward;
  };
  void set_block_hooks(BlockHooks hooks) { hooks_ = std::move(hooks); }
  // The hook block (as above) whose piece first uses parameter `name` (a tied embedding: the stem, 0).
  int param_block(const std::string& name) const;

  // Pipeline parallelism from outside (parallel::apply): the virtual stages this rank runs, in chunk order, each
  // a segment of the forward — the stem (token embedding; its input is the token ids), blocks [first, end), the
  // head (final norm and output head; its output is the logits). Set before the parameters are bound; this rank
  // then holds only its segments' parameters (a tied embedding is held by the stem's and by the head's segment).
  // Empty: one segment, the whole model.
  struct Segment {
    int64_t first = 0, end = 0;
    bool stem = false, head = false;
  };
  void set_segments(std::vector<Segment> segments) { segments_ = std::move(segments); }
  const std::vector<Segment>& segments() const { return segments_; }
  // Whether parameter `name` belongs to `segment`.
  bool in_segment(const std::string& name, const Segment& segment) const;
  // The name of the embedding the output head shares (GPT-2's wte, LLaMA's when tied), "" when untied.
  virtual std::string tied_embedding() const = 0;
  // Segment `chunk` of set_segments: input = token ids (B, T) when it has the stem, else the hidden states
  // (B, T, C) of the segment before; returns, when it has the head, the mean cross-entropy against `targets`
  // (B, T) as loss() computes it, or the logits (B, T, V) when targets is undefined; else its hidden states.
  at::Tensor forward_segment(size_t chunk, const at::Tensor& input, const at::Tensor& targets = at::Tensor());

  // Training mode enables dropout.
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }

  // ids: (B, T) int64 with T <= seq_len. Returns logits (B, T, V). The whole model (one process, or tensor and
  // sequence parallel ranks); not on a pipeline stage.
  at::Tensor forward(const at::Tensor& ids);
  // Mean cross-entropy of the next-token predictions against targets (B, T) (a target of -100 is not counted).
  // The same forward, without the whole logits: on one tensor-parallel rank the head and the loss are one
  // token-chunked function (nn::head_cross_entropy; its memory is a chunk of logits, not B·T·V); under tensor
  // parallelism the vocab-parallel cross-entropy of this rank's logits (recomputed in backward in the grid modes,
  // 2D/2.5D/3D, so that no block of logits is kept).
  at::Tensor loss(const at::Tensor& ids, const at::Tensor& targets);

 protected:
  // Called after the parameter table changed, so the model can refresh its layer references (of the parameters
  // this rank holds: has_param).
  virtual void on_params_bound() = 0;
  bool has_param(const std::string& name) const;
  // The pieces of the forward: ids → the hidden states entering block 0; block i; the final norm and the head.
  virtual at::Tensor stem(const at::Tensor& ids) const = 0;
  virtual at::Tensor block(size_t i, const at::Tensor& x) const = 0;
  // The final norm and the output head's weight (V, C) (the token embedding when tied); final_logits applies both,
  // final_loss goes on to the loss (loss(), forward_segment).
  virtual at::Tensor final_norm(const at::Tensor& x) const = 0;
  virtual const at::Tensor& head_weight() const = 0;
  at::Tensor final_logits(const at::Tensor& x) const;
  at::Tensor final_loss(const at::Tensor& x, const at::Tensor& targets) const;
  // The name prefix of block i's parameters ("h.3.", "layers.3."); parameters outside blocks belong to the stem
  // when is_stem_param, else to the head.
  virtual std::string block_prefix(int64_t i) const = 0;
  virtual bool is_stem_param(const std::string& name) const = 0;
  at::Tensor dropout(const at::Tensor& x) const;
  // Block i of the forward loop: block(x), through nn::recompute when the block is checkpointed. `block` is kept
  // until backward (capture by value what the block uses).
  at::Tensor run_block(size_t i, std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x) const;
  // The layers as the sharding makes them: a Linear over the parameters `<prefix>.weight` (and `<prefix>.bias`
  // when `bias`), its slot filled for a split weight; the token look-up; the output head's logits.
  nn::Linear linear(const std::string& prefix, bool bias) const;
  at::Tensor embed(const at::Tensor& weight, const at::Tensor& ids) const;
  at::Tensor enter_blocks(const at::Tensor& x) const;
  // Rows of a per-position table (positional embedding, RoPE tables) for this rank's T tokens (the first T rows on
  // one process).
  at::Tensor position_rows(const at::Tensor& table, int64_t T) const;
  at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;
  at::Tensor head(const at::Tensor& x, const at::Tensor& weight) const;
  // The norms as the sharding computes them (nn::layer_norm, nn::rms_norm on one process), and a per-position
  // table over the hidden features (GPT-2's wpe) for this rank's T tokens and features.
  at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor position_embedding(const at::Tensor& table, int64_t T) const;

  ModelConfig config_;
  nn::Sharding sharding_;
  std::vector<NamedTensor> params_;
  std::vector<bool> checkpointed_;
  BlockHooks hooks_;
  std::vector<Segment> segments_;
  bool training_ = true;

 private:
  // The forward under the block hooks (set_block_hooks): the stem, the blocks, then `head_piece` of the blocks'
  // output (the logits or the loss) as the head block.
  at::Tensor hooked_forward(const at::Tensor& ids, const std::function<at::Tensor(const at::Tensor&)>& head_piece);
};

}  // namespace kolos::models
