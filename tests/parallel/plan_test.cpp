// Plan validation: each rule fails with exit-2 errors naming the key and the rule; valid layouts give the degrees.
#include <gtest/gtest.h>

#include <tuple>

#include "kolos/config/config.h"
#include "kolos/core/error.h"
#include "kolos/parallel/plan.h"

namespace kolos {
namespace {

// The parity recipe with the global batch derived (so any dp fits) and `sets` on top.
Config parity(std::vector<std::string> sets, int world) {
  sets.insert(sets.begin(), "train.global_batch=0");
  return load_config("parity", sets, world);
}

std::string plan_error(std::vector<std::string> sets, int world) {
  try {
    parallel::make_plan(parity(sets, world), world);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Plan, DpDerivesFromTheWorldSize) {
  auto p = parallel::make_plan(parity({}, 4), 4);
  EXPECT_EQ(p.dp, 4);
  EXPECT_EQ(p.world, 4);
  EXPECT_EQ(p.describe(), "dp=4");
  EXPECT_EQ(parallel::make_plan(parity({}, 1), 1).describe(), "1 process");
  auto z = parallel::make_plan(parity({"parallel.dp=2", "parallel.zero=2"}, 2), 2);
  EXPECT_EQ(z.dp, 2);
  EXPECT_EQ(z.zero, 2);
  EXPECT_EQ(z.describe(), "dp=2, zero=2");
}

TEST(Plan, DegreesMustMultiplyToTheWorldSize) {
  const std::string e = plan_error({"parallel.dp=2"}, 4);
  EXPECT_NE(e.find("world size 4"), std::string::npos) << e;
  EXPECT_NE(e.find("pp × dp × sp × tp"), std::string::npos) << e;
}

// ZeRO-3: plain dp (and dp with grad accumulation); refused with pp, tp, sp and fp16, naming the keys.
TEST(Plan, ZeroThreeRules) {
  auto z = parallel::make_plan(parity({"parallel.dp=2", "parallel.zero=3"}, 2), 2);
  EXPECT_EQ(z.zero, 3);
  EXPECT_EQ(z.describe(), "dp=2, zero=3");
  for (const auto& [sets, key] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"parallel.pp=2", "parallel.zero=3"}, "parallel.pp"},
           {{"parallel.tp=2", "parallel.zero=3"}, "parallel.tp"},
           {{"parallel.sp=2", "parallel.zero=3"}, "parallel.sp"},
           {{"parallel.dp=2", "parallel.zero=3", "train.dtype=fp16"}, "train.dtype"}}) {
    const std::string e = plan_error(sets, 2);
    EXPECT_NE(e.find("parallel.zero = 3"), std::string::npos) << key << ": " << e;
    EXPECT_NE(e.find(key), std::string::npos) << key << ": " << e;
  }
}

// Pipeline parallelism: the schedule's rules, the stage split's, and no ZeRO-2/3 — each error names its key.
TEST(Plan, PipelineRulesNameTheKey) {
  EXPECT_EQ(parallel::make_plan(parity({"parallel.pp=2", "train.grad_accum=4"}, 4), 4).describe(), "pp=2, dp=2");
  std::string e = plan_error({"parallel.pp=2", "parallel.zero=2"}, 2);
  EXPECT_NE(e.find("parallel.zero = 2"), std::string::npos) << e;
  e = plan_error({"parallel.pp=2", "parallel.pp_virtual=2"}, 2);
  EXPECT_NE(e.find("interleaved"), std::string::npos) << e;
  e = plan_error({"parallel.pp=2", "parallel.pp_virtual=2", "parallel.pp_schedule=interleaved", "train.grad_accum=3"}, 2);
  EXPECT_NE(e.find("train.grad_accum"), std::string::npos) << e;
  e = plan_error({"parallel.pp=4", "parallel.pp_virtual=4", "parallel.pp_schedule=interleaved", "train.grad_accum=4"}, 4);
  EXPECT_NE(e.find("model.layers"), std::string::npos) << e;  // 16 virtual stages, 8 blocks
  e = plan_error({"parallel.pp=2", "parallel.pp_layers=4,3"}, 2);
  EXPECT_NE(e.find("parallel.pp_layers"), std::string::npos) << e;
  e = plan_error({"parallel.pp=2", "parallel.pp_layers=4,x"}, 2);
  EXPECT_NE(e.find("\"x\""), std::string::npos) << e;
}

