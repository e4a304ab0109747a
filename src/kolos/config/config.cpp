#include "kolos/config/config.h"

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <variant>

#include <toml++/toml.h>

#include "kolos/core/error.h"
#include "kolos/core/units.h"

namespace kolos {

namespace {

// Every key of every section, in the order they are documented and dumped. `f(section, key, field)`.
template <typename F>
void for_each_key(Config& c, F&& f) {
  auto& m = c.model;
  f("model", "arch", m.arch);
  f("model", "layers", m.layers);
  f("model", "hidden", m.hidden);
  f("model", "heads", m.heads);
  f("model", "kv_heads", m.kv_heads);
  f("model", "ffn_hidden", m.ffn_hidden);
  f("model", "vocab", m.vocab);
  f("model", "seq_len", m.seq_len);
  f("model", "dropout", m.dropout);
  f("model", "norm_eps", m.norm_eps);
  f("model", "rope_theta", m.rope_theta);
  f("model", "tie_embeddings", m.tie_embeddings);
  f("model", "init_std", m.init_std);
  auto& d = c.data;
  f("data", "path", d.path);
  f("data", "synthetic", d.synthetic);
  auto& t = c.train;
  f("train", "steps", t.steps);
  f("train", "batch_size", t.batch_size);
  f("train", "grad_accum", t.grad_accum);
  f("train", "global_batch", t.global_batch);
  f("train", "seed", t.seed);
  f("train", "dtype", t.dtype);
  f("train", "loss_scale_init", t.loss_scale_init);
  f("train", "loss_scale_growth_interval", t.loss_scale_growth_interval);
  f("train", "loss_scale_hysteresis", t.loss_scale_hysteresis);
  f("train", "log_every", t.log_every);
  f("train", "eval_every", t.eval_every);
  f("train", "eval_batches", t.eval_batches);
  f("train", "early_stop", t.early_stop);
  f("train", "target_val_loss", t.target_val_loss);
  f("train", "save_every", t.save_every);
  f("train", "keep_checkpoints", t.keep_checkpoints);
  f("train", "activation_checkpointing", t.activation_checkpointing);
  f("train", "threads", t.threads);
  f("train", "mfu", t.mfu);
  f("train", "trace_comm", t.trace_comm);
  f("train", "sample_tokens", t.sample_tokens);
  f("train", "sample_prompt", t.sample_prompt);
  auto& o = c.optim;
  f("optim", "name", o.name);
  f("optim", "lr", o.lr);
  f("optim", "min_lr", o.min_lr);
  f("optim", "warmup_steps", o.warmup_steps);
  f("optim", "schedule", o.schedule);
  f("optim", "decay_power", o.decay_power);
  f("optim", "weight_decay", o.weight_decay);
  f("optim", "beta1", o.beta1);
  f("optim", "beta2", o.beta2);
  f("optim", "eps", o.eps);
  f("optim", "grad_clip", o.grad_clip);
  f("optim", "decay_norms_biases", o.decay_norms_biases);
  f("optim", "decay_embeddings", o.decay_embeddings);
  f("optim", "momentum", o.momentum);
  f("optim", "nesterov", o.nesterov);
  f("optim", "trust_coefficient", o.trust_coefficient);
  f("optim", "min_trust_ratio", o.min_trust_ratio);
  f("optim", "max_trust_ratio", o.max_trust_ratio);
  f("optim", "bias_correction", o.bias_correction);
  f("optim", "adapt_norms_biases", o.adapt_norms_biases);
  auto& p = c.parallel;
  f("parallel", "dp", p.dp);
  f("parallel", "tp", p.tp);
  f("parallel", "tp_mode", p.tp_mode);
  f("parallel", "tp_depth", p.tp_depth);
  f("parallel", "megatron_sp", p.megatron_sp);
  f("parallel", "sp", p.sp);
  f("parallel", "sp_mode", p.sp_mode);
  f("parallel", "pp", p.pp);
  f("parallel", "pp_schedule", p.pp_schedule);
  f("parallel", "pp_virtual", p.pp_virtual);
  f("parallel", "pp_layers", p.pp_layers);
  f("parallel", "zero", p.zero);
  f("parallel", "bucket_mb", p.bucket_mb);
  auto& mm = c.memory;
  f("memory", "placement", mm.placement);
  f("memory", "budget", mm.budget);
  f("memory", "offload_tier", mm.offload_tier);
  f("memory", "nvme_path", mm.nvme_path);
  f("memory", "shard_param_frac", mm.shard_param_frac);
  f("memory", "offload_optim_frac", mm.offload_optim_frac);
  f("memory", "offload_param_frac", mm.offload_param_frac);
  f("memory", "offload_grads", mm.offload_grads);
  f("memory", "overlap_step", mm.overlap_step);
  auto& ds = c.dist;
  f("dist", "backend", ds.backend);
  f("dist", "timeout_s", ds.timeout_s);
  f("dist", "iface", ds.iface);
  f("dist", "shm", ds.shm);
}

const char* kSections[] = {"model", "data", "train", "optim", "parallel", "memory", "dist"};

std::string known_keys(Config& c, const std::string& section) {
  std::string out;
  for_each_key(c, [&](const char* s, const char* k, auto&) {
    if (section == s) out += (out.empty() ? "" : ", ") + std::string(k);
  });
  return out;
}

// Assigns a TOML node to a field, checking its type. `name` is "section.key".
void assign(const toml::node& node, std::string& field, const std::string& name, const std::string& origin) {
  auto v = node.value<std::string>();
  KOLOS_CHECK(v.has_value(), "{}: config key {} expects a string, got {}", origin, name, toml::impl::node_type_friendly_names[static_cast<int>(node.type())]);
  field = *v;
}
void assign(const toml::node& node, int64_t& field, const std::string& name, const std::string& origin) {
  KOLOS_CHECK(node.is_integer(), "{}: config key {} expects an integer, got {}", origin, name, toml::impl::node_type_friendly_names[static_cast<int>(node.type())]);
  field = *node.value<int64_t>();
}
void assign(const toml::node& node, double& field, const std::string& name, const std::string& origin) {
  KOLOS_CHECK(node.is_number(), "{}: config key {} expects a number, got {}", origin, name, toml::impl::node_type_friendly_names[static_cast<int>(node.type())]);
  field = *node.value<double>();
}
void assign(const toml::node& node, bool& field, const std::string& name, const std::string& origin) {
  KOLOS_CHECK(node.is_boolean(), "{}: config key {} expects true or false, got {}", origin, name, toml::impl::node_type_friendly_names[static_cast<int>(node.type())]);
  field = *node.value<bool>();
}

// Sets section.key from a node; throws InputError for an unknown key.
void set_key(Config& cfg, const std::string& section, const std::string& key, const toml::node& node,
             const std::string& origin) {
  bool section_known = false;
  for (const char* s : kSections) section_known |= section == s;
  KOLOS_CHECK(section_known, "{}: unknown config section [{}] (expected one of model, data, train, optim, parallel, memory, dist)",
              origin, section);
  bool found = false;
  for_each_key(cfg, [&](const char* s, const char* k, auto& field) {
    if (section == s && key == k) {
      assign(node, field, section + "." + key, origin);
      found = true;
    }
  });
  KOLOS_CHECK(found, "{}: unknown config key {}.{} (known keys of [{}]: {})", origin, section, key, section,
              known_keys(cfg, section));
}

std::string toml_value(const std::string& v) {
  std::ostringstream os;
  os << toml::value<std::string>(v);
  return os.str();
}
std::string toml_value(int64_t v) { return std::to_string(v); }
std::string toml_value(bool v) { return v ? "true" : "false"; }
std::string toml_value(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a float in TOML
  return s;
}

template <typename T>
void check_one_of(const T& value, std::initializer_list<T> allowed, const char* key) {
  for (const auto& a : allowed)
    if (value == a) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + fmt::format("\"{}\"", a);
  throw InputError(fmt::format("config key {}: expected one of {}, got \"{}\"", key, list, value));
}

}  // namespace

void apply_toml(Config& cfg, const std::string& toml_text, const std::string& origin) {
  toml::table tbl;
  try {
    tbl = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    const auto& src = e.source();
    throw InputError(fmt::format("{}:{}:{}: not valid TOML: {}", origin, src.begin.line, src.begin.column,
                                 e.description()));
  }
  for (auto&& [section, node] : tbl) {
    const std::string sec(section.str());
    KOLOS_CHECK(node.is_table(), "{}: expected a table [{}], got a plain key", origin, sec);
    for (auto&& [key, value] : *node.as_table()) set_key(cfg, sec, std::string(key.str()), value, origin);
  }
}

void apply_override(Config& cfg, const std::string& assignment) {
  const auto eq = assignment.find('=');
  const auto dot = assignment.find('.');
  KOLOS_CHECK(eq != std::string::npos && dot != std::string::npos && dot < eq,
              "--set {}: expected section.key=value (for example --set train.steps=100)", assignment);
  const std::string section = assignment.substr(0, dot);
  const std::string key = assignment.substr(dot + 1, eq - dot - 1);
  const std::string text = assignment.substr(eq + 1);
  // The value is TOML (100, 1e-3, true, "x"); a bare word that is not TOML is taken as a string (model.arch=llama).
  toml::table parsed;
  bool ok = true;
  try {
    parsed = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    ok = false;
  }
  if (ok && parsed.contains("v")) {
    set_key(cfg, section, key, *parsed.get("v"), "--set " + assignment);
  } else {
    set_key(cfg, section, key, toml::value<std::string>(text), "--set " + assignment);
  }
}

void validate(Config& cfg, int64_t world_size) {
  auto& m = cfg.model;
  check_one_of<std::string>(m.arch, {"gpt2", "llama"}, "model.arch");
  KOLOS_CHECK(m.layers >= 1, "config key model.layers: expected >= 1, got {}", m.layers);
  KOLOS_CHECK(m.hidden >= 1, "config key model.hidden: expected >= 1, got {}", m.hidden);
  KOLOS_CHECK(m.heads >= 1 && m.hidden % m.heads == 0,
              "config key model.heads: expected a divisor of model.hidden = {}, got {}", m.hidden, m.heads);
  if (m.kv_heads == 0) m.kv_heads = m.heads;
  KOLOS_CHECK(m.kv_heads >= 1 && m.heads % m.kv_heads == 0,
              "config key model.kv_heads: expected a divisor of model.heads = {}, got {}", m.heads, m.kv_heads);
  KOLOS_CHECK(m.arch == "llama" || m.kv_heads == m.heads,
              "config key model.kv_heads: gpt2 has multi-head attention, expected {} (= model.heads), got {}", m.heads,
              m.kv_heads);
  if (m.ffn_hidden == 0) {
    if (m.arch == "gpt2") {
      m.ffn_hidden = 4 * m.hidden;
    } else {  // LLaMA: 2/3 of 4h, rounded up to a multiple of 256
      const int64_t f = 2 * 4 * m.hidden / 3;
      m.ffn_hidden = (f + 255) / 256 * 256;
    }
  }
  KOLOS_CHECK(m.ffn_hidden >= 1, "config key model.ffn_hidden: expected >= 1, got {}", m.ffn_hidden);
  KOLOS_CHECK(m.vocab >= 2, "config key model.vocab: expected >= 2, got {}", m.vocab);
  KOLOS_CHECK(m.seq_len >= 1, "config key model.seq_len: expected >= 1, got {}", m.seq_len);
  KOLOS_CHECK(m.dropout >= 0 && m.dropout < 1, "config key model.dropout: expected in [0, 1), got {}", m.dropout);
  KOLOS_CHECK(m.norm_eps > 0, "config key model.norm_eps: expected > 0, got {}", m.norm_eps);
  KOLOS_CHECK(m.rope_theta > 0, "config key model.rope_theta: expected > 0, got {}", m.rope_theta);
  KOLOS_CHECK(m.arch == "llama" || m.tie_embeddings,
              "config key model.tie_embeddings: gpt2 ties its output head to the token embedding, expected true");
  KOLOS_CHECK(m.arch != "llama" || (m.hidden / m.heads) % 2 == 0,
              "config keys model.hidden / model.heads: RoPE needs an even head dimension, got {}", m.hidden / m.heads);
  KOLOS_CHECK(m.init_std > 0, "config key model.init_std: expected > 0, got {}", m.init_std);

  auto& t = cfg.train;
  KOLOS_CHECK(t.steps >= 1, "config key train.steps: expected >= 1, got {}", t.steps);
  KOLOS_CHECK(t.batch_size >= 1, "config key train.batch_size: expected >= 1, got {}", t.batch_size);
  KOLOS_CHECK(t.grad_accum >= 1, "config key train.grad_accum: expected >= 1, got {}", t.grad_accum);
  KOLOS_CHECK(t.global_batch >= 0, "config key train.global_batch: expected >= 0, got {}", t.global_batch);
  KOLOS_CHECK(t.log_every >= 1, "config key train.log_every: expected >= 1, got {}", t.log_every);
  KOLOS_CHECK(t.eval_every >= 0, "config key train.eval_every: expected >= 0, got {}", t.eval_every);
  KOLOS_CHECK(t.eval_batches >= 0, "config key train.eval_batches: expected >= 0, got {}", t.eval_batches);
  KOLOS_CHECK(t.early_stop >= 0, "config key train.early_stop: expected >= 0, got {}", t.early_stop);
  KOLOS_CHECK(std::isfinite(t.target_val_loss) && t.target_val_loss >= 0,
              "config key train.target_val_loss: expected a number >= 0, got {}", t.target_val_loss);
  KOLOS_CHECK((t.early_stop == 0 && t.target_val_loss == 0) || t.eval_every > 0,
              "config key train.{}: needs train.eval_every > 0 (it acts on the evaluations during training)",
              t.early_stop > 0 ? "early_stop" : "target_val_loss");
  KOLOS_CHECK(t.save_every >= 0, "config key train.save_every: expected >= 0, got {}", t.save_every);
  KOLOS_CHECK(t.keep_checkpoints >= 0, "config key train.keep_checkpoints: expected >= 0, got {}", t.keep_checkpoints);
  KOLOS_CHECK(t.threads >= 0, "config key train.threads: expected >= 0, got {}", t.threads);
  KOLOS_CHECK(t.sample_tokens >= 0, "config key train.sample_tokens: expected >= 0, got {}", t.sample_tokens);
  check_one_of<std::string>(t.dtype, {"fp32", "bf16", "fp16"}, "train.dtype");
  // Gloo (LibTorch 1.13) has no bf16 collectives, and the tensor- and sequence-parallel regions would send bf16
  // activations: not yet supported.
  KOLOS_CHECK(t.dtype != "bf16" || (cfg.parallel.tp == 1 && cfg.parallel.sp == 1),
              "config key train.dtype: \"bf16\" is not yet supported with parallel.tp = {} / parallel.sp = {} (the "
              "tensor- and sequence-parallel collectives would carry bf16, which Gloo lacks); use tp = sp = 1, or "
              "train.dtype = \"fp32\" or \"fp16\"",
              cfg.parallel.tp, cfg.parallel.sp);
  KOLOS_CHECK(std::isfinite(t.loss_scale_init) && t.loss_scale_init > 0,
              "config key train.loss_scale_init: expected a finite number > 0, got {}", t.loss_scale_init);
  KOLOS_CHECK(t.loss_scale_growth_interval >= 1, "config key train.loss_scale_growth_interval: expected >= 1, got {}",
              t.loss_scale_growth_interval);
  KOLOS_CHECK(t.loss_scale_hysteresis >= 1, "config key train.loss_scale_hysteresis: expected >= 1, got {}",
              t.loss_scale_hysteresis);
  // "none", "full" (every block) or "every:K" (blocks 0, K, 2K, ...); parallel::apply reads it.
  const std::string& ckpt = t.activation_checkpointing;
  const std::string every = ckpt.rfind("every:", 0) == 0 ? ckpt.substr(6) : std::string();
  KOLOS_CHECK(ckpt == "none" || ckpt == "full" ||
                  (!every.empty() && every.size() <= 18 && every.find_first_not_of("0123456789") == std::string::npos &&
                   std::stoll(every) >= 1),
              "config key train.activation_checkpointing: expected \"none\", \"full\" or \"every:K\" with an integer "
              "K >= 1, got \"{}\"", ckpt);

  auto& o = cfg.optim;
  check_one_of<std::string>(o.name, {"adamw", "sgd", "lars", "lamb", "lion"}, "optim.name");
  check_one_of<std::string>(o.schedule, {"cosine", "linear", "poly", "constant"}, "optim.schedule");
  KOLOS_CHECK(std::isfinite(o.decay_power) && o.decay_power > 0,
              "config key optim.decay_power: expected a finite number > 0, got {}", o.decay_power);
  KOLOS_CHECK(o.lr > 0, "config key optim.lr: expected > 0, got {}", o.lr);
  KOLOS_CHECK(o.min_lr >= 0 && o.min_lr <= o.lr, "config key optim.min_lr: expected in [0, optim.lr = {}], got {}", o.lr, o.min_lr);
  KOLOS_CHECK(o.warmup_steps >= 0, "config key optim.warmup_steps: expected >= 0, got {}", o.warmup_steps);
  KOLOS_CHECK(o.weight_decay >= 0, "config key optim.weight_decay: expected >= 0, got {}", o.weight_decay);
  KOLOS_CHECK(o.beta1 >= 0 && o.beta1 < 1, "config key optim.beta1: expected in [0, 1), got {}", o.beta1);
  KOLOS_CHECK(o.beta2 >= 0 && o.beta2 < 1, "config key optim.beta2: expected in [0, 1), got {}", o.beta2);
  KOLOS_CHECK(o.eps > 0, "config key optim.eps: expected > 0, got {}", o.eps);
  KOLOS_CHECK(o.grad_clip >= 0, "config key optim.grad_clip: expected >= 0 (0 = off), got {}", o.grad_clip);
  KOLOS_CHECK(o.momentum >= 0 && o.momentum < 1, "config key optim.momentum: expected in [0, 1), got {}", o.momentum);
  KOLOS_CHECK(!o.nesterov || o.momentum > 0,
              "config key optim.nesterov: Nesterov momentum needs optim.momentum > 0, got {}", o.momentum);
  KOLOS_CHECK(!o.nesterov || o.name == "sgd",
              "config key optim.nesterov: only optim.name = \"sgd\" has Nesterov momentum, got \"{}\"", o.name);
  KOLOS_CHECK(o.trust_coefficient > 0, "config key optim.trust_coefficient: expected > 0, got {}",
              o.trust_coefficient);
  KOLOS_CHECK(o.min_trust_ratio >= 0, "config key optim.min_trust_ratio: expected >= 0, got {}", o.min_trust_ratio);
  KOLOS_CHECK(o.max_trust_ratio == 0 || o.max_trust_ratio >= o.min_trust_ratio,
              "config key optim.max_trust_ratio: expected 0 (no clamp) or >= optim.min_trust_ratio = {}, got {}",
              o.min_trust_ratio, o.max_trust_ratio);

  auto& p = cfg.parallel;
  check_one_of<std::string>(p.tp_mode, {"1d", "2d", "2.5d", "3d"}, "parallel.tp_mode");
  check_one_of<std::string>(p.sp_mode, {"ring", "ulysses"}, "parallel.sp_mode");
  check_one_of<std::string>(p.pp_schedule, {"gpipe", "1f1b", "interleaved"}, "parallel.pp_schedule");
  KOLOS_CHECK(p.dp >= 0, "config key parallel.dp: expected >= 0 (0 = derived), got {}", p.dp);
  KOLOS_CHECK(p.zero >= 0 && p.zero <= 3, "config key parallel.zero: expected 0, 1, 2 or 3, got {}", p.zero);
  KOLOS_CHECK(p.bucket_mb > 0, "config key parallel.bucket_mb: expected > 0, got {}", p.bucket_mb);
  for (auto [key, v] : {std::pair<const char*, int64_t>{"parallel.tp", p.tp}, {"parallel.sp", p.sp},
                        {"parallel.pp", p.pp}, {"parallel.tp_depth", p.tp_depth}, {"parallel.pp_virtual", p.pp_virtual}})
    KOLOS_CHECK(v >= 1, "config key {}: expected >= 1, got {}", key, v);
  // dp = 0 derives from the world size; whether the degrees fit the world and the model, and which modes are
  // supported, is the Plan's check (parallel/plan.h).
  if (p.dp == 0) {
    const int64_t others = p.pp * p.sp * p.tp;
    KOLOS_CHECK(world_size % others == 0,
                "config key parallel.dp = 0 derives dp = world / (pp x sp x tp) = {} / {}, which is not a whole "
                "number: choose pp, sp, tp whose product divides the number of processes",
                world_size, others);
    p.dp = world_size / others;
  }
  if (t.global_batch > 0) {
    const int64_t per_step = t.batch_size * p.dp;
    KOLOS_CHECK(t.global_batch % per_step == 0,
                "config key train.global_batch: {} is not a multiple of train.batch_size x parallel.dp = {}",
                t.global_batch, per_step);
    const int64_t derived = t.global_batch / per_step;
    KOLOS_CHECK(t.grad_accum == 1 || t.grad_accum == derived,
                "config keys train.global_batch = {}, train.batch_size = {}, train.grad_accum = {}, parallel.dp = {} "
                "are inconsistent: expected global_batch = batch_size x grad_accum x dp",
                t.global_batch, t.batch_size, t.grad_accum, p.dp);
    t.grad_accum = derived;
  }
  t.global_batch = t.batch_size * t.grad_accum * p.dp;

  auto& mm = cfg.memory;
  check_one_of<std::string>(mm.placement, {"static", "auto"}, "memory.placement");
  check_one_of<std::string>(mm.offload_tier, {"host", "nvme"}, "memory.offload_tier");
  if (!mm.budget.empty()) parse_bytes(mm.budget, "config key memory.budget");
  for (auto [key, v] : {std::pair<const char*, double>{"memory.shard_param_frac", mm.shard_param_frac},
                        {"memory.offload_optim_frac", mm.offload_optim_frac},
                        {"memory.offload_param_frac", mm.offload_param_frac}})
    KOLOS_CHECK(v >= 0 && v <= 1, "config key {}: expected a fraction in [0, 1], got {}", key, v);
  if (mm.placement == "auto") {
    // The tier holds every master shard, gradient shard and optimizer state; the budget sizes the shard cache.
    KOLOS_CHECK(!mm.budget.empty(),
                "config key memory.budget is empty: memory.placement = \"auto\" keeps as many parameter shards resident "
                "as the budget allows; give one (e.g. \"2GiB\")");
    KOLOS_CHECK(mm.offload_optim_frac == 0 && mm.offload_param_frac == 0 && !mm.offload_grads,
                "config keys memory.offload_optim_frac = {} / memory.offload_param_frac = {} / memory.offload_grads = {} "
                "with memory.placement = \"auto\": auto decides placement itself; leave them at 0 / 0 / false, or use "
                "\"static\"",
                mm.offload_optim_frac, mm.offload_param_frac, mm.offload_grads);
    KOLOS_CHECK(cfg.parallel.zero == 3,
                "config key parallel.zero = {} with memory.placement = \"auto\": auto places the chunks of ZeRO-3; set "
                "parallel.zero = 3, or memory.placement = \"static\"",
                cfg.parallel.zero);
  }
  const bool offloading = mm.offload_optim_frac > 0 || mm.offload_param_frac > 0 || mm.placement == "auto";
  KOLOS_CHECK(!offloading || mm.offload_tier != "nvme" || !mm.nvme_path.empty(),
              "config key memory.nvme_path is empty: memory.offload_tier = \"nvme\" with an offload fraction > 0 needs "
              "a directory for the swap files");
  KOLOS_CHECK(!offloading || (cfg.optim.name != "lars" && cfg.optim.name != "lamb"),
              "config keys memory.placement = \"{}\" / memory.offload_optim_frac = {} / memory.offload_param_frac = {} "
              "with optim.name = \"{}\": its trust ratios need whole-tensor norms before any element is updated, which "
              "the streamed optimizer step does not compute; use adamw, sgd or lion, or no offload",
              mm.placement, mm.offload_optim_frac, mm.offload_param_frac, cfg.optim.name);

  KOLOS_CHECK(!mm.offload_grads || mm.offload_param_frac > 0,
              "config key memory.offload_grads = true: gradients are offloaded with the chunks whose master "
              "parameters are offloaded, and memory.offload_param_frac is 0; set it > 0 (with parallel.zero = 3), or "
              "memory.offload_grads = false");
  check_one_of<std::string>(cfg.dist.backend, {"gloo", "nccl"}, "dist.backend");
  KOLOS_CHECK(cfg.dist.timeout_s > 0, "config key dist.timeout_s: expected > 0, got {}", cfg.dist.timeout_s);
}

std::string dump_toml(const Config& cfg_in) {
  Config cfg = cfg_in;
  std::string out;
  std::string current;
  for_each_key(cfg, [&](const char* s, const char* k, auto& field) {
    if (current != s) {
      out += (out.empty() ? "" : "\n") + fmt::format("[{}]\n", s);
      current = s;
    }
    out += fmt::format("{} = {}\n", k, toml_value(field));
  });
  return out;
}

Config load_config(const std::optional<std::string>& recipe_or_path, const std::vector<std::string>& overrides,
                   int64_t world_size) {
  Config cfg;
  const std::string source = recipe_or_path.value_or("tiny");
  if (auto text = recipe_text(source)) {
    apply_toml(cfg, *text, "recipe " + source);
  } else {
    std::ifstream f(source);
    if (!f) {
      std::string names;
      for (const auto& n : recipe_names()) names += (names.empty() ? "" : ", ") + n;
      throw InputError(fmt::format("--config {}: no such file, and not a recipe name (recipes: {})", source, names));
    }
    std::stringstream ss;
    ss << f.rdbuf();
    apply_toml(cfg, ss.str(), source);
  }
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg, world_size);
  return cfg;
}

}  // namespace kolos
