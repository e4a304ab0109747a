// Plan: the parallel layout of a run — the degree of every mesh axis and the mode of every parallel technique —
// checked against the world size and the model before anything is built (DESIGN "Plan").
//
// make_plan() fails with kolos::InputError (exit 2) naming the bad key, its value and the rule it breaks:
//   - pp × dp × sp × tp must equal the world size; parallel.dp = 0 derives dp = world / (pp · sp · tp), which must
//     be a whole number;
//   - tensor parallelism (1d): heads, key/value heads and model.ffn_hidden divisible by tp; (2d): tp = q² a perfect
//     square, heads and key/value heads divisible by q, model.hidden by q², ffn_hidden by q² (GPT-2, whose fc bias
//     is in q² pieces) or q (LLaMA), train.batch_size by q, and no sp, pp or megatron_sp; (2.5d): tp = d·q² with
//     d = parallel.tp_depth >= 1, the 2D rules on the q × q layer, and train.batch_size by d·q; (3d): tp = q³ a
//     perfect cube, heads and key/value heads divisible by q, model.hidden by q³, ffn_hidden by q³ (GPT-2) or q²
//     (LLaMA), train.batch_size by q², and no sp, pp or megatron_sp; megatron_sp needs
//     tp > 1 and the sequence (per sp rank) divisible by tp; sp: ring needs the sequence divisible by 2·sp,
//     ulysses by sp and the heads per tp rank by sp;
//   - pipeline (pp > 1): the schedule's rules (pp_virtual > 1 only with "interleaved", whose train.grad_accum
//     micro-batches must be a multiple of pp), the stage split's (model.layers >= pp · pp_virtual; pp_layers one
//     count per virtual stage summing to model.layers), and zero <= 1;
//   - parallel.zero > 0 needs dp > 1 to shard anything: with dp = 1 it is accepted and behaves as zero = 0.
// The Plan is a value: every rank computes the same one from the same config and world size.
#pragma once

#include <string>

#include "kolos/config/config.h"
#include "kolos/nn/param.h"

namespace kolos::parallel {

struct Plan {
  int world = 1;
  int pp = 1, dp = 1, sp = 1, tp = 1;
  int zero = 0;
  std::string tp_mode = "1d", sp_mode = "ring", pp_schedule = "1f1b";
  int tp_depth = 1, pp_virtual = 1;
  bool megatron_sp = false;
  double bucket_mb = 25.0;

  // "dp=2, zero=1" style one-line description (axes of degree 1 left out; "1 process" when nothing is parallel).
  std::string describe() const;
  // How the tp ranks hold the parameters (nn::TpLayout): 1D over tp, the 2D grid, 2.5D's tp_depth layers of it, or
  // the 3D cube.
  nn::TpLayout tp_layout() const {
    const bool layers = tp > 1 && tp_mode == "2.5d", cube = tp > 1 && tp_mode == "3d";
    return nn::TpLayout(tp, tp > 1 && (tp_mode == "2d" || layers || cube), layers ? tp_depth : 1, cube);
  }
};

// Validates `config.parallel` against `world_size` and `config.model` (see the rules above) and returns the plan.
Plan make_plan(const Config& config, int world_size);

}  // namespace kolos::parallel
