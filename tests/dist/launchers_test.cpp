// kolos train started by the launchers people use besides `kolos run`: torchrun (`python3 -m torch.distributed.run`,
// Debian's python3-torch 1.13), Open MPI's mpirun (OMPI_COMM_WORLD_* variables), and Slurm's variables set by hand
// the way srun sets them for each task. Each 2-rank run of the parity recipe (global batch 8 as 2 × 4) must train
// like one process with the same global batch (micro-batches of 4, grad_accum 2): losses within 1e-5 (relative) at
// every one of the 20 steps — and both ranks must have joined one dp=2 group (their rank reports say so), since two
// independent one-process runs would give the same losses.
//
// Also defines the helpers that faults_test.cpp and netns_test.cpp declare (see "Shared with ...").
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kolos/dist/launcher.h"
#include "tests/dist/train_runs.h"
#include "tests/support.h"

namespace kolos::test {

// ---- Shared with faults_test.cpp and netns_test.cpp (declared there) ----

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `kolos train` arguments (one shell word each) for the parity recipe into run directory `out`, with `batch_size`
// sequences per rank and micro-step: the global batch stays 8, so grad_accum is 8 / (batch_size · dp).
std::string parity_train_args(const std::string& out, int batch_size, int steps) {
  return "train --config parity --out " + out + " --set train.mfu=false --set train.threads=1 --set train.steps=" +
         std::to_string(steps) + " --set train.batch_size=" + std::to_string(batch_size);
}

// metrics.jsonl's step records (those with a "loss"; evaluation-only records are skipped).
std::vector<nlohmann::json> step_records(const std::string& run_dir) {
  std::vector<nlohmann::json> records;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("loss")) records.push_back(j);
  }
  return records;
}

// Trains the parity recipe in one process into `out`; its losses, one per step.
std::vector<double> one_process_losses(const std::string& out, int batch_size, int steps) {
  const auto r = run_shell("cd " + std::string(KOLOS_SOURCE_DIR) + " && " + KOLOS_BINARY + " " +
                           parity_train_args(out, batch_size, steps));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<double> losses;
  for (const auto& rec : step_records(out)) losses.push_back(rec["loss"].get<double>());
  EXPECT_EQ(losses.size(), static_cast<size_t>(steps)) << r.output;
  return losses;
}

// metrics.jsonl in `run_dir` logs steps 1, 2, ... once each, with losses within 1e-5 (relative) of `reference`.
void expect_losses_match(const std::string& run_dir, const std::vector<double>& reference) {
  const auto records = step_records(run_dir);
  ASSERT_EQ(records.size(), reference.size()) << "steps logged in " << run_dir;
  for (size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i]["step"].get<int64_t>(), static_cast<int64_t>(i + 1)) << records[i].dump();
    const double loss = records[i]["loss"].get<double>();
    EXPECT_LE(std::abs(loss - reference[i]), 1e-5 * std::abs(reference[i]))
        << "step " << i + 1 << ": " << loss << " vs one process " << reference[i];
  }
}

// `rank` wrote its report into `run_dir` as data-parallel rank `rank` of a dp = `world` run.
void expect_rank_joined(const std::string& run_dir, int rank, int world) {
  std::ifstream in(run_dir + "/ranks/rank_" + std::to_string(rank) + ".json");
  ASSERT_TRUE(in.good()) << "rank " << rank << " wrote no report in " << run_dir;
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["world_size"], world) << j.dump();
  EXPECT_EQ(j["dp"], world) << j.dump();
  EXPECT_EQ(j["dp_rank"], rank) << j.dump();
}

