// parallel::apply — the one entry that parallelises a model written as single-device code (DESIGN "Model once,
// parallelised from outside"). It applies, in this fixed order, one slot per technique:
//   1. tensor / sequence sharding: the model's nn::Sharding (1D tensor parallelism with Megatron-SP, 2D on a
//      q × q grid of the tp ranks, 2.5D on d layers of that grid, or 3D on a q × q × q cube; ring or Ulysses
//      attention on the sp axis)
//   2. activation checkpointing: the blocks that train.activation_checkpointing names keep only their input and are
//      recomputed in backward (Model::set_checkpointing; "full", or "every:K": blocks 0, K, 2K, ...)
//   3. pipeline split: this rank's stage holds and runs only its segments of the model (Model::set_segments,
//      parallel/pipeline/stages.h); the trainer runs them with the executor (parallel/pipeline/executor.h)
//   4. data parallel, ZeRO-1/2 (parallel/data/data_parallel.h); ZeRO-3 chunks (memory/chunk_manager.h, driven by
//      DataParallel through the model's block hooks, Model::set_block_hooks)
// Later issues fill their slot and lift their rule in make_plan(); nothing else changes. A layer's forward never
// mentions ranks: every slot works from outside the model.
#pragma once

#include <memory>
#include <vector>

#include "kolos/config/config.h"
#include "kolos/dist/mesh.h"
#include "kolos/models/model.h"
#include "kolos/parallel/data/data_parallel.h"
#include "kolos/parallel/plan.h"
#include "kolos/parallel/tensor/tp25d.h"
#include "kolos/parallel/tensor/tp3d.h"

namespace kolos::parallel {

// What apply() built around the model; the trainer drives it.
struct Parallelized {
  // The grid the model's sharding computes on (at most one of the three): tp_mode "2d", the q × q grid; "2.5d", its
  // tp_depth layers; "3d", the q × q × q cube.
  std::unique_ptr<tensor::Grid2d> grid;
  std::unique_ptr<tensor::Grid25d> grid_25d;
  std::unique_ptr<tensor::Grid3d> grid_3d;
  std::unique_ptr<DataParallel> data;    // owns the parameters, gradients and optimizer of this rank
};

// Which blocks train.activation_checkpointing (validated by load_config) recomputes: "none"; "full", every block;
// "every:K", blocks 0, K, 2K, ... (every:1 = full).
std::vector<bool> checkpointed_blocks(const Config& config);

// `mesh` is null for one process. The plan must come from make_plan() with the mesh's world size. Parameters are
// initialised from (config.train.seed, name) on their global shapes, so every layout starts from the same weights.
Parallelized apply(models::Model& model, const Config& config, const Plan& plan, const dist::Mesh* mesh);

}  // namespace kolos::parallel
