// The whole model on a tensor-parallel grid (2D: tp2d_test.cpp, 2.5D: tp25d_test.cpp) against one process, fp32:
// every rank holds its pieces (nn::TpLayout) of the same random parameters; the loss and each parameter's gradient
// (this rank's piece of the one-process gradient) must agree, and the pieces of all ranks must unshard to the whole
// parameters. Ranks are threads (tests/dist/thread_ranks.h).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kolos/models/model.h"
#include "kolos/nn/layers.h"
#include "kolos/nn/param.h"
#include "tests/dist/thread_ranks.h"
#include "tests/models/small_models.h"
#include "tests/support.h"

namespace kolos::test {

// test::small_config(arch) at sequence 16 on a (batch, 12) batch; `make_sharding(grid, vocab)` gives the model's
// sharding on a rank's grid (built by Grid::create(store, tp, extra..., options)); `check_piece(grid, rank, spec,
// whole, piece)` adds the layout's own checks of each placement.
template <typename Grid, typename... Extra>
void check_model_on_grid(const std::string& arch, const nn::TpLayout& layout, int64_t batch,
                         const std::function<nn::Sharding(Grid&, int64_t)>& make_sharding,
                         const std::function<void(Grid&, int, const nn::ParamSpec&, const at::Tensor&,
                                                  const at::Tensor&)>& check_piece,
                         Extra... extra) {
  const int t = layout.parts;
  ModelConfig config = small_config(arch);
  config.seq_len = 16;
  const auto ref = reference_run(config, batch, /*T=*/12, 7, 11);
  const auto& whole = ref.whole;
  const double ref_loss = ref.loss.item<double>();
  const auto specs = ref.model->param_specs();

  std::vector<std::vector<at::Tensor>> pieces(t);
  run_grid_ranks<Grid>(
      t,
      [&](Grid& grid, int r) {
        auto model = models::Model::create(config);
        model->set_sharding(make_sharding(grid, config.vocab));
        std::vector<at::Tensor> local;
        for (size_t i = 0; i < specs.size(); ++i) {
          local.push_back(nn::shard_param(whole[i], specs[i], layout, r).clone());
          check_piece(grid, r, specs[i], whole[i], local.back());
        }
        model->bind_params(local);
        pieces[r] = local;
        at::Tensor loss = model->loss(ref.ids, ref.targets);
        EXPECT_LT(std::abs(loss.item<double>() - ref_loss), 1e-5 * std::abs(ref_loss))
            << arch << " rank " << r << ": " << loss.item<double>() << " vs " << ref_loss;
        loss.backward();
        for (size_t i = 0; i < specs.size(); ++i) {
          const at::Tensor want = nn::shard_param(ref.model->params()[i].second.grad(), specs[i], layout, r);
          EXPECT_LT(rel_diff(local[i].grad(), want), 1e-5) << arch << " rank " << r << " " << specs[i].name;
        }
      },
      extra...);
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (int r = 0; r < t; ++r) parts.push_back(pieces[r][i].detach());
    EXPECT_TRUE(at::equal(nn::unshard_param(parts, specs[i], layout), whole[i])) << specs[i].name;
  }
}

}  // namespace kolos::test
