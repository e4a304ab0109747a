// Checkpoint/resume: 20 straight steps equal, bit for bit, --stop-after 10 then --resume to step 20.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kolos/checkpoint/safetensors.h"
#include "tests/support.h"

namespace kolos {
namespace {

std::vector<nlohmann::json> read_metrics(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream f(run + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(Resume, StopAndResumeIsBitIdenticalToStraightRun) {
  test::TempDir dir("resume");
  // dropout > 0 so that the RNG state must be restored too.
  const std::vector<std::string> common = {"train", "--config", "parity", "--set", "model.dropout=0.1",
                                           "--set", "train.save_every=5", "--set", "optim.warmup_steps=5",
                                           "--set", "optim.schedule=cosine", "--set", "optim.min_lr=1e-4"};
  auto with = [&](std::vector<std::string> extra) {
    auto args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_kolos(args);
  };
  auto straight = with({"--out", dir / "a"});
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  auto first = with({"--out", dir / "b", "--stop-after", "10"});
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_TRUE(std::filesystem::exists(dir / "b/checkpoints/step_10/model.safetensors"));
  auto second = with({"--out", dir / "b", "--resume"});
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resuming from"), std::string::npos) << second.output;

  auto a = checkpoint::load_safetensors(dir / "a/checkpoints/step_20/model.safetensors");
  auto b = checkpoint::load_safetensors(dir / "b/checkpoints/step_20/model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << name;
  auto oa = checkpoint::load_safetensors(dir / "a/checkpoints/step_20/optim.safetensors");
  auto ob = checkpoint::load_safetensors(dir / "b/checkpoints/step_20/optim.safetensors");
  for (const auto& [name, t] : oa) EXPECT_TRUE(at::equal(t, ob.at(name))) << name;

  auto ma = read_metrics(dir / "a"), mb = read_metrics(dir / "b");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    ASSERT_EQ(ma[i]["step"], mb[i]["step"]);
    if (ma[i].contains("loss")) EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << i;
  }
}

TEST(Resume, ResumeWithoutCheckpointStartsFreshAndSaysSo) {
  test::TempDir dir("fresh");
  auto r = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=2", "--out", dir / "r", "--resume"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("starting fresh"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "r/checkpoints/latest"));
  EXPECT_TRUE(std::filesystem::exists(dir / "r/config.toml"));
}

TEST(Resume, CorruptCheckpointIsBadInput) {
  test::TempDir dir("corrupt");
  auto r = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=2", "--out", dir / "r"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  {
    std::ofstream f(dir / "r/checkpoints/step_2/model.safetensors", std::ios::trunc);
    f << "garbage";
  }
  auto again = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=4", "--out", dir / "r", "--resume"});
  EXPECT_EQ(again.exit_code, 2) << again.output;
  EXPECT_NE(again.output.find("model.safetensors"), std::string::npos) << again.output;
}

}  // namespace
}  // namespace kolos
