// The resolved configuration: one struct per TOML section (model, data, train, optim, parallel, memory, dist).
//
// Sources, in order: the struct defaults below, a recipe (`--config tiny` names configs/tiny.toml, compiled into the
// binary) or a TOML file (`--config path.toml`), then each `--set section.key=value`. An unknown section or key, a
// value of the wrong type or out of range is an InputError naming the key and what was expected.
// Every key is documented in README.md ("Configuration").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kolos {

struct ModelConfig {
  std::string arch = "gpt2";  // "gpt2" | "llama"
  int64_t layers = 4;
  int64_t hidden = 256;
  int64_t heads = 4;
  int64_t kv_heads = 0;      // 0 = heads (multi-head attention); llama: grouped-query attention when < heads
  int64_t ffn_hidden = 0;    // 0 = 4*hidden (gpt2) or the LLaMA rule (llama)
  int64_t vocab = 261;
  int64_t seq_len = 256;     // context length (positions of gpt2, RoPE table of llama)
  double dropout = 0.0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_embeddings = true;  // gpt2 ties the head to the token embedding; llama unties it (set in the recipe)
  double init_std = 0.02;
};

struct DataConfig {
  std::string path = ".cache/data/moby-dick-byte";  // directory written by `kolos prepare`
  bool synthetic = false;                             // reproducible random tokens instead of files
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 8;    // sequences per data-parallel rank per micro-step
  int64_t grad_accum = 1;    // micro-steps per optimizer step
  int64_t global_batch = 0;  // 0 = batch_size*grad_accum*dp; set it to derive grad_accum
  int64_t seed = 1337;
  // "fp32"; "bf16": matrix products in bf16 (autocast), fp32 master weights, gradients and optimizer state;
  // "fp16": fp32 arithmetic, gradients reduced in fp16 under a dynamic loss scale (train/trainer.h "Precision")
  std::string dtype = "fp32";
  double loss_scale_init = 65536.0;         // fp16: the initial loss scale (optim/loss_scaler.h)
  int64_t loss_scale_growth_interval = 1000;  // fp16: steps without overflow before the scale doubles
  int64_t loss_scale_hysteresis = 2;        // fp16: overflows in a row before the scale halves
  int64_t log_every = 10;
  int64_t eval_every = 200;    // 0 = only at the end
  int64_t eval_batches = 16;   // validation batches per evaluation (0 = the whole validation split)
  int64_t early_stop = 0;      // stop after this many evaluations in a row without a new best val_loss (0 = never)
  double target_val_loss = 0;  // stop at the first evaluation whose val_loss is at most this (0 = never)
  int64_t save_every = 500;    // 0 = only at the end
  int64_t keep_checkpoints = 2;  // newest complete checkpoints kept (0 = all)
  std::string activation_checkpointing = "none";
  int64_t threads = 0;         // intra-op threads per process, 0 = the cores divided among this machine's ranks
  bool mfu = true;             // measure the fp32 GEMM rate at start (about a second) for the mfu metric
  bool trace_comm = false;     // add each logged step's collectives with timestamps to metrics.jsonl
  int64_t sample_tokens = 400; // tokens generated at the end of training (0 = none)
  std::string sample_prompt = "\n";
};

struct OptimConfig {
  std::string name = "adamw";       // "adamw" | "sgd" | "lars" | "lamb" | "lion" (optim/optimizer.h)
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 100;
  std::string schedule = "cosine";  // "cosine" | "linear" | "poly" | "constant"
  double decay_power = 1.0;           // "poly": lr = min_lr + (lr − min_lr)·(1 − progress)^decay_power
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;           // global L2 norm; 0 = off
  bool decay_norms_biases = false;  // apply weight decay to norms and biases too
  bool decay_embeddings = false;    // apply weight decay to embeddings too
  double momentum = 0.9;            // sgd, lars
  bool nesterov = false;            // sgd: Nesterov momentum
  double trust_coefficient = 0.001; // lars: η
  double min_trust_ratio = 0.0;     // lars, lamb: lower clamp of the trust ratio
  double max_trust_ratio = 0.0;     // lars, lamb: upper clamp of the trust ratio, 0 = none
  bool bias_correction = true;      // lamb: divide the moments by 1 - beta^t
  bool adapt_norms_biases = false;  // lars, lamb: apply the trust ratio to norms and biases too
};

struct ParallelConfig {
  int64_t dp = 0;  // 0 = world / (pp*sp*tp)
  int64_t tp = 1;
  std::string tp_mode = "1d";
  int64_t tp_depth = 1;
  bool megatron_sp = false;
  int64_t sp = 1;
  std::string sp_mode = "ring";
  int64_t pp = 1;
  std::string pp_schedule = "1f1b";
  int64_t pp_virtual = 1;
  std::string pp_layers = "";
  int64_t zero = 0;
  double bucket_mb = 25.0;
};

struct MemoryConfig {
  std::string placement = "static";
  std::string budget = "";
  std::string offload_tier = "host";
  std::string nvme_path = "";
  double shard_param_frac = 1.0;
  double offload_optim_frac = 0.0;
  double offload_param_frac = 0.0;
  bool offload_grads = false;  // the gradient shards of the chunks whose master parameters are offloaded, too
  bool overlap_step = false;   // ZeRO-3 offload: the streamed optimizer step overlaps the next forward
};

struct DistConfig {
  std::string backend = "gloo";
  double timeout_s = 300.0;
  std::string iface = "";
  bool shm = true;  // fp32 all-reduces among the ranks of one machine through shared memory instead of TCP
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  ParallelConfig parallel;
  MemoryConfig memory;
  DistConfig dist;
};

// Builds the configuration from an optional recipe name or TOML path and `section.key=value` overrides, then
// validates it for a run of `world_size` processes. Throws InputError naming the bad key, value, or file.
Config load_config(const std::optional<std::string>& recipe_or_path, const std::vector<std::string>& overrides,
                   int64_t world_size = 1);

// Parses TOML text (a recipe or a saved config.toml) onto `cfg`; `origin` names the source in errors.
void apply_toml(Config& cfg, const std::string& toml_text, const std::string& origin);
// Applies one `section.key=value` override.
void apply_override(Config& cfg, const std::string& assignment);
// Checks ranges and cross-key rules, and derives parallel.dp = 0 as world_size / (pp x sp x tp) and
// train.grad_accum from train.global_batch. Whether the layout fits the world and the model is parallel::make_plan's
// check. Throws InputError.
void validate(Config& cfg, int64_t world_size = 1);

// The resolved configuration as TOML, every key present (written to RUN_DIR/config.toml and to checkpoints).
std::string dump_toml(const Config& cfg);

// Names of the recipes compiled into the binary (configs/*.toml).
std::vector<std::string> recipe_names();
// The TOML text of a recipe, or nullopt.
std::optional<std::string> recipe_text(const std::string& name);

}  // namespace kolos
