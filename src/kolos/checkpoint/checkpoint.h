// Checkpoint directories of a run: RUN_DIR/checkpoints/step_N/ with
//   model.safetensors   every parameter as a global tensor, by name
//   optim.safetensors   optimizer state (exp_avg.<name>, exp_avg_sq.<name>) and the RNG state (rng.cpu)
//   state.json          step, optimizer step count, tokens seen, elapsed time, data cursor, format version
//   config.toml         the resolved configuration
// A checkpoint is written into checkpoints/.tmp-step_N and renamed to step_N only when every file is complete and
// fsync'ed; then checkpoints/latest (a text file naming the directory) is replaced atomically. A directory named
// step_N is therefore always complete; a crash leaves at most a .tmp-* directory, removed by the next save.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kolos/checkpoint/safetensors.h"

namespace kolos::checkpoint {

struct CheckpointData {
  TensorMap model;
  TensorMap optim;
  nlohmann::json state;  // must hold "step"
  std::string config_toml;
};

// Saves `data` as RUN_DIR/checkpoints/step_<state.step>, updates `latest`, and keeps the `keep` newest complete
// checkpoints (0 = all). Returns the checkpoint directory. InputError naming the path when it cannot be written.
std::string save_checkpoint(const std::string& run_dir, const CheckpointData& data, int64_t keep);

// The newest complete checkpoint of RUN_DIR, or nullopt when there is none.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Loads a checkpoint directory; `path` may also be a run directory (its latest checkpoint is taken).
// InputError naming the file when anything is missing or corrupt.
CheckpointData load_checkpoint(const std::string& path, std::string* resolved_dir = nullptr);

}  // namespace kolos::checkpoint
