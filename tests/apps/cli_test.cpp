// Bad input on the command line, in configs, data and checkpoints: exit code 2 and one line naming the culprit.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/support.h"

namespace kolos {
namespace {

void expect_bad_input(const std::vector<std::string>& args, const std::string& culprit) {
  auto r = test::run_kolos(args);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(culprit), std::string::npos) << "message should name " << culprit << ":\n" << r.output;
  EXPECT_EQ(r.output.find("Segmentation"), std::string::npos);
}

TEST(Cli, EveryCommandHasHelp) {
  for (const char* cmd : {"train", "prepare", "generate", "plot"}) {
    auto r = test::run_kolos({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.output;
    EXPECT_NE(r.output.find("--"), std::string::npos) << cmd;
  }
  EXPECT_EQ(test::run_kolos({"--help"}).exit_code, 0);
  EXPECT_EQ(test::run_kolos({"bench", "train", "--help"}).exit_code, 0);
}

TEST(Cli, BadCommandLine) {
  expect_bad_input({"trian"}, "trian");
  expect_bad_input({"train", "--no-such-flag"}, "--no-such-flag");
  expect_bad_input({"train", "--stop-after", "-3"}, "--stop-after");
  expect_bad_input({"generate", "--prompt", "x"}, "--checkpoint");
}

TEST(Cli, BadConfig) {
  test::TempDir dir("cli-config");
  expect_bad_input({"train", "--set", "train.stepz=3", "--out", dir / "r"}, "train.stepz");
  expect_bad_input({"train", "--set", "optim.lr=-1", "--out", dir / "r"}, "optim.lr");
  expect_bad_input({"train", "--set", "model.arch=bert", "--out", dir / "r"}, "model.arch");
  expect_bad_input({"train", "--config", dir / "missing.toml"}, "missing.toml");
  const std::string bad = dir / "bad.toml";
  std::ofstream(bad) << "[train]\nsteps = \"many\"\n";
  expect_bad_input({"train", "--config", bad}, "train.steps");
  const std::string broken = dir / "broken.toml";
  std::ofstream(broken) << "[train\nsteps = 3\n";
  expect_bad_input({"train", "--config", broken}, "broken.toml");
}

TEST(Cli, BadData) {
  test::TempDir dir("cli-data");
  expect_bad_input({"train", "--set", "data.path=" + (dir / "nowhere"), "--out", dir / "r"}, "nowhere");
  // The demo token files have 261 tokens; a model with another vocabulary must refuse them.
  expect_bad_input({"train", "--config", "parity", "--set", "model.vocab=300", "--out", dir / "r"}, "vocab");
  const std::string corrupt = dir / "tokens";
  std::filesystem::create_directories(corrupt);
  std::ofstream(corrupt + "/meta.json") << "{not json";
  expect_bad_input({"train", "--set", "data.path=" + corrupt, "--out", dir / "r"}, "meta.json");
}

TEST(Cli, BadCheckpoint) {
  test::TempDir dir("cli-ckpt");
  expect_bad_input({"generate", "--checkpoint", dir / "none", "--prompt", "x"}, "none");
  std::filesystem::create_directories(dir / "empty");
  expect_bad_input({"generate", "--checkpoint", dir / "empty", "--prompt", "x"}, "empty");
}

TEST(Cli, GenerateFromATrainedCheckpoint) {
  test::TempDir dir("cli-gen");
  auto r = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=3", "--out", dir / "r"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto g = test::run_kolos({"generate", "--checkpoint", dir / "r", "--prompt", "Call me", "--tokens", "20", "--seed", "3"});
  ASSERT_EQ(g.exit_code, 0) << g.output;
  EXPECT_NE(g.output.find("Call me"), std::string::npos);
  auto g2 = test::run_kolos({"generate", "--checkpoint", dir / "r/checkpoints/step_3", "--prompt", "Call me", "--tokens",
                             "20", "--seed", "3"});
  EXPECT_EQ(g.output, g2.output) << "same seed, same checkpoint: same text";
}

TEST(Cli, TrainWritesTheRunDirectory) {
  test::TempDir dir("cli-run");
  auto r = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=4", "--set", "train.log_every=2",
                            "--out", dir / "r"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "r/config.toml"));
  EXPECT_TRUE(std::filesystem::exists(dir / "r/checkpoints/step_4/state.json"));
  std::ifstream f(dir / "r/metrics.jsonl");
  std::string line;
  int logged = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    ++logged;
    for (const char* key : {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "step_ms", "mfu",
                            "peak_rss_mb", "comm"})
      EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(logged, 2);
  const std::string summary = test::last_json_line(r.output);
  ASSERT_FALSE(summary.empty()) << r.output;
  auto s = nlohmann::json::parse(summary);
  EXPECT_EQ(s["steps"], 4);
  EXPECT_TRUE(s.contains("val_bpb"));
}

}  // namespace
}  // namespace kolos