// Tensor parallelism (1D): every split dimension divides.
TEST(Plan, TensorParallelRulesNameTheDimension) {
  EXPECT_EQ(parallel::make_plan(parity({"parallel.tp=2"}, 4), 4).describe(), "dp=2, tp=2 (1d)");
  std::string e = plan_error({"parallel.tp=2", "model.heads=5", "model.hidden=80"}, 2);
  EXPECT_NE(e.find("model.heads = 5"), std::string::npos) << e;
  e = plan_error({"parallel.tp=4", "model.arch=llama", "model.kv_heads=2", "model.tie_embeddings=false"}, 4);
  EXPECT_NE(e.find("key/value heads"), std::string::npos) << e;
  e = plan_error({"parallel.tp=2", "model.ffn_hidden=255"}, 2);
  EXPECT_NE(e.find("model.ffn_hidden = 255"), std::string::npos) << e;
  // Megatron-SP splits the sequence over tp.
  e = plan_error({"parallel.megatron_sp=true"}, 2);
  EXPECT_NE(e.find("parallel.tp > 1"), std::string::npos) << e;
  e = plan_error({"parallel.tp=2", "parallel.megatron_sp=true", "model.seq_len=33"}, 2);
  EXPECT_NE(e.find("model.seq_len = 33"), std::string::npos) << e;
  EXPECT_TRUE(parallel::make_plan(parity({"parallel.tp=2", "parallel.megatron_sp=true"}, 2), 2).megatron_sp);
}

// 2D: tp a perfect square q²; heads and key/value heads by q, hidden by q², GPT-2's ffn by q² (its fc bias is in q²
// pieces), LLaMA's by q, the batch by q (the grid's rows); no sp, pp or Megatron-SP yet. Each error names its key.
TEST(Plan, TwoDimensionalRulesNameTheKey) {
  const auto p = parallel::make_plan(parity({"parallel.tp=4", "parallel.tp_mode=2d"}, 8), 8);
  EXPECT_EQ(p.describe(), "dp=2, tp=4 (2d)");
  EXPECT_TRUE(p.tp_layout().grid);
  EXPECT_EQ(p.tp_layout().q(), 2);
  EXPECT_FALSE(parallel::make_plan(parity({"parallel.tp=4"}, 4), 4).tp_layout().grid);
  // LLaMA's ffn only by q: 258 = 2 · 129.
  EXPECT_EQ(parallel::make_plan(parity({"parallel.tp=4", "parallel.tp_mode=2d", "model.arch=llama",
                                        "model.kv_heads=4", "model.tie_embeddings=false", "model.ffn_hidden=258"},
                                       4),
                                4)
                .tp,
            4);
  for (const auto& [sets, world, want] : std::vector<std::tuple<std::vector<std::string>, int, std::string>>{
           {{"parallel.tp=2"}, 2, "parallel.tp = 2"},
           {{"parallel.tp=8"}, 8, "square"},
           {{"parallel.tp=9", "model.heads=4", "model.hidden=72", "model.ffn_hidden=72"}, 9, "model.heads = 4"},
           {{"parallel.tp=4", "model.arch=llama", "model.kv_heads=1", "model.tie_embeddings=false"}, 4,
            "model.kv_heads"},
           {{"parallel.tp=4", "model.hidden=66", "model.heads=6"}, 4, "model.hidden = 66"},
           {{"parallel.tp=4", "model.ffn_hidden=258"}, 4, "model.ffn_hidden = 258"},
           {{"parallel.tp=4", "train.batch_size=3", "train.global_batch=3"}, 4, "train.batch_size = 3"},
           {{"parallel.tp=4", "parallel.sp=2"}, 8, "sp = 2"},
           {{"parallel.tp=4", "parallel.pp=2"}, 8, "pp = 2"}}) {
    std::vector<std::string> all = sets;
    all.push_back("parallel.tp_mode=2d");
    const std::string e = plan_error(all, world);
    EXPECT_NE(e.find(want), std::string::npos) << want << ": " << e;
    EXPECT_NE(e.find("2d"), std::string::npos) << want << ": " << e;
  }
}

