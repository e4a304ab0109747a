#include "kolos/parallel/plan.h"

#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kolos/core/error.h"
#include "kolos/parallel/pipeline/schedule.h"
#include "kolos/parallel/pipeline/stages.h"

namespace kolos::parallel {

std::string Plan::describe() const {
  std::vector<std::string> parts;
  if (pp > 1) parts.push_back(fmt::format("pp={}", pp));
  if (dp > 1) parts.push_back(fmt::format("dp={}", dp));
  if (sp > 1) parts.push_back(fmt::format("sp={} ({})", sp, sp_mode));
  if (tp > 1) parts.push_back(fmt::format("tp={} ({})", tp, tp_mode));
  if (zero > 0) parts.push_back(fmt::format("zero={}", zero));
  if (parts.empty()) return "1 process";
  return fmt::format("{}", fmt::join(parts, ", "));
}

namespace {

// 2D (tensor/tp2d.h): tp = q² ranks on a q × q grid; weights split q × q, activations batch / q × features / q, and
// the biases and norm weights into q² pieces. 2.5D (tensor/tp25d.h): tp = d·q², d = parallel.tp_depth layers of that
// grid holding the same pieces, the batch split d·q ways. The modes they do not compose with yet are refused.
void check_grid(const Config& config, const Plan& plan) {
  const auto& m = config.model;
  const bool layers = plan.tp_mode == "2.5d";
  const std::string mode = fmt::format("parallel.tp = {} with tp_mode \"{}\"", plan.tp, plan.tp_mode);
  int d = 1;
  if (layers) {
    d = plan.tp_depth;
    KOLOS_CHECK(d >= 1 && plan.tp % d == 0,
                "{}: 2.5D tensor parallelism needs parallel.tp = d·q² with d = parallel.tp_depth; parallel.tp_depth = "
                "{} does not divide tp (use e.g. tp = 8 with tp_depth = 2, a 2 × 2 grid on 2 layers)",
                mode, d);
  }
  const int layer = plan.tp / d;
  int q = 1;
  while (q * q < layer) ++q;
  if (layers) {
    KOLOS_CHECK(q * q == layer,
                "{}: 2.5D tensor parallelism needs parallel.tp = d·q²; tp / parallel.tp_depth = {} / {} = {} ranks per "
                "layer is not a square (use e.g. tp = 8 with tp_depth = 2, or tp = 18 with tp_depth = 2)",
                mode, plan.tp, d, layer);
  } else {
    KOLOS_CHECK(q * q == plan.tp,
                "{}: 2D tensor parallelism needs a square number of tp ranks (a q × q grid); use parallel.tp = 4, 9, "
                "16, ...",
                mode);
  }
  const int64_t kv = m.kv_heads > 0 ? m.kv_heads : m.heads;
  KOLOS_CHECK(m.heads % q == 0,
              "{}: model.heads = {} must be divisible by q = {} (each grid column computes whole heads)", mode, m.heads,
              q);
  KOLOS_CHECK(kv % q == 0,
              "{}: the {} key/value heads (model.kv_heads) must be divisible by q = {} (each grid column keeps whole "
              "key/value heads)",
              mode, kv, q);
  KOLOS_CHECK(m.hidden % (q * q) == 0,
              "{}: model.hidden = {} must be divisible by q² = {} (the norm weights and biases are split into q² "
              "pieces)",
              mode, m.hidden, q * q);
  // GPT-2's fc bias is split into q² pieces; LLaMA has no biases, its ffn only into q blocks.
  const int64_t ffn_parts = m.arch == "gpt2" ? q * q : q;
  KOLOS_CHECK(m.ffn_hidden % ffn_parts == 0, "{}: model.ffn_hidden = {} must be divisible by {} ({})", mode,
              m.ffn_hidden, ffn_parts, m.arch == "gpt2" ? "q², the pieces of the fc bias" : "q, the grid's side");
  if (layers) {
    KOLOS_CHECK(config.train.batch_size % (d * q) == 0,
                "{}: train.batch_size = {} must be divisible by d·q = {}·{} = {} (each layer's rows hold a block of "
                "the batch each)",
                mode, config.train.batch_size, d, q, d * q);
  } else {
    KOLOS_CHECK(config.train.batch_size % q == 0,
                "{}: train.batch_size = {} must be divisible by q = {} (the grid's rows hold a block of the batch "
                "each)",
                mode, config.train.batch_size, q);
  }
  KOLOS_CHECK(plan.sp == 1 && plan.pp == 1 && !plan.megatron_sp,
              "parallel.tp_mode = \"{}\" with sp = {}, pp = {}, megatron_sp = {}: {} tensor parallelism does not yet "
              "compose with sequence or pipeline parallelism; use sp = 1, pp = 1, megatron_sp = false, or tp_mode "
              "\"1d\"",
              plan.tp_mode, plan.sp, plan.pp, plan.megatron_sp, layers ? "2.5D" : "2D");
}

// 3D (tensor/tp3d.h): tp = q³ ranks on a q × q × q cube; every parameter in q³ pieces (a matrix's input features in
// q² of them, the vectors in q³), the heads split q ways, the batch q² ways. Not composed with sp or pp yet.
void check_cube(const Config& config, const Plan& plan) {
  const auto& m = config.model;
  const std::string mode = fmt::format("parallel.tp = {} with tp_mode \"3d\"", plan.tp);
  int q = 1;
  while (q * q * q < plan.tp) ++q;
  KOLOS_CHECK(q * q * q == plan.tp,
              "{}: 3D tensor parallelism needs a cube number of tp ranks (a q × q × q cube); use parallel.tp = 8, 27, "
              "64, ...",
              mode);
  const int64_t kv = m.kv_heads > 0 ? m.kv_heads : m.heads, q3 = static_cast<int64_t>(q) * q * q;
  KOLOS_CHECK(m.heads % q == 0, "{}: model.heads = {} must be divisible by q = {} (each rank computes whole heads)",
              mode, m.heads, q);
  KOLOS_CHECK(kv % q == 0,
              "{}: the {} key/value heads (model.kv_heads) must be divisible by q = {} (each rank keeps whole "
              "key/value heads)",
              mode, kv, q);
  KOLOS_CHECK(m.hidden % q3 == 0,
              "{}: model.hidden = {} must be divisible by q³ = {} (the norm weights and biases are split into q³ "
              "pieces)",
              mode, m.hidden, q3);
  // GPT-2's fc bias is split into q³ pieces; LLaMA has no biases, its ffn only the input of the down projection
  // into q² pieces.
  const int64_t ffn_parts = m.arch == "gpt2" ? q3 : static_cast<int64_t>(q) * q;
  KOLOS_CHECK(m.ffn_hidden % ffn_parts == 0, "{}: model.ffn_hidden = {} must be divisible by {} ({})", mode,
              m.ffn_hidden, ffn_parts, m.arch == "gpt2" ? "q³, the pieces of the fc bias" : "q², the pieces of the "
              "down projection's input");
  KOLOS_CHECK(config.train.batch_size % (q * q) == 0,
              "{}: train.batch_size = {} must be divisible by q² = {} (the cube splits the batch q² ways)", mode,
              config.train.batch_size, q * q);
  KOLOS_CHECK(plan.sp == 1 && plan.pp == 1 && !plan.megatron_sp,
              "parallel.tp_mode = \"3d\" with sp = {}, pp = {}, megatron_sp = {}: 3D tensor parallelism does not yet "
              "compose with sequence or pipeline parallelism; use sp = 1, pp = 1, megatron_sp = false, or tp_mode "
              "\"1d\"",
              plan.sp, plan.pp, plan.megatron_sp);
}

}  // namespace

Plan make_plan(const Config& config, int world_size) {
  const auto& p = config.parallel;
  KOLOS_CHECK(world_size >= 1, "world size {}: expected >= 1", world_size);
  Plan plan;
  plan.world = world_size;
  plan.pp = static_cast<int>(p.pp);
  plan.sp = static_cast<int>(p.sp);
  plan.tp = static_cast<int>(p.tp);
  plan.zero = static_cast<int>(p.zero);
  plan.tp_mode = p.tp_mode;
  plan.sp_mode = p.sp_mode;
  plan.pp_schedule = p.pp_schedule;
  plan.tp_depth = static_cast<int>(p.tp_depth);
  plan.pp_virtual = static_cast<int>(p.pp_virtual);
  plan.megatron_sp = p.megatron_sp;
  plan.bucket_mb = p.bucket_mb;

  const int64_t others = p.pp * p.sp * p.tp;
  if (p.dp == 0) {
    KOLOS_CHECK(world_size % others == 0,
                "parallel.dp = 0 derives dp = world / (pp × sp × tp) = {} / {}, which is not a whole number: choose "
                "pp, sp, tp whose product divides the world size {}",
                world_size, others, world_size);
    plan.dp = static_cast<int>(world_size / others);
  } else {
    plan.dp = static_cast<int>(p.dp);
  }
  KOLOS_CHECK(static_cast<int64_t>(plan.dp) * others == world_size,
              "parallel.pp × dp × sp × tp = {} × {} × {} × {} = {} does not match the world size {} (processes "
              "started): set parallel.dp = 0 to derive it, or start {} processes",
              plan.pp, plan.dp, plan.sp, plan.tp, plan.dp * others, world_size, plan.dp * others);

  KOLOS_CHECK(plan.tp_depth == 1 || (plan.tp > 1 && plan.tp_mode == "2.5d"),
              "parallel.tp_depth = {} is the depth of 2.5D tensor parallelism: it needs parallel.tp_mode = \"2.5d\" "
              "and parallel.tp > 1 (got tp_mode \"{}\", tp = {}); leave tp_depth = 1 otherwise",
              plan.tp_depth, plan.tp_mode, plan.tp);
  // Tensor parallelism: every split dimension must divide (the vocabulary is padded instead).
  if (plan.tp > 1) {
    const auto& m = config.model;
    if (plan.tp_mode == "3d") {
      check_cube(config, plan);
    } else if (plan.tp_mode == "2d" || plan.tp_mode == "2.5d") {
      check_grid(config, plan);
    } else {
      const int64_t kv = m.kv_heads > 0 ? m.kv_heads : m.heads;
      KOLOS_CHECK(m.heads % plan.tp == 0,
                  "parallel.tp = {}: model.heads = {} must be divisible by tp (each rank computes whole heads)",
                  plan.tp, m.heads);
      KOLOS_CHECK(kv % plan.tp == 0,
                  "parallel.tp = {}: the {} key/value heads (model.kv_heads) must be divisible by tp (each rank keeps "
                  "whole key/value heads)",
                  plan.tp, kv);
      KOLOS_CHECK(m.ffn_hidden % plan.tp == 0, "parallel.tp = {}: model.ffn_hidden = {} must be divisible by tp",
                  plan.tp, m.ffn_hidden);
    }
  }
  // Slots of later issues.
  if (plan.sp > 1) {
    const auto& m = config.model;
    KOLOS_CHECK(plan.sp_mode == "ring" || plan.sp_mode == "ulysses",
                "parallel.sp_mode = \"{}\": expected \"ring\" or \"ulysses\"", plan.sp_mode);
    if (plan.sp_mode == "ring") {
      KOLOS_CHECK(m.seq_len % (2 * plan.sp) == 0,
                  "parallel.sp = {} with sp_mode \"ring\": model.seq_len = {} must be divisible by 2·sp = {} (the "
                  "zig-zag assignment gives each rank two equal chunks)",
                  plan.sp, m.seq_len, 2 * plan.sp);
    } else {
      KOLOS_CHECK(m.seq_len % plan.sp == 0, "parallel.sp = {}: model.seq_len = {} must be divisible by sp", plan.sp,
                  m.seq_len);
      KOLOS_CHECK((m.heads / plan.tp) % plan.sp == 0,
                  "parallel.sp = {} with sp_mode \"ulysses\": the {} heads of each tp rank (model.heads / tp) must be "
                  "divisible by sp (attention runs on whole heads)",
                  plan.sp, m.heads / plan.tp);
    }
    KOLOS_CHECK(!plan.megatron_sp || (m.seq_len / plan.sp) % plan.tp == 0,
                "parallel.megatron_sp with sp = {}: each sp rank's {} tokens must be divisible by tp = {}", plan.sp,
                m.seq_len / plan.sp, plan.tp);
  }
  if (plan.megatron_sp) {
    KOLOS_CHECK(plan.tp > 1, "parallel.megatron_sp = true splits the sequence over the tp ranks: it needs parallel.tp "
                             "> 1, got {}",
                plan.tp);
    KOLOS_CHECK(config.model.seq_len % plan.tp == 0,
                "parallel.megatron_sp = true: model.seq_len = {} must be divisible by parallel.tp = {} (each tp rank "
                "keeps an equal slice of the sequence)",
                config.model.seq_len, plan.tp);
  }
  if (plan.pp > 1 || plan.pp_virtual > 1) {
    // The schedule's own rules (micro-batches a multiple of pp for interleaved, ...) and the stage split's.
    KOLOS_CHECK(plan.pp_virtual == 1 || plan.pp_schedule == "interleaved",
                "parallel.pp_virtual = {}: virtual stages need parallel.pp_schedule = \"interleaved\", got \"{}\"",
                plan.pp_virtual, plan.pp_schedule);
    pipeline::make_schedule(plan.pp_schedule, plan.pp, static_cast<int>(config.train.grad_accum), plan.pp_virtual);
    pipeline::split_layers(config.model, plan.pp, plan.pp_virtual, p.pp_layers);
    KOLOS_CHECK(plan.zero <= 1,
                "parallel.zero = {} with parallel.pp = {}: ZeRO-2 and ZeRO-3 reduce or gather per micro-batch, which "
                "the pipeline's interleaved forwards and backwards defeat; use zero = 0 or 1 with pipeline parallelism",
                plan.zero, plan.pp);
  }
  KOLOS_CHECK(config.memory.offload_param_frac == 0 || plan.zero == 3,
              "config key memory.offload_param_frac = {}: master parameters are offloaded by chunked ZeRO-3 only, "
              "which needs parallel.zero = 3 (got zero = {}); set parallel.zero = 3 (any dp, one process "
              "included), or memory.offload_param_frac = 0 (memory.offload_optim_frac works at any layout)",
              config.memory.offload_param_frac, plan.zero);
  if (plan.zero == 3) {
    // Chunked ZeRO-3 (memory::ChunkManager) gathers whole (unsplit) parameters over the dp group around the whole
    // model's forward; the chunk layout does not yet know tensor pieces or sequence slices.
    KOLOS_CHECK(plan.tp == 1 && plan.sp == 1,
                "parallel.zero = 3 with parallel.tp = {} and parallel.sp = {}: ZeRO-3 is not yet supported with tensor "
                "or sequence parallelism; use parallel.tp = 1 and parallel.sp = 1, or zero <= 2",
                plan.tp, plan.sp);
    KOLOS_CHECK(config.train.dtype != "fp16",
                "parallel.zero = 3 with train.dtype = \"fp16\": the chunks reduce gradients in fp32 only; use "
                "train.dtype = \"fp32\" or \"bf16\", or zero <= 2");
  }
  return plan;
}

}  // namespace kolos::parallel
