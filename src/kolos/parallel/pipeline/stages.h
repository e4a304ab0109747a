// The stage split of pipeline parallelism (parallel.pp): which transformer blocks each virtual stage runs.
//
// The model's L blocks are cut into V = pp · pp_virtual contiguous ranges, virtual stage u = chunk · pp + stage
// (schedule.h) running range u; virtual stage 0 also runs the stem (the embedding), V − 1 the head (final norm,
// output head and loss). parallel.pp_layers, when set, gives the V block counts ("3,3,2"); else the split balances
// a cost model — a block costs its matrix-multiply parameters, the head V·C more (the output head's product; the
// embedding is a look-up, free) — minimising the most expensive virtual stage, ties going to the earlier split
// points. Every virtual stage gets at least one block.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kolos/config/config.h"
#include "kolos/models/model.h"

namespace kolos::parallel::pipeline {

// The blocks [first, end) of each virtual stage, V = pp · virtual_stages entries covering 0 .. L − 1.
// InputError naming parallel.pp_layers (or model.layers) when the split is impossible or the list is malformed.
std::vector<std::pair<int64_t, int64_t>> split_layers(const ModelConfig& model, int pp, int virtual_stages,
                                                      const std::string& pp_layers);

// The segments (Model::set_segments) of `stage`: its chunks c = 0 .. v − 1, virtual stages c · pp + stage.
std::vector<models::Model::Segment> stage_segments(const ModelConfig& model, int pp, int virtual_stages,
                                                   const std::string& pp_layers, int stage);

}  // namespace kolos::parallel::pipeline
