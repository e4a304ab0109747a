// The whole GPT-2 or LLaMA under a tensor-parallel sharding on t thread ranks against one process (fp32), shared by
// the 2D and 3D tests: every rank holds its pieces (nn::TpLayout) of the same random parameters; the loss and each
// parameter's gradient (this rank's piece of the one-process gradient) must agree within 1e-5, and the pieces must
// unshard to the whole parameters. The vocabulary (37) divides by no q > 1, so the table's padding is exercised;
// LLaMA has grouped-query attention (4 heads, 2 key/value heads) and an untied head, GPT-2 a tied one, biases and a
// position table.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kolos/models/model.h"
#include "kolos/nn/param.h"
#include "tests/models/small_models.h"
#include "tests/support.h"

namespace kolos::test {

// `run_ranks(body)` runs body(grid, rank) on the t ranks; `sharding(grid)` is the model's sharding there;
// `check_piece(grid, spec, whole, piece)` may check a rank's piece against the layer functions' own slicing.
template <typename Grid>
void check_sharded_model(const std::string& arch, int64_t batch, const nn::TpLayout& layout,
                         const std::function<void(const std::function<void(Grid&, int)>&)>& run_ranks,
                         const std::function<nn::Sharding(Grid&, int64_t vocab)>& sharding,
                         const std::function<void(Grid&, const nn::ParamSpec&, const at::Tensor&,
                                                  const at::Tensor&)>& check_piece = nullptr) {
  const int t = layout.parts;
  ModelConfig config = small_config(arch);
  config.seq_len = 16;
  const auto ref = reference_run(config, batch, /*T=*/12, 7, 11);
  const double ref_loss = ref.loss.item<double>();
  const auto specs = ref.model->param_specs();

  std::vector<std::vector<at::Tensor>> pieces(t);
  run_ranks([&](Grid& grid, int r) {
    auto model = models::Model::create(config);
    model->set_sharding(sharding(grid, config.vocab));
    std::vector<at::Tensor> local;
    for (size_t i = 0; i < specs.size(); ++i) {
      local.push_back(nn::shard_param(ref.whole[i], specs[i], layout, r).clone());
      if (check_piece) check_piece(grid, specs[i], ref.whole[i], local.back());
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
  });
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (int r = 0; r < t; ++r) parts.push_back(pieces[r][i].detach());
    EXPECT_TRUE(at::equal(nn::unshard_param(parts, specs[i], layout), ref.whole[i])) << specs[i].name;
  }
}

}  // namespace kolos::test
