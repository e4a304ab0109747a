// Config: recipes, overrides, strict validation, dump/reload round trip.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include "kolos/config/config.h"
#include "kolos/core/error.h"

namespace kolos {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, RecipesLoadAndValidate) {
  for (const auto& name : recipe_names()) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW(load_config(name, {}));
  }
  for (const char* required : {"tiny", "parity", "gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-tiny",
                               "llama-7b"}) {
    EXPECT_TRUE(recipe_text(required).has_value()) << required;
  }
}

TEST(Config, ParityRecipeMatchesDesign) {
  Config c = load_config("parity", {});
  EXPECT_EQ(c.model.layers, 8);
  EXPECT_EQ(c.model.hidden, 64);
  EXPECT_EQ(c.model.heads, 8);
  EXPECT_EQ(c.model.ffn_hidden, 256);
  EXPECT_EQ(c.model.seq_len, 32);
  EXPECT_EQ(c.model.vocab, 261);
  EXPECT_EQ(c.train.global_batch, 8);
  EXPECT_EQ(c.train.steps, 20);
  EXPECT_DOUBLE_EQ(c.model.dropout, 0.0);
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-3);
}

TEST(Config, OverridesParseTomlValuesAndBareWords) {
  Config c = load_config("tiny", {"train.steps=7", "optim.lr=3e-4", "model.arch=llama", "model.tie_embeddings=false",
                                  "data.path=\"x y\""});
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-4);
  EXPECT_EQ(c.model.arch, "llama");
  EXPECT_EQ(c.data.path, "x y");
}

TEST(Config, UnknownKeysAndBadValuesNameTheCulprit) {
  EXPECT_NE(error_of([] { load_config("tiny", {"train.stepz=3"}); }).find("train.stepz"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"nosuch.key=3"}); }).find("nosuch"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.steps=abc"}); }).find("train.steps"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.steps=0"}); }).find("train.steps"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"model.heads=7"}); }).find("model.heads"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"optim.schedule=zigzag"}); }).find("optim.schedule"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"optim.schedule=poly", "optim.decay_power=0"}); }).find("optim.decay_power"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"memory.budget=lots"}); }).find("memory.budget"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.early_stop=-1"}); }).find("train.early_stop"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.early_stop=3", "train.eval_every=0"}); }).find("train.eval_every"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.target_val_loss=-1"}); }).find("train.target_val_loss"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_config("tiny", {"stepsonly"}); }).find("stepsonly"), std::string::npos);
  EXPECT_NE(error_of([] { load_config("no/such/file.toml", {}); }).find("no/such/file.toml"), std::string::npos);
  // dp = 0 derives world / (pp sp tp): impossible when that is not whole.
  EXPECT_NE(error_of([] { load_config("tiny", {"parallel.tp=2"}); }).find("parallel.dp"), std::string::npos);
  EXPECT_EQ(load_config("tiny", {"parallel.tp=2"}, 4).parallel.dp, 2);
}

TEST(Config, OptimizerKeysAreValidated) {
  for (const char* name : {"adamw", "sgd", "lars", "lamb", "lion"})
    EXPECT_EQ(load_config("tiny", {fmt::format("optim.name={}", name)}).optim.name, name);
  Config c = load_config("tiny", {"optim.name=lars", "optim.momentum=0.8", "optim.trust_coefficient=0.01",
                                  "optim.min_trust_ratio=0.01", "optim.max_trust_ratio=10",
                                  "optim.adapt_norms_biases=true"});
  EXPECT_DOUBLE_EQ(c.optim.momentum, 0.8);
  EXPECT_DOUBLE_EQ(c.optim.trust_coefficient, 0.01);
  EXPECT_DOUBLE_EQ(c.optim.max_trust_ratio, 10);
  EXPECT_TRUE(c.optim.adapt_norms_biases);
  EXPECT_FALSE(load_config("tiny", {"optim.name=lamb", "optim.bias_correction=false"}).optim.bias_correction);
  EXPECT_TRUE(load_config("tiny", {"optim.name=sgd", "optim.nesterov=true"}).optim.nesterov);
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{"optim.name=adam"}, "optim.name"},
      {{"optim.momentum=1"}, "optim.momentum"},
      {{"optim.momentum=-0.1"}, "optim.momentum"},
      {{"optim.nesterov=yes"}, "optim.nesterov"},
      {{"optim.name=sgd", "optim.nesterov=true", "optim.momentum=0"}, "optim.nesterov"},
      {{"optim.name=lars", "optim.nesterov=true"}, "optim.nesterov"},
      {{"optim.trust_coefficient=0"}, "optim.trust_coefficient"},
      {{"optim.min_trust_ratio=-1"}, "optim.min_trust_ratio"},
      {{"optim.min_trust_ratio=2", "optim.max_trust_ratio=1"}, "optim.max_trust_ratio"},
      {{"optim.bias_correction=1"}, "optim.bias_correction"},
      {{"optim.trust_clamp=3"}, "optim.trust_clamp"},
  };
  for (const auto& [sets, key] : bad) {
    const std::string e = error_of([&] { load_config("tiny", sets); });
    EXPECT_NE(e.find(key), std::string::npos) << fmt::format("{}", fmt::join(sets, " ")) << ": " << e;
  }
}

TEST(Config, GlobalBatchDerivesGradAccumAndRejectsInconsistency) {
  Config c = load_config("tiny", {"train.batch_size=4", "train.global_batch=16"});
  EXPECT_EQ(c.train.grad_accum, 4);
  EXPECT_EQ(c.train.global_batch, 16);
  EXPECT_NE(error_of([] { load_config("tiny", {"train.batch_size=4", "train.global_batch=10"}); }).find("global_batch"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              load_config("tiny", {"train.batch_size=4", "train.grad_accum=2", "train.global_batch=16"});
            }).find("inconsistent"),
            std::string::npos);
}

TEST(Config, DumpReloadsToTheSameConfig) {
  Config a = load_config("llama-tiny", {"train.steps=11", "optim.lr=0.00125", "train.sample_prompt=\"a \\\"q\\\"\""});
  Config b;
  apply_toml(b, dump_toml(a), "dump");
  validate(b);
  EXPECT_EQ(dump_toml(a), dump_toml(b));
  EXPECT_EQ(b.train.sample_prompt, "a \"q\"");
}

TEST(Config, LlamaFfnRule) {
  Config c = load_config("llama-7b", {"model.ffn_hidden=0"});
  EXPECT_EQ(c.model.ffn_hidden, 11008);  // 2/3 * 4 * 4096 rounded up to a multiple of 256
}

}  // namespace
}  // namespace kolos
