// Two "hosts" on one machine: tests/dist/netns.sh runs each node in a network namespace of its own, joined by a veth
// pair (198.18.0.1 and 198.18.0.2). There the host name still resolves to 127.0.0.1, so these runs only pass when
// Gloo binds the interface that reaches the master. Skipped where namespaces cannot be created (not root).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/dist/train_runs.h"
#include "tests/support.h"

namespace kolos {
namespace {

const std::string kScript = std::string(KOLOS_SOURCE_DIR) + "/tests/dist/netns.sh";
constexpr const char* kMaster = "198.18.0.1:29500";  // node 0's address; each namespace has its own ports

struct TwoHosts {
  bool skipped = false;   // namespaces cannot be created here; `output` says why
  int exit_code = -1;     // netns.sh's status: 0 when both nodes exited 0
  std::string output;     // netns.sh's own output and whatever the commands did not redirect
  std::string namespaces[2];  // the namespaces netns.sh announced
};

// Runs node 0's and node 1's shell command lines through netns.sh (at most `timeout_s` each) from the source
// directory. The commands must not contain single quotes.
TwoHosts run_two_hosts(const std::string& node0, const std::string& node1, int timeout_s) {
  EXPECT_EQ((node0 + node1).find('\''), std::string::npos) << "a command contains a single quote";
  TwoHosts r;
  const auto run = test::run_shell("cd " + std::string(KOLOS_SOURCE_DIR) + " && NETNS_TIMEOUT=" +
                                   std::to_string(timeout_s) + " " + kScript + " '" + node0 + "' '" + node1 + "'");
  r.exit_code = run.exit_code;
  r.output = run.output;
  r.skipped = run.exit_code == 77;
  std::smatch m;
  if (std::regex_search(run.output, m, std::regex(R"(namespace (kolos-\d+-a) .* in (kolos-\d+-b) )"))) {
    r.namespaces[0] = m[1];
    r.namespaces[1] = m[2];
  }
  return r;
}

// Checks that neither namespace of a run is left.
void expect_namespaces_removed(const TwoHosts& r) {
  ASSERT_FALSE(r.namespaces[0].empty()) << "netns.sh did not name its namespaces:\n" << r.output;
  const std::string list = test::run_shell("ip netns list").output;
  for (const auto& ns : r.namespaces) EXPECT_EQ(list.find(ns), std::string::npos) << ns << " is left:\n" << list;
}

std::string kolos_run_node(int node_rank, const std::string& log, const std::string& payload) {
  return std::string(KOLOS_BINARY) + " run --nnodes 2 --node-rank " + std::to_string(node_rank) + " -n 2 --master " +
         kMaster + (node_rank == 0 ? "" : " --tee") + " -- " + KOLOS_BINARY + " " + payload + " > " + log + " 2>&1";
}

// netns.sh's output and both nodes' logs (written by kolos_run_node to dir/node0.log and dir/node1.log).
std::string logs_of(const TwoHosts& r, const test::TempDir& dir) {
  return r.output + "\n--- node 0:\n" + test::read_text(dir / "node0.log") + "\n--- node 1:\n" +
         test::read_text(dir / "node1.log");
}

TEST(Netns, BenchCommAcrossTwoHosts) {
  test::TempDir dir("netns-bench-comm");
  const std::string payload = "bench comm --min-size 1KiB --max-size 16KiB --timeout 30";
  const auto r = run_two_hosts(kolos_run_node(0, dir / "node0.log", payload),
                               kolos_run_node(1, dir / "node1.log", payload), 50);
  if (r.skipped) GTEST_SKIP() << "no network namespaces here (needs root): " << r.output;
  const std::string logs = logs_of(r, dir);
  expect_namespaces_removed(r);
  ASSERT_EQ(r.exit_code, 0) << logs;

  const std::string line = test::last_json_line(test::read_text(dir / "node0.log"));
  ASSERT_FALSE(line.empty()) << logs;
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["world"], 4) << line;
  // Gloo bound node 0's veth, the interface that reaches the master (not lo, where the host name points).
  const std::string pid = r.namespaces[0].substr(6, r.namespaces[0].size() - 8);  // kolos-PID-a
  EXPECT_EQ(j["iface"], "kolos" + pid + "a") << line;
  // Sizes 1 KiB, 4 KiB, 16 KiB for each of the three ops; bus factors 2(n-1)/n and (n-1)/n at n = 4.
  ASSERT_EQ(j["results"].size(), 9u) << line;
  for (const auto& row : j["results"]) {
    const double algbw = row["algbw_gbps"].get<double>();
    EXPECT_GT(algbw, 0.0) << row;
    EXPECT_NEAR(row["busbw_gbps"].get<double>(), algbw * (row["op"] == "all_reduce" ? 1.5 : 0.75), 1e-9 * algbw);
  }
}

TEST(Netns, TrainingAcrossTwoHostsMatchesOneProcess) {
  // 4 ranks (dp = 4), 2 on each node: the parity recipe's global batch 8 as micro-batches of 2, against one process
  // taking it as 4 accumulated micro-batches of 2. Each node has its own run directory, as separate hosts would:
  // global rank 0 (node 0) writes metrics.jsonl, every rank its own ranks/rank_R.json.
  constexpr int kSteps = 20;
  test::TempDir dir("netns-train");
  const auto payload = [&](int node) {
    return test::parity_train_args(dir / ("node" + std::to_string(node)), 2, kSteps);
  };
  const auto r = run_two_hosts(kolos_run_node(0, dir / "node0.log", payload(0)),
                               kolos_run_node(1, dir / "node1.log", payload(1)), 90);
  if (r.skipped) GTEST_SKIP() << "no network namespaces here (needs root): " << r.output;
  const std::string logs = logs_of(r, dir);
  expect_namespaces_removed(r);
  ASSERT_EQ(r.exit_code, 0) << logs;

  test::expect_losses_match(dir / "node0", test::one_process_losses(dir / "one", 2, kSteps));
  for (int rank = 0; rank < 4; ++rank) test::expect_rank_joined(dir / (rank < 2 ? "node0" : "node1"), rank, 4);
  EXPECT_FALSE(std::filesystem::exists(dir / "node1/metrics.jsonl")) << "a rank other than 0 wrote metrics";
}

TEST(Netns, AFailingNodeStopsTheOtherAndLeavesNothing) {
  const auto start = std::chrono::steady_clock::now();
  const auto r = run_two_hosts("sleep 30", "exit 3", 50);
  if (r.skipped) GTEST_SKIP() << "no network namespaces here (needs root): " << r.output;
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("node 1 exited with status 3"), std::string::npos) << r.output;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 20.0)
      << "node 0 was not stopped when node 1 failed";
  expect_namespaces_removed(r);
}

}  // namespace
}  // namespace kolos
