// kolos run: the variables each rank gets, output relaying, failure handling (exit 3 naming the rank, nothing left
// behind), restarts, signal forwarding and bad usage. The payloads are plain shell commands.
#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <set>
#include <sstream>

#include "kolos/dist/launcher.h"
#include "kolos/core/error.h"
#include "tests/support.h"

namespace kolos {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Whether a process whose command line contains `marker` exists ("sleep 30[.]123": the brackets keep the pgrep
// shell's own command line from matching).
bool process_left(const std::string& marker_regex) {
  return test::run_shell("pgrep -f '" + marker_regex + "'").exit_code == 0;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(Launcher, EachRankGetsTheTorchrunVariables) {
  auto r = test::run_kolos({"run", "-n", "3", "--tee", "--", "sh", "-c",
                            "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $KOLOS_RUN"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::regex line_re(R"(\[rank (\d)\] (\d) 3 (\d) 3 127\.0\.0\.1 (\d+) 1)");
  std::set<int> ranks;
  std::set<std::string> ports;
  for (const auto& line : lines_of(r.output)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, line_re)) << "unexpected line: " << line << "\n" << r.output;
    EXPECT_EQ(m[1], m[2]);  // the prefix names the rank
    EXPECT_EQ(m[2], m[3]);  // one node: local rank = rank
    ranks.insert(std::stoi(m[1]));
    ports.insert(m[4]);
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2})) << r.output;
  ASSERT_EQ(ports.size(), 1u) << "ranks disagree on MASTER_PORT:\n" << r.output;
  const int port = std::stoi(*ports.begin());
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
}

TEST(Launcher, SecondNodeGetsGlobalRanksAndTheGivenMaster) {
  auto r = test::run_kolos({"run", "-n", "2", "--nnodes", "2", "--node-rank", "1", "--master", "127.0.0.1:29999",
                            "--tee", "--", "sh", "-c",
                            "echo $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 2] 2 4 0 2 127.0.0.1 29999\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 3] 3 4 1 2 127.0.0.1 29999\n"), std::string::npos) << r.output;
}

TEST(Launcher, WithoutTeeOnlyRankZerosOutputIsShown) {
  auto r = test::run_kolos({"run", "-n", "3", "--", "sh", "-c", "echo out from $RANK; echo err from $RANK >&2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("out from 0\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("err from 0\n"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("from 1"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("from 2"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[rank"), std::string::npos) << r.output;  // passed through, not prefixed
}

TEST(Launcher, TeeWritesWholePrefixedLines) {
  // Each line is written in two pieces (two printf calls); the last one has no newline.
  auto r = test::run_kolos({"run", "-n", "3", "--tee", "--", "sh", "-c",
                            "for i in $(seq 300); do printf \"a$RANK-\"; printf \"b$RANK\\n\"; done; "
                            "printf \"err$RANK\\n\" >&2; printf \"tail$RANK\""});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::regex whole(R"(\[rank (\d)\] (a\1-b\1|err\1|tail\1))");
  int count = 0;
  for (const auto& line : lines_of(r.output)) {
    ASSERT_TRUE(std::regex_match(line, whole)) << "mixed or unprefixed line: \"" << line << "\"";
    ++count;
  }
  EXPECT_EQ(count, 3 * 302);
  for (int rank = 0; rank < 3; ++rank) {
    const std::string tail = "[rank " + std::to_string(rank) + "] tail" + std::to_string(rank) + "\n";
    EXPECT_NE(r.output.find(tail), std::string::npos) << r.output;
  }
}

TEST(Launcher, FailingRankStopsTheOthersAndExits3) {
  const auto start = Clock::now();
  auto r = test::run_kolos({"run", "-n", "3", "--", "sh", "-c", "[ $RANK = 1 ] && exit 7; sleep 30.123"});
  const double elapsed = seconds_since(start);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_LT(elapsed, 15.0);
  EXPECT_NE(r.output.find("kolos run: rank 1 exited with status 7"), std::string::npos) << r.output;
  EXPECT_FALSE(process_left("sleep 30[.]123")) << "a rank's sleep outlived kolos run";
}

TEST(Launcher, KilledRankIsNamedWithItsSignal) {
  const auto start = Clock::now();
  auto r = test::run_kolos(
      {"run", "-n", "3", "--", "sh", "-c", "if [ $RANK = 0 ]; then kill -9 $$; fi; sleep 30.456"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_LT(seconds_since(start), 15.0);
  EXPECT_NE(r.output.find("kolos run: rank 0 was killed by signal SIGKILL"), std::string::npos) << r.output;
  EXPECT_FALSE(process_left("sleep 30[.]456"));
}

TEST(Launcher, RankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  // Rank 1 ignores SIGTERM (and so does the sleep it starts): it is SIGKILLed 10 s after rank 0 failed.
  const auto start = Clock::now();
  auto r = test::run_kolos({"run", "-n", "2", "--", "sh", "-c",
                            "if [ $RANK = 0 ]; then sleep 0.3; exit 9; fi; trap '' TERM; sleep 30.246"});
  const double elapsed = seconds_since(start);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("rank 0 exited with status 9"), std::string::npos) << r.output;
  EXPECT_GT(elapsed, 9.0);
  EXPECT_LT(elapsed, 15.0);
  EXPECT_FALSE(process_left("sleep 30[.]246"));
}

TEST(Launcher, MissingProgramIsAFailedRank) {
  auto r = test::run_kolos({"run", "-n", "2", "--", "/nonexistent/kolos-payload"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("exited with status 127"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cannot execute \"/nonexistent/kolos-payload\""), std::string::npos) << r.output;
}

TEST(Launcher, RestartRunsTheGroupAgain) {
  test::TempDir dir("launcher-restart");
  const std::string marker = dir / "failed-once";
  // Rank 1 fails the first time only; the second attempt succeeds.
  auto r = test::run_kolos({"run", "-n", "2", "--max-restarts", "1", "--tee", "--", "sh", "-c",
                            "if [ $RANK = 1 ] && [ ! -e " + marker + " ]; then touch " + marker +
                                "; exit 5; fi; echo done $RANK restart $KOLOS_RESTART_COUNT"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 exited with status 5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("kolos run: restarting all 2 local ranks (restart 1 of 1)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("[rank 0] done 0 restart 1\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 1] done 1 restart 1\n"), std::string::npos) << r.output;
}

TEST(Launcher, RestartsRunOutThenExit3) {
  auto r = test::run_kolos({"run", "-n", "2", "--max-restarts", "1", "--", "sh", "-c", "[ $RANK = 0 ] && exit 4; sleep 30.321"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  size_t failures = 0;
  for (size_t at = 0; (at = r.output.find("rank 0 exited with status 4", at)) != std::string::npos; ++at) ++failures;
  EXPECT_EQ(failures, 2u) << r.output;
  EXPECT_FALSE(process_left("sleep 30[.]321"));
}

TEST(Launcher, SigtermIsForwardedToEveryRank) {
  test::TempDir dir("launcher-sigterm");
  const std::string ready = dir / "ready";
  const std::string payload = "trap \"echo got TERM on $RANK; exit 143\" TERM; touch " + ready +
                              ".$RANK; sleep 30.789 & wait";
  const std::string cmd = std::string(KOLOS_BINARY) + " run -n 2 --tee -- sh -c '" + payload + "' 2>&1 & pid=$!; " +
                          "for i in $(seq 100); do [ -e " + ready + ".0 ] && [ -e " + ready +
                          ".1 ] && break; sleep 0.1; done; kill -TERM $pid; wait $pid; echo rc=$?";
  const auto start = Clock::now();
  auto r = test::run_shell(cmd);
  EXPECT_LT(seconds_since(start), 15.0);
  EXPECT_NE(r.output.find("rc=143"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("kolos run: forwarding SIGTERM to all ranks"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 0] got TERM on 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 1] got TERM on 1"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("exited with status"), std::string::npos) << "a forwarded signal is not a failure\n"
                                                                   << r.output;
  EXPECT_FALSE(process_left("sleep 30[.]789"));
}

TEST(Launcher, NestedKolosCommandRuns) {
  auto r = test::run_kolos({"run", "-n", "2", "--", KOLOS_BINARY, "train", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
}

struct BadUsage {
  std::vector<std::string> args;
  std::string names;  // expected in the error message
};

void expect_bad_usage(const std::vector<BadUsage>& cases) {
  for (const auto& c : cases) {
    auto r = test::run_kolos(c.args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(c.names), std::string::npos) << "expected \"" << c.names << "\" in: " << r.output;
  }
}

TEST(Launcher, BadCommandOrCountIsExit2NamingTheFlag) {
  expect_bad_usage({
      {{"run", "-n", "2"}, "`--`"},
      {{"run", "-n", "2", "--"}, "no command after `--`"},
      {{"run", "-n", "0", "--", "true"}, "-n 0"},
      {{"run", "-n", "two", "--", "true"}, "-n"},
      {{"run", "--bogus", "--", "true"}, "--bogus"},
  });
}

TEST(Launcher, BadMasterOrNodeIsExit2NamingTheFlag) {
  expect_bad_usage({
      {{"run", "--master", "nohost", "--", "true"}, "--master \"nohost\""},
      {{"run", "--master", "h:99999", "--", "true"}, "--master \"h:99999\""},
      {{"run", "--nnodes", "2", "--node-rank", "2", "--master", "h:1234", "--", "true"}, "--node-rank 2"},
      {{"run", "--nnodes", "2", "--", "true"}, "--master"},
      {{"run", "--max-restarts", "-1", "--", "true"}, "--max-restarts"},
  });
}

TEST(Launcher, ParseMaster) {
  EXPECT_EQ(dist::parse_master("10.0.0.1:29500"), std::make_pair(std::string("10.0.0.1"), 29500));
  EXPECT_EQ(dist::parse_master("node-0.cluster:1"), std::make_pair(std::string("node-0.cluster"), 1));
  EXPECT_EQ(dist::parse_master("[::1]:8080"), std::make_pair(std::string("::1"), 8080));
  for (const char* bad : {"", "host", ":29500", "host:", "host:0", "host:65536", "host:12a", "[::1]8080"})
    EXPECT_THROW(dist::parse_master(bad), InputError) << bad;
}

}  // namespace
}  // namespace kolos