// 2.5D: tp = d·q² with d = parallel.tp_depth; 2D's rules on the q × q layer, the batch by d·q (each layer's rows);
// tp_depth only with tp_mode "2.5d"; no sp, pp or Megatron-SP yet. Each error names its key.
TEST(Plan, TwoAndAHalfDimensionalRulesNameTheKey) {
  const auto p = parallel::make_plan(parity({"parallel.tp=8", "parallel.tp_mode=2.5d", "parallel.tp_depth=2"}, 16), 16);
  EXPECT_EQ(p.describe(), "dp=2, tp=8 (2.5d)");
  EXPECT_TRUE(p.tp_layout().grid);
  EXPECT_EQ(p.tp_layout().depth, 2);
  EXPECT_EQ(p.tp_layout().q(), 2);
  // d = 1 is 2D's grid; d = 4 with q = 1 (batch 8 by 4) is allowed too.
  EXPECT_EQ(parallel::make_plan(parity({"parallel.tp=4", "parallel.tp_mode=2.5d"}, 4), 4).tp_layout().q(), 2);
  EXPECT_EQ(parallel::make_plan(parity({"parallel.tp=4", "parallel.tp_mode=2.5d", "parallel.tp_depth=4"}, 4), 4)
                .tp_layout()
                .q(),
            1);
  for (const auto& [sets, world, want] : std::vector<std::tuple<std::vector<std::string>, int, std::string>>{
           {{"parallel.tp=8", "parallel.tp_depth=3"}, 8, "parallel.tp_depth = 3"},
           {{"parallel.tp=8", "parallel.tp_depth=1"}, 8, "not a square"},
           {{"parallel.tp=6", "parallel.tp_depth=2"}, 6, "parallel.tp_depth"},
           {{"parallel.tp=18", "parallel.tp_depth=2", "model.heads=4", "model.hidden=72", "model.ffn_hidden=72"}, 18,
            "model.heads = 4"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "model.arch=llama", "model.kv_heads=1",
             "model.tie_embeddings=false"},
            8, "model.kv_heads"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "model.hidden=66", "model.heads=6"}, 8, "model.hidden = 66"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "model.ffn_hidden=258"}, 8, "model.ffn_hidden = 258"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "train.batch_size=6", "train.global_batch=6"}, 8,
            "train.batch_size = 6"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "parallel.sp=2"}, 16, "sp = 2"},
           {{"parallel.tp=8", "parallel.tp_depth=2", "parallel.pp=2"}, 16, "pp = 2"}}) {
    std::vector<std::string> all = sets;
    all.push_back("parallel.tp_mode=2.5d");
    const std::string e = plan_error(all, world);
    EXPECT_NE(e.find(want), std::string::npos) << want << ": " << e;
    EXPECT_NE(e.find("2.5d"), std::string::npos) << want << ": " << e;
  }
  // The depth belongs to 2.5D.
  const std::string e = plan_error({"parallel.tp=4", "parallel.tp_mode=2d", "parallel.tp_depth=2"}, 4);
  EXPECT_NE(e.find("parallel.tp_depth = 2"), std::string::npos) << e;
  EXPECT_NE(e.find("2.5d"), std::string::npos) << e;
}

// 3D: tp a perfect cube q³; heads and key/value heads by q, hidden by q³, GPT-2's ffn by q³ (its fc bias is in q³
// pieces), LLaMA's by q², the batch by q²; no sp, pp or Megatron-SP yet. Each error names its key.
TEST(Plan, ThreeDimensionalRulesNameTheKey) {
  EXPECT_EQ(parallel::make_plan(parity({"parallel.tp=8", "parallel.tp_mode=3d"}, 8), 8).describe(), "tp=8 (3d)");
  const nn::TpLayout layout = parallel::make_plan(parity({"parallel.tp=8", "parallel.tp_mode=3d"}, 8), 8).tp_layout();
  EXPECT_TRUE(layout.cube);
  EXPECT_EQ(layout.q(), 2);
  for (const auto& [sets, world, want] : std::vector<std::tuple<std::vector<std::string>, int, std::string>>{
           {{"parallel.tp=4"}, 4, "cube"},
           {{"parallel.tp=8", "model.heads=3", "model.hidden=48"}, 8, "model.heads = 3"},
           {{"parallel.tp=8", "model.hidden=68", "model.heads=2"}, 8, "model.hidden = 68"},
           {{"parallel.tp=8", "model.ffn_hidden=260"}, 8, "model.ffn_hidden = 260"},
           {{"parallel.tp=8", "train.batch_size=6", "train.global_batch=6"}, 8, "train.batch_size = 6"},
           {{"parallel.tp=8", "parallel.sp=2"}, 16, "sp = 2"}}) {
    std::vector<std::string> all = sets;
    all.push_back("parallel.tp_mode=3d");
    const std::string e = plan_error(all, world);
    EXPECT_NE(e.find(want), std::string::npos) << want << ": " << e;
    EXPECT_NE(e.find("3d"), std::string::npos) << want << ": " << e;
  }
}

// Sequence parallelism: ring needs the sequence in 2·sp equal chunks, Ulysses whole heads per sp rank.
TEST(Plan, SequenceParallelRulesNameTheSequenceAndHeads) {
  EXPECT_EQ(parallel::make_plan(parity({"parallel.sp=2"}, 2), 2).describe(), "sp=2 (ring)");
  std::string e = plan_error({"parallel.sp=2", "model.seq_len=30"}, 2);
  EXPECT_NE(e.find("2·sp = 4"), std::string::npos) << e;
  e = plan_error({"parallel.sp=4", "parallel.sp_mode=ulysses", "model.heads=2", "model.hidden=64"}, 4);
  EXPECT_NE(e.find("heads of each tp rank"), std::string::npos) << e;
}

TEST(Plan, ZeroWithOneRankIsAccepted) {
  auto p = parallel::make_plan(parity({"parallel.zero=2"}, 1), 1);
  EXPECT_EQ(p.dp, 1);
  EXPECT_EQ(p.zero, 2);
}

}  // namespace
}  // namespace kolos