namespace {

constexpr int kSteps = 20;

// Removes every launcher's variables from a command's environment, so that only the launcher under test speaks
// (the tests may themselves run under kolos run, torchrun, mpirun or Slurm).
const std::string kCleanEnv =
    "env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE -u GROUP_RANK -u MASTER_ADDR -u MASTER_PORT "
    "-u KOLOS_RUN -u KOLOS_RESTART_COUNT -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE -u OMPI_COMM_WORLD_LOCAL_RANK "
    "-u OMPI_COMM_WORLD_LOCAL_SIZE -u SLURM_PROCID -u SLURM_NTASKS -u SLURM_NPROCS -u SLURM_LOCALID -u SLURM_NODEID "
    "-u SLURM_NTASKS_PER_NODE -u SLURM_TASKS_PER_NODE -u SLURM_JOB_NODELIST -u SLURM_NODELIST ";

// Runs `launch` (a shell command line that starts two ranks of train_command(dir)) from the source directory and
// checks dir/run against one process with the same global batch.
void expect_two_ranks_match_one_process(const std::string& launch, const TempDir& dir) {
  const auto reference = one_process_losses(dir / "one", 4, kSteps);
  const auto r = run_shell("cd " + std::string(KOLOS_SOURCE_DIR) + " && " + launch);
  ASSERT_EQ(r.exit_code, 0) << launch << "\n" << r.output;
  expect_losses_match(dir / "run", reference);
  for (int rank = 0; rank < 2; ++rank) expect_rank_joined(dir / "run", rank, 2);
}

std::string train_command(const TempDir& dir) {
  return std::string(KOLOS_BINARY) + " " + parity_train_args(dir / "run", 4, kSteps);
}

// torchrun (python3 -m torch.distributed.run, 1.13: flags spelt with underscores) with `rendezvous` flags.
// Under Python 3.11 (Debian 12) its default `--redirects 0 --tee 0` crash it (Std.from_str("0") is None, since 3.11
// iterates no zero flag: "'NoneType' object has no attribute 'get'", meta-llama/llama#86); any non-zero value
// avoids that: here stdout goes through torchrun's log file and is teed to the console.
std::string torchrun(const TempDir& dir, const std::string& rendezvous) {
  return kCleanEnv + "timeout -k 5 90 /usr/bin/python3 -m torch.distributed.run --nnodes 1 --nproc_per_node 2 " +
         "--redirects 1 --tee 1 " + rendezvous + " --no_python " + train_command(dir);
}

TEST(Launchers, TorchrunTwoRanksMatchOneProcess) {
  if (!have_python_torch()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch (Debian python3-torch): no torchrun";
  TempDir dir("launchers-torchrun");
  // The default, "static" rendezvous: torchrun's agent itself serves the TCPStore at MASTER_ADDR:MASTER_PORT and
  // tells the ranks so (TORCHELASTIC_USE_AGENT_STORE=True): rank 0 must join it as a client, not listen there.
  expect_two_ranks_match_one_process(
      torchrun(dir, "--master_addr 127.0.0.1 --master_port " + std::to_string(dist::find_free_port())), dir);
}

TEST(Launchers, TorchrunC10dRendezvousTwoRanksMatchOneProcess) {
  if (!have_python_torch()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch (Debian python3-torch): no torchrun";
  TempDir dir("launchers-torchrun-c10d");
  // The elastic rendezvous (as with --standalone, but on a free port): the agents meet at the endpoint and hand the
  // ranks another free port as MASTER_PORT, where rank 0 serves the store (TORCHELASTIC_USE_AGENT_STORE=False).
  expect_two_ranks_match_one_process(
      torchrun(dir, "--rdzv_backend c10d --rdzv_id " + dir.path().substr(dir.path().rfind('/') + 1) +
                        " --rdzv_endpoint 127.0.0.1:" + std::to_string(dist::find_free_port())),
      dir);
}

TEST(Launchers, MpirunTwoRanksMatchOneProcess) {
  if (run_shell("command -v mpirun").exit_code != 0) GTEST_SKIP() << "no mpirun (Debian openmpi-bin)";
  TempDir dir("launchers-mpirun");
  // kolos uses no MPI itself: mpirun only starts the processes (OMPI_COMM_WORLD_*); the rendezvous address comes
  // with -x. As root Open MPI wants --allow-run-as-root; --oversubscribe and --bind-to none keep it from refusing
  // or pinning both ranks where slots or cores are few.
  expect_two_ranks_match_one_process(kCleanEnv + "timeout -k 5 90 mpirun -np 2 --allow-run-as-root --oversubscribe " +
                                         "--bind-to none -x MASTER_ADDR=127.0.0.1 -x MASTER_PORT=" +
                                         std::to_string(dist::find_free_port()) + " " + train_command(dir),
                                     dir);
}

TEST(Launchers, SlurmVariablesTwoRanksMatchOneProcess) {
  TempDir dir("launchers-slurm");
  // What srun gives each of 2 tasks on one node, plus MASTER_PORT by hand; no MASTER_ADDR: rank 0's host comes from
  // the node list. Each task is limited to 60 s, so a rank that never meets its peer cannot outlive the test.
  const std::string port = std::to_string(dist::find_free_port());
  std::string launch;
  for (int rank = 0; rank < 2; ++rank)
    launch += kCleanEnv + "SLURM_PROCID=" + std::to_string(rank) + " SLURM_LOCALID=" + std::to_string(rank) +
              " SLURM_NTASKS=2 SLURM_TASKS_PER_NODE=2 SLURM_NODEID=0 SLURM_JOB_NODELIST=localhost MASTER_PORT=" + port +
              " timeout -k 5 60 " + train_command(dir) + " > " +
              dir / ("rank" + std::to_string(rank) + ".log") + " 2>&1 & pid" + std::to_string(rank) + "=$!; ";
  launch += "wait $pid0; rc0=$?; wait $pid1; rc1=$?; cat " + dir / "rank0.log" + " " + dir / "rank1.log" +
            "; [ $rc0 = 0 ] && [ $rc1 = 0 ]";
  expect_two_ranks_match_one_process(launch, dir);
}

}  // namespace

nlohmann::json run_verify(const std::string& layouts, const std::string& out, int expected_exit,
                          const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"verify", "--layouts", layouts, "--out", out};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = run_kolos(args);
  EXPECT_EQ(r.exit_code, expected_exit) << r.output;
  const std::string line = last_json_line(r.output);
  if (line.empty()) {
    ADD_FAILURE() << "no JSON line:\n" << r.output;
    return nlohmann::json::object();
  }
  return nlohmann::json::parse(line);
}

void expect_layouts_ok(const nlohmann::json& result, size_t layouts, double param_tolerance) {
  ASSERT_EQ(result["layouts"].size(), layouts) << result.dump(1);
  for (const auto& l : result["layouts"]) {
    EXPECT_TRUE(l["ok"].get<bool>()) << l.dump();
    EXPECT_LE(l["loss_rel"].get<double>(), 1e-5) << l.dump();
    EXPECT_LE(l["param_rel"].get<double>(), param_tolerance) << l.dump();
    EXPECT_EQ(l["shards"], "ok") << l.dump();
    EXPECT_EQ(l["ops"], "ok") << l.dump();
  }
}

}  // namespace kolos::test
