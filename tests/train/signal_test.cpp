// SIGTERM / SIGINT during training: a complete checkpoint is written and the exit code is 143 / 130; the run
// resumes from it.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/support.h"

namespace kolos {
namespace {

void stop_with(const std::string& signal_name, int expected_exit) {
  test::TempDir dir("signal-" + signal_name);
  const std::string run = dir / "r";
  // Start a long run, wait until it has logged a step (training has begun), then signal it.
  const std::string cmd = "cd " + std::string(KOLOS_SOURCE_DIR) + " && (" + KOLOS_BINARY +
                          " train --config parity --set train.steps=100000 --set train.save_every=0 --out " + run +
                          " > " + run + ".log 2>&1 & pid=$!; for i in $(seq 600); do [ -s " + run +
                          "/metrics.jsonl ] && break; sleep 0.1; done; kill -" + signal_name +
                          " $pid; wait $pid; echo rc=$?)";
  auto r = test::run_shell(cmd);
  EXPECT_NE(r.output.find("rc=" + std::to_string(expected_exit)), std::string::npos) << r.output;
  ASSERT_TRUE(std::filesystem::exists(run + "/checkpoints/latest")) << r.output;
  auto resumed = test::run_kolos({"train", "--config", "parity", "--set", "train.steps=100000", "--out", run,
                                  "--resume", "--stop-after", "1"});
  // --stop-after 1 is already behind the checkpoint's step: the run resumes and stops at once.
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from"), std::string::npos) << resumed.output;
}

TEST(Signals, SigtermWritesACheckpointAndExits143) { stop_with("TERM", 143); }
TEST(Signals, SigintWritesACheckpointAndExits130) { stop_with("INT", 130); }

}  // namespace
}  // namespace kolos
