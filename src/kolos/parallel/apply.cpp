#include "kolos/parallel/apply.h"

#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"
#include "kolos/parallel/pipeline/stages.h"
#include "kolos/parallel/sequence/sequence.h"
#include "kolos/parallel/tensor/tp1d.h"

namespace kolos::parallel {

namespace {

// Slot 1: tensor sharding (1D, with Megatron-SP; 2D; 2.5D; 3D) and sequence parallelism on the sp axis (ring,
// Ulysses). Builds the 2D, 2.5D or 3D grid into `out`, which must outlive the model.
void apply_tensor_sequence(models::Model& model, const Config& config, const Plan& plan, const dist::Mesh* mesh,
                           Parallelized& out) {
  if (plan.tp == 1 && plan.sp == 1) return;
  KOLOS_ASSERT(mesh, "tensor or sequence parallelism without a mesh");
  nn::Sharding sharding;
  const bool grid_2d = plan.tp > 1 && plan.tp_mode == "2d", layers = plan.tp > 1 && plan.tp_mode == "2.5d";
  const bool cube = plan.tp > 1 && plan.tp_mode == "3d";
  if (grid_2d || layers || cube) {
    // Collective over the tp group; its lowest world rank names the namespace of its sub-groups.
    auto coords = mesh->coords_of(mesh->rank());
    coords[3] = 0;
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        fmt::format("mesh/{}/{}", grid_2d ? "tp2d" : layers ? "tp25d" : "tp3d", mesh->rank_at(coords)), mesh->store());
    if (cube) {
      out.grid_3d = tensor::Grid3d::create(store, mesh->comm("tp"), mesh->options());
      sharding = tensor::tensor_parallel_3d(*out.grid_3d, config.model.vocab);
    } else if (grid_2d) {
      out.grid = tensor::Grid2d::create(store, mesh->comm("tp"), mesh->options());
      sharding = tensor::tensor_parallel_2d(*out.grid, config.model.vocab);
    } else {
      out.grid_25d = tensor::Grid25d::create(store, mesh->comm("tp"), plan.tp_depth, mesh->options());
      sharding = tensor::tensor_parallel_25d(*out.grid_25d, config.model.vocab);
    }
  } else if (plan.tp > 1) {
    sharding = tensor::tensor_parallel_1d(mesh->comm("tp"), config.model.vocab, plan.megatron_sp);
  }
  if (plan.sp > 1) sequence::add_sequence_parallel(sharding, mesh->comm("sp"), plan.sp_mode);
  model.set_sharding(std::move(sharding));
}

// Slot 2: activation checkpointing. The blocks keep their input only and are recomputed in backward
// (Model::run_block, nn::recompute).
void apply_activation_checkpointing(models::Model& model, const Config& config) {
  model.set_checkpointing(checkpointed_blocks(config));
}

// Slot 3: pipeline split. This rank holds and runs the segments of its stage (the pp coordinate); the trainer
// drives them with the pipeline executor.
void apply_pipeline(models::Model& model, const Config& config, const Plan& plan, const dist::Mesh* mesh) {
  if (plan.pp == 1) return;
  KOLOS_ASSERT(mesh, "pipeline parallelism without a mesh");
  model.set_segments(pipeline::stage_segments(config.model, plan.pp, plan.pp_virtual, config.parallel.pp_layers,
                                              mesh->coord("pp")));
}

// Slot 4: data parallel and ZeRO. Stages 1-2 shard flat buffers; stage 3 (with dp × sp > 1) packs the parameters
// into chunks (memory::ChunkManager, inside DataParallel) and sets the model's block hooks: the stem, each block and
// the head are gathered before they compute and released after, the tied embedding kept gathered.
std::unique_ptr<DataParallel> apply_data_parallel(models::Model& model, const Config& config, const Plan& plan,
                                                  const dist::Mesh* mesh) {
  KOLOS_CHECK(plan.zero <= 3, "parallel.zero = {}: expected 0, 1, 2 or 3", plan.zero);
  // Gradients are averaged (and ZeRO shards) over every rank that trains on other tokens: dp × sp.
  dist::Comm* dp = mesh ? &mesh->data() : nullptr;
  dist::Comm* tp = mesh ? &mesh->comm("tp") : nullptr;
  return std::make_unique<DataParallel>(model, config, plan, dp, tp);
}

}  // namespace

std::vector<bool> checkpointed_blocks(const Config& config) {
  const std::string& spec = config.train.activation_checkpointing;
  const int64_t layers = config.model.layers;
  std::vector<bool> checkpointed(layers, false);
  if (spec == "full") {
    checkpointed.assign(layers, true);
  } else if (spec.rfind("every:", 0) == 0) {
    const int64_t k = std::stoll(spec.substr(6));
    KOLOS_ASSERT(k >= 1, "train.activation_checkpointing = \"{}\" passed validation", spec);
    for (int64_t i = 0; i < layers; i += k) checkpointed[i] = true;
  } else {
    KOLOS_ASSERT(spec == "none", "train.activation_checkpointing = \"{}\" passed validation", spec);
  }
  return checkpointed;
}

Parallelized apply(models::Model& model, const Config& config, const Plan& plan, const dist::Mesh* mesh) {
  KOLOS_ASSERT(mesh ? mesh->world_size() == plan.world : plan.world == 1,
               "parallel::apply: the plan is for {} processes, the mesh has {}", plan.world,
               mesh ? mesh->world_size() : 1);
  Parallelized out;
  apply_tensor_sequence(model, config, plan, mesh, out);
  apply_activation_checkpointing(model, config);
  apply_pipeline(model, config, plan, mesh);
  out.data = apply_data_parallel(model, config, plan, mesh);
  return out;
}

}  // namespace kolos::parallel
