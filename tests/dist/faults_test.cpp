// A rank of a real training run dies (SIGKILL, as the out-of-memory killer or a lost machine would do it):
//  - without restarts, `kolos run` exits 3 within 15 s, naming the rank and its signal, and leaves no process;
//  - with --max-restarts 1 and checkpoints, the group restarts from the latest checkpoint (`train --resume`) and
//    finishes; metrics.jsonl then holds every step once, with the losses of an uninterrupted run (one process with
//    the same global batch, within 1e-5 relative).
// The runs are started in the background; their processes are found by their unique --out path in /proc, and a
// rank by the RANK variable that kolos run gave it.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/dist/train_runs.h"
#include "tests/support.h"

namespace kolos::test {


namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A process whose command line contains a marker; `rank` is its RANK variable, -1 when it has none.
struct Process {
  int pid;
  int rank;
};

std::vector<Process> processes_with(const std::string& marker) {
  std::vector<Process> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos || std::stoi(name) == getpid()) continue;
    if (read_text(entry.path() / "cmdline").find(marker) == std::string::npos) continue;
    Process p{std::stoi(name), -1};
    std::istringstream environ(read_text(entry.path() / "environ"));
    for (std::string var; std::getline(environ, var, '\0');)
      if (var.rfind("RANK=", 0) == 0) p.rank = std::stoi(var.substr(5));
    found.push_back(p);
  }
  return found;
}

// One `kolos run` in the background: its output goes to run.log and its exit status, when it ends, to status. The
// command is started through a script file, so that the only processes whose command line names the run directory
// (dir/run) are kolos run and its ranks. Whatever is left of it is SIGKILLed when the object goes.
class BackgroundRun {
 public:
  BackgroundRun(const TempDir& dir, const std::string& kolos_args) : dir_(dir), marker_(dir / "run") {
    std::ofstream(dir / "start.sh") << "cd " << KOLOS_SOURCE_DIR << " && " << KOLOS_BINARY << " " << kolos_args
                                    << " > " << dir / "run.log" << " 2>&1\necho $? > " << dir / "status.tmp"
                                    << " && mv " << dir / "status.tmp" << " " << dir / "status\n";
    const auto r = run_shell("sh " + dir / "start.sh" + " > /dev/null 2>&1 &");
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }
  ~BackgroundRun() {
    for (const auto& p : processes_with(marker_)) ::kill(p.pid, SIGKILL);
  }
  const std::string& run_dir() const { return marker_; }
  std::string log() const { return read_text(dir_ / "run.log"); }

  // Waits (at most `timeout_s`) until metrics.jsonl has `steps` step records; false on time-out or when the run
  // ended first.
  bool wait_for_steps(size_t steps, double timeout_s) const {
    for (const auto start = Clock::now(); seconds_since(start) < timeout_s && !ended();) {
      if (step_records(marker_).size() >= steps) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  // Waits (at most `timeout_s`) for kolos run to end; its exit status, or -1 on time-out.
  int wait_for_exit(double timeout_s) const {
    for (const auto start = Clock::now(); seconds_since(start) < timeout_s;) {
      if (ended()) return std::stoi(read_text(dir_ / "status"));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  // SIGKILLs the rank's process; false when there is no such process.
  bool kill_rank(int rank) const {
    for (const auto& p : processes_with(marker_))
      if (p.rank == rank) return ::kill(p.pid, SIGKILL) == 0;
    return false;
  }
  std::vector<Process> processes() const { return processes_with(marker_); }

 private:
  bool ended() const { return std::filesystem::exists(dir_ / "status"); }

  const TempDir& dir_;
  std::string marker_;
};

TEST(Faults, KilledRankEndsTheRunWithExit3AndNothingLeft) {
  TempDir dir("faults-kill");
  BackgroundRun run(dir, "run -n 2 -- " + std::string(KOLOS_BINARY) + " " +
                             parity_train_args(dir / "run", 4, 2000));
  ASSERT_TRUE(run.wait_for_steps(3, 60)) << "no progress:\n" << run.log();
  ASSERT_TRUE(run.kill_rank(1)) << "no rank 1 process:\n" << run.log();
  const auto killed = Clock::now();
  const int status = run.wait_for_exit(30);
  const double after_kill = seconds_since(killed);
  const std::string log = run.log();
  EXPECT_EQ(status, 3) << log;
  EXPECT_LT(after_kill, 15.0) << log;
  EXPECT_NE(log.find("kolos run: rank 1 was killed by signal SIGKILL"), std::string::npos) << log;
  EXPECT_TRUE(run.processes().empty()) << "a process of the run outlived kolos run";
  EXPECT_LT(step_records(run.run_dir()).size(), 2000u);
}

TEST(Faults, RestartAfterAKilledRankResumesAndMatchesAnUninterruptedRun) {
  constexpr int kSteps = 40;  // the kill comes at step ~8: the run must still be going then
  TempDir dir("faults-restart");
  const auto reference = one_process_losses(dir / "one", 4, kSteps);
  BackgroundRun run(dir, "run -n 2 --max-restarts 1 -- " + std::string(KOLOS_BINARY) + " " +
                             parity_train_args(dir / "run", 4, kSteps) + " --set train.save_every=5 --resume");
  ASSERT_TRUE(run.wait_for_steps(8, 60)) << "no progress:\n" << run.log();
  ASSERT_TRUE(run.kill_rank(1)) << "no rank 1 process:\n" << run.log();
  const int status = run.wait_for_exit(90);
  const std::string log = run.log();
  ASSERT_EQ(status, 0) << log;
  EXPECT_NE(log.find("kolos run: rank 1 was killed by signal SIGKILL"), std::string::npos) << log;
  EXPECT_NE(log.find("kolos run: restarting all 2 local ranks (restart 1 of 1)"), std::string::npos) << log;
  // The second attempt resumed from a checkpoint of the first (step 5, 10, ...), not from the start.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(resuming from \S+ \(step (\d+)\))"))) << log;
  const int resumed = std::stoi(m[1]);
  EXPECT_GE(resumed, 5) << log;
  EXPECT_LT(resumed, kSteps) << log;
  EXPECT_EQ(resumed % 5, 0) << log;
  // Every step once, in order (the steps after the checkpoint were dropped and logged again), as one process.
  expect_losses_match(run.run_dir(), reference);
  EXPECT_TRUE(run.processes().empty()) << "a process of the run outlived kolos run";
}

}  // namespace
}  // namespace kolos::test
