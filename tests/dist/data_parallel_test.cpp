// Data parallelism and ZeRO-1/2 across processes (kolos run over loopback), against one process and against the
// analytical communication volumes (reference/yardsticks.md §5).
//
//   Parity   `kolos verify` trains the parity model on one process and under dp = 2 and 4 with zero = 0, 1, 2, with
//            and without gradient accumulation: losses at all 20 steps and every final parameter within 1e-5
//            (relative), each rank holding exactly its Plan's share (moments 2·flat/dp at zero ≥ 1, gradients
//            flat/dp at zero 2) and the dp collectives counted as the algorithm has them.
//   Bytes    per step and rank, plain dp sends 2(n−1)/n × the gradient bytes (all-reduce); ZeRO-1/2 move the same
//            total as a reduce-scatter of the gradients plus an all-gather of the parameters. The gradient buffer is
//            the parameters padded per bucket to a multiple of 16·n floats: the padding is stated and < 1%.
//   Overlap  with small buckets, the first bucket's all-reduce starts before backward reaches the first block.
//   ZeRO-3   chunked (memory::ChunkManager): parity at dp = 2 and 4 with and without accumulation, shards and op
//            counts, and 3Ψ per step in the ledger (untied LLaMA).
//   LARS/LAMB parity under ZeRO-1/2 (whole-tensor norms all-reduced across the shards), and a LARS checkpoint that
//   resumes on another layout as if uninterrupted and refuses another optimizer or option (exit 2).
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/dist/train_runs.h"
#include "tests/support.h"

namespace kolos {
namespace {

nlohmann::json verify(const std::string& layouts, const std::string& out, int expected_exit = 0,
                      std::vector<std::string> extra = {}) {
  return test::run_verify(layouts, out, expected_exit, extra);
}

void expect_all_ok(const nlohmann::json& j, size_t layouts) { test::expect_layouts_ok(j, layouts); }

TEST(DataParallelParity, TwoRanksZero012WithAndWithoutAccumulation) {
  test::TempDir dir("parity_dp2");
  auto j = verify("dp=2;dp=2,zero=1;dp=2,zero=2;dp=2,grad_accum=2;dp=2,zero=1,grad_accum=2;dp=2,zero=2,grad_accum=2",
                  dir.path());
  expect_all_ok(j, 6);
}

TEST(DataParallelParity, FourRanksZero012WithAndWithoutAccumulation) {
  test::TempDir dir("parity_dp4");
  // Global batch 8 over 4 ranks: micro-batches of 2, or of 1 with accumulation (plain dp with accumulation is
  // covered at dp = 2).
  auto j = verify("dp=4;dp=4,zero=1;dp=4,zero=2;dp=4,zero=1,grad_accum=2;dp=4,zero=2,grad_accum=2", dir.path());
  expect_all_ok(j, 5);
}

TEST(DataParallelParity, SmallBucketsAndLlamaToo) {
  test::TempDir dir("parity_llama");
  // Several buckets (about one block each), so chunk boundaries fall inside parameters; LLaMA with GQA.
  auto j = verify("dp=2,bucket_mb=0.1;dp=2,zero=2,bucket_mb=0.1", dir.path(), 0,
                  {"--set", "model.arch=llama", "--set", "model.kv_heads=4", "--set", "model.tie_embeddings=false"});
  expect_all_ok(j, 2);
}

// The rules with whole-tensor norms: under ZeRO a tensor's pieces lie on both ranks, whose partial squared norms are
// all-reduced before the trust ratio (learning rates large enough that the ratios move the weights). ZeRO-3 shards
// chunks, so its pieces split tensors at other places than ZeRO-1/2's buckets.
const std::vector<std::string> kLarsSets = {"--set", "optim.name=lars", "--set", "optim.lr=1.0", "--set",
                                            "optim.trust_coefficient=0.01", "--set", "optim.weight_decay=1e-3"};
const std::vector<std::string> kLambSets = {"--set", "optim.name=lamb", "--set", "optim.lr=1e-2"};

TEST(DataParallelParity, LarsShardedMatchesOneProcess) {
  test::TempDir dir("parity_lars");
  auto j = verify("dp=2,zero=1;dp=2,zero=2,bucket_mb=0.1;dp=2,zero=3", dir.path(), 0, kLarsSets);
  expect_all_ok(j, 3);
}

TEST(DataParallelParity, LambShardedMatchesOneProcess) {
  test::TempDir dir("parity_lamb");
  auto j = verify("dp=2,zero=1;dp=2,zero=2,bucket_mb=0.1;dp=2,zero=3", dir.path(), 0, kLambSets);
  expect_all_ok(j, 3);
}

TEST(Verify, OutOfToleranceIsExit4AndBadLayoutsExit2) {
  test::TempDir dir("verify_exit");
  // Accumulating ZeRO-2 sums micro-step reductions in another order than one process: ~1e-7, not 0.
  auto j = verify("dp=2,zero=2,grad_accum=2", dir.path(), 4, {"--tolerance", "1e-12"});
  ASSERT_EQ(j["layouts"].size(), 1u);
  EXPECT_FALSE(j["ok"].get<bool>());
  auto r = test::run_kolos({"verify", "--layouts", "dp=3", "--out", dir / "b"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("dp=3"), std::string::npos) << r.output;
  r = test::run_kolos({"verify", "--layouts", "dp=2,colour=blue", "--out", dir / "c"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("colour"), std::string::npos) << r.output;
  // Pipeline parallelism is supported now (issue 6); ZeRO-3 with it is refused.
  r = test::run_kolos({"verify", "--layouts", "pp=2,zero=3", "--out", dir / "d"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("parallel.pp"), std::string::npos) << r.output;
}

// Trains the parity model for `steps` under kolos run; returns metrics.jsonl's step records.
std::vector<nlohmann::json> train_records(const test::TempDir& dir, int n, std::vector<std::string> sets,
                                          int steps = 3) {
  std::vector<std::string> args = {"run", "-n", std::to_string(n), "--", KOLOS_BINARY, "train", "--config", "parity",
                                   "--out", dir / "run", "--set", "train.mfu=false", "--set", "train.threads=1",
                                   "--set", "train.steps=" + std::to_string(steps), "--set",
                                   "train.batch_size=" + std::to_string(8 / n)};
  for (const auto& s : sets) args.insert(args.end(), {"--set", s});
  auto r = test::run_kolos(args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto records = test::step_records(dir / "run");
  EXPECT_EQ(records.size(), static_cast<size_t>(steps));
  return records;
}

nlohmann::json rank_report(const test::TempDir& dir, int rank) {
  std::ifstream in(dir / ("run/ranks/rank_" + std::to_string(rank) + ".json"));
  return nlohmann::json::parse(in);
}

int64_t bytes_of(const nlohmann::json& comm, const char* op, const char* phase) {
  if (!comm.contains("dp") || !comm["dp"].contains(op) || !comm["dp"][op].contains(phase)) return 0;
  return comm["dp"][op][phase]["bytes"].get<int64_t>();
}

TEST(DataParallelLedger, BytesPerStepAreTheAnalyticalVolumes) {
  for (int n : {2, 4}) {
    int64_t total_zero0 = 0;
    for (int zero : {0, 1, 2}) {
      SCOPED_TRACE("dp=" + std::to_string(n) + " zero=" + std::to_string(zero));
      test::TempDir dir("ledger");
      auto records = train_records(dir, n, {"parallel.zero=" + std::to_string(zero)});
      if (records.empty()) return;
      const auto report = rank_report(dir, 0);
      const int64_t params = report["params"];  // the model's parameters (the reference count)
      const int64_t flat = report["held"]["flat_numel"];
      const double grad_bytes = 4.0 * static_cast<double>(params);
      // Padding: each bucket rounds up to 16·n floats; stated, and small.
      EXPECT_LT(static_cast<double>(flat - params) / static_cast<double>(params), 0.01) << flat << " vs " << params;
      for (const auto& rec : records) {
        const auto& comm = rec["comm"];
        const double all_reduce = bytes_of(comm, "all_reduce", "backward");
        const double reduce_scatter = bytes_of(comm, "reduce_scatter", "backward");
        const double all_gather = bytes_of(comm, "all_gather", "optimizer");
        if (zero == 0) {
          EXPECT_NEAR(all_reduce, 2.0 * (n - 1) / n * grad_bytes, 0.01 * grad_bytes) << comm.dump();
          EXPECT_EQ(reduce_scatter + all_gather, 0) << comm.dump();
          total_zero0 = static_cast<int64_t>(all_reduce);
        } else {
          EXPECT_EQ(all_reduce, 0) << comm.dump();
          EXPECT_NEAR(reduce_scatter, (n - 1.0) / n * grad_bytes, 0.01 * grad_bytes) << comm.dump();
          EXPECT_NEAR(all_gather, (n - 1.0) / n * grad_bytes, 0.01 * grad_bytes) << comm.dump();
          // The same total as plain data parallelism (exactly: the same padded buffer).
          EXPECT_EQ(static_cast<int64_t>(reduce_scatter + all_gather), total_zero0) << comm.dump();
        }
      }
      // Optimizer moments per rank: 1/n of the whole (2 moments × the padded parameters) at zero >= 1.
      for (int r = 0; r < n; ++r) {
        const auto rep = rank_report(dir, r);
        const int64_t moments = rep["held"]["optim_numel"];
        if (zero == 0) {
          EXPECT_EQ(moments, 2 * flat);
        } else {
          EXPECT_EQ(moments * n, 2 * flat) << "rank " << r;
          EXPECT_NEAR(static_cast<double>(moments), 2.0 * params / n, 0.01 * 2.0 * params / n);
        }
        EXPECT_EQ(rep["held"]["grad_numel"].get<int64_t>(), zero == 2 ? flat / n : flat) << "rank " << r;
      }
    }
  }
}

// ZeRO-3 (chunks): parity of dp = 2 and 4, with and without accumulation (GPT-2: the tied embedding's chunk kept
// gathered); each rank holding 1/n of the chunks' parameters, gradients and moments; per micro-step an all-gather
// of each chunk in forward and (but the kept ones) in backward and a reduce-scatter of each. Then the ledger of an
// untied LLaMA at dp = 2: per step 3Ψ — (n−1)/n × the parameter bytes, three times — within 2%; and its trace shows
// every block's gather for the next block starting before that block computes (prefetch).
TEST(DataParallelParity, ZeroThreeChunksAndTheirThreePsiLedger) {
  test::TempDir dir("parity_zero3");
  auto j = verify("dp=2,zero=3;dp=2,zero=3,grad_accum=2;dp=4,zero=3", dir.path());
  expect_all_ok(j, 3);

  const int n = 2;
  auto records = train_records(dir, n, {"parallel.zero=3", "model.arch=llama", "model.kv_heads=4",
                                         "model.tie_embeddings=false", "train.trace_comm=true"});
  ASSERT_FALSE(records.empty());
  const auto report = rank_report(dir, 0);
  const double psi_bytes = 4.0 * report["params"].get<double>();
  EXPECT_EQ(report["held"]["kept_chunks"].get<int64_t>(), 0);
  for (const auto& rec : records) {
    const auto& comm = rec["comm"];
    const double gather_fwd = bytes_of(comm, "all_gather", "forward");
    const double gather_bwd = bytes_of(comm, "all_gather", "backward");
    const double reduce = bytes_of(comm, "reduce_scatter", "backward");
    const double want = (n - 1.0) / n * psi_bytes;
    EXPECT_NEAR(gather_fwd, want, 0.02 * want) << comm.dump();
    EXPECT_NEAR(gather_bwd, want, 0.02 * want) << comm.dump();
    EXPECT_NEAR(reduce, want, 0.02 * want) << comm.dump();
    EXPECT_NEAR(gather_fwd + gather_bwd + reduce, 3 * want, 0.02 * 3 * want) << comm.dump();
    EXPECT_EQ(bytes_of(comm, "all_gather", "optimizer") + bytes_of(comm, "all_reduce", "backward"), 0);

    // Prefetch: the forward all-gathers are issued in chunk order, so the k-th is chunk k's. The first chunk of
    // block b + 1 starts gathering before block b begins computing.
    const auto& trace = rec["comm_trace"];
    const auto blocks = trace["chunk_blocks"].get<std::vector<int>>();
    const auto& starts = trace["block_forward_us"];
    std::vector<int64_t> gather_start(starts.size(), -1);  // per block: its first chunk's gather
    size_t k = 0;
    for (const auto& e : trace["events"])
      if (e["axis"] == "dp" && e["op"] == "all_gather" && e["phase"] == "forward") {
        ASSERT_LT(k, blocks.size()) << trace.dump();
        if (gather_start[blocks[k]] < 0) gather_start[blocks[k]] = e["start_us"];
        ++k;
      }
    ASSERT_EQ(k, blocks.size()) << "one forward gather per chunk";
    ASSERT_GE(starts.size(), 3u);
    for (size_t b = 0; b + 1 < starts.size(); ++b) {
      ASSERT_GE(gather_start[b + 1], 0) << "block " << b + 1 << " was not gathered";
      // Microsecond timestamps: the gather is issued before block b's own wait returns, so at worst the same µs.
      EXPECT_LE(gather_start[b + 1], starts[b].get<int64_t>())
          << "block " << b + 1 << "'s gather did not start before block " << b << " computed: " << trace.dump();
      if (b > 0) EXPECT_GT(gather_start[b + 1], starts[b - 1].get<int64_t>()) << "prefetched one block ahead only";
    }
  }
}

TEST(DataParallelOverlap, FirstBucketReductionStartsBeforeBackwardReachesTheFirstBlock) {
  test::TempDir dir("overlap");
  auto records = train_records(dir, 2, {"parallel.bucket_mb=0.1", "train.trace_comm=true"});
  ASSERT_FALSE(records.empty());
  const int64_t buckets = rank_report(dir, 0)["held"]["buckets"];
  ASSERT_GE(buckets, 4);
  for (const auto& rec : records) {
    const auto& trace = rec["comm_trace"];
    int64_t first_start = -1;
    int reductions = 0;
    for (const auto& e : trace["events"])
      if (e["axis"] == "dp" && e["op"] == "all_reduce" && e["phase"] == "backward") {
        if (first_start < 0) first_start = e["start_us"];
        ++reductions;
      }
    ASSERT_EQ(reductions, buckets) << trace.dump();
    const int64_t first_block = trace["first_block_grad_us"];
    const int64_t backward_start = trace["backward_start_us"], backward_end = trace["backward_end_us"];
    EXPECT_GT(first_start, backward_start) << trace.dump();
    EXPECT_LT(first_start, first_block) << "the first reduction waited for the first block: " << trace.dump();
    EXPECT_LT(first_block, backward_end);
  }
}

}  // namespace
}  // namespace kolos

namespace kolos::test {

std::vector<std::string> parity_args(const std::string& out, std::vector<std::string> sets) {
  std::vector<std::string> args = {KOLOS_BINARY, "train", "--config", "parity", "--out", out,
                                   "--set", "train.mfu=false", "--set", "train.threads=1"};
  for (const auto& s : sets) args.insert(args.end(), {"--set", s});
  return args;
}

RunResult run_ranks(int n, std::vector<std::string> args) {
  if (n > 1) args.insert(args.begin(), {"run", "-n", std::to_string(n), "--"});
  else args.erase(args.begin());  // run_kolos adds the binary
  return run_kolos(args);
}

}  // namespace kolos::test

namespace kolos {
namespace {

using test::parity_args;
using test::run_ranks;

TEST(CheckpointAcrossLayouts, ZeroRunResumesInOneProcessAndTheOtherWayRound) {
  test::TempDir dir("ckpt_layouts");
  // The uninterrupted one-process run: micro-batches of 4, two per step.
  const auto ref = test::one_process_losses(dir / "ref", 4, 20);
  ASSERT_EQ(ref.size(), 20u);

  // dp = 2 with ZeRO-2 for 10 steps (sharded moments gathered into whole tensors), then one process.
  std::vector<std::string> first = parity_args(dir / "b", {"train.batch_size=4", "parallel.zero=2"});
  first.insert(first.end(), {"--stop-after", "10"});
  auto r = run_ranks(2, first);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::string> second = parity_args(dir / "b", {"train.batch_size=4"});
  second.push_back("--resume");
  r = run_ranks(1, second);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  test::expect_losses_match(dir / "b", ref);

  // One process for 10 steps, then dp = 2 with ZeRO-1 (each rank takes its shard of the whole moments).
  first = parity_args(dir / "c", {"train.batch_size=4"});
  first.insert(first.end(), {"--stop-after", "10"});
  r = run_ranks(1, first);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  second = parity_args(dir / "c", {"train.batch_size=4", "parallel.zero=1"});
  second.push_back("--resume");
  r = run_ranks(2, second);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  test::expect_losses_match(dir / "c", ref);
}

TEST(CheckpointAcrossLayouts, LarsResumesAsUninterruptedAndRefusesAnotherRule) {
  test::TempDir dir("ckpt_lars");
  const std::vector<std::string> lars = {"train.batch_size=4", "optim.name=lars", "optim.lr=1.0",
                                         "optim.trust_coefficient=0.01", "optim.weight_decay=1e-3"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), lars.begin(), lars.end());
    return more;
  };
  // Uninterrupted, one process.
  auto r = run_ranks(1, parity_args(dir / "ref", lars));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<double> ref;
  for (const auto& rec : test::step_records(dir / "ref")) ref.push_back(rec["loss"].get<double>());
  ASSERT_EQ(ref.size(), 20u);

  // dp = 2 with ZeRO-2 for 10 steps (momentum.<param> gathered whole), then one process.
  std::vector<std::string> first = parity_args(dir / "b", with({"parallel.zero=2"}));
  first.insert(first.end(), {"--stop-after", "10"});
  r = run_ranks(2, first);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Another rule or another option of the rule: exit 2 naming the key, nothing trained.
  for (const auto& [set, key] : {std::pair<std::string, std::string>{"optim.name=lamb", "optim.name"},
                                 {"optim.momentum=0.5", "optim.momentum"},
                                 {"optim.trust_coefficient=0.02", "optim.trust_coefficient"}}) {
    std::vector<std::string> bad = parity_args(dir / "b", with({set}));
    bad.push_back("--resume");
    r = run_ranks(1, bad);
    EXPECT_EQ(r.exit_code, 2) << set << ": " << r.output;
    EXPECT_NE(r.output.find(key), std::string::npos) << set << ": " << r.output;
  }

  std::vector<std::string> second = parity_args(dir / "b", lars);
  second.push_back("--resume");
  r = run_ranks(1, second);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  test::expect_losses_match(dir / "b", ref);
}

}  // namespace
}  // namespace kolos
