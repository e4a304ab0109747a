// Static offload through the trainer (memory.*; memory/offload.h, parallel/data/data_parallel.h):
//   parity   a small GPT-2 trained 20 steps with its optimizer state on nvme (and on host, and with sgd and lion)
//            has bit-identical losses, parameters and optimizer state to the same run without offload; ZeRO-3 on
//            two ranks (threads) with half the master parameters and optimizer state on nvme equals ZeRO-3
//            without offload, bit for bit; ZeRO-3 in one process with its master parameters, gradients and
//            optimizer state all on nvme equals the same without offload, bit for bit.
//   resume   a run with offload stopped after 4 steps and resumed from its checkpoint equals a straight run
//            without offload (the checkpoint reads the offloaded state back; the resume writes it out).
//   metrics  metrics.jsonl carries mem_bytes, chunk_moves, io_bytes, io_gbps with offload, and not without.
//   auto     placement = "auto" (shard cache over nvme after a traced first step) on two ranks, with a cache that
//            forces eviction and with a roomy budget: bit-identical losses and optimizer state to no offload, the
//            cache within its capacity, fewer tier bytes than static placement with everything on nvme.
//   config   nvme without nvme_path, LARS/LAMB with offload, parameter offload without ZeRO-3, and placement =
//            "auto" without a budget, with fractions or without ZeRO-3 are exit-2 errors naming their keys.
//   disk full  a 64 MiB tmpfs (mounted in a private mount namespace) holding the swap file and the run directory
//            fills up at a checkpoint: exit 2, one error line naming the path, no swap file left behind, and the
//            last complete checkpoint resumes in a normal directory.
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kolos/checkpoint/safetensors.h"
#include "kolos/config/config.h"
#include "kolos/core/error.h"
#include "kolos/train/trainer.h"
#include "tests/support.h"
#include "tests/train/trainer_ranks.h"

namespace kolos {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> small_sets(std::vector<std::string> extra) {
  std::vector<std::string> sets = {"model.arch=gpt2", "model.layers=2", "model.hidden=32", "model.heads=4",
                                   "model.kv_heads=4", "model.seq_len=16", "model.vocab=64", "data.synthetic=true",
                                   "train.steps=20", "train.batch_size=4", "train.mfu=false", "train.threads=1",
                                   "train.sample_tokens=0", "train.eval_every=0", "optim.warmup_steps=0",
                                   "optim.schedule=constant", "optim.min_lr=1e-3", "optim.lr=1e-3",
                                   "optim.weight_decay=0.1", "optim.grad_clip=1.0"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return sets;
}

train::RunOptions no_files() { return train::RunOptions::in_memory(); }

struct Trained {
  std::vector<double> losses;
  std::vector<at::Tensor> params;
  std::vector<std::pair<std::string, at::Tensor>> optim;
  std::vector<train::StepResult> steps;
};

Trained train_one(const std::vector<std::string>& sets, int steps = 20) {
  train::Trainer t(load_config("tiny", sets), no_files());
  Trained r;
  for (int64_t s = 0; s < steps; ++s) {
    r.steps.push_back(t.train_step(s));
    r.losses.push_back(r.steps.back().loss);
  }
  for (const auto& [name, p] : t.model().params()) r.params.push_back(p.detach().clone());
  r.optim = t.optimizer_state();
  return r;
}

void expect_identical(const Trained& got, const Trained& want) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s) EXPECT_EQ(got.losses[s], want.losses[s]) << "step " << s;
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i) EXPECT_TRUE(at::equal(got.params[i], want.params[i])) << "param " << i;
  ASSERT_EQ(got.optim.size(), want.optim.size());
  for (size_t i = 0; i < want.optim.size(); ++i) {
    EXPECT_EQ(got.optim[i].first, want.optim[i].first);
    EXPECT_TRUE(at::equal(got.optim[i].second, want.optim[i].second)) << want.optim[i].first;
  }
}

TEST(Offload, OptimizerStateOnNvmeOrHostIsBitIdenticalToNoOffload) {
  train::configure_threads(1);
  test::TempDir dir("offload");
  for (const char* rule : {"adamw", "sgd", "lion"}) {
    SCOPED_TRACE(rule);
    const std::vector<std::string> base = small_sets({std::string("optim.name=") + rule, "optim.momentum=0.9"});
    const Trained plain = train_one(base);
    auto with = [&](std::vector<std::string> extra) {
      auto sets = base;
      sets.insert(sets.end(), extra.begin(), extra.end());
      return sets;
    };
    const Trained nvme = train_one(with({"memory.offload_tier=nvme", "memory.offload_optim_frac=0.6",
                                     "memory.nvme_path=" + dir / "swap"}));
    expect_identical(nvme, plain);
    for (const auto& s : nvme.steps) {
      ASSERT_TRUE(s.offload);
      EXPECT_GT(s.mem_nvme, 0);
      EXPECT_EQ(s.mem_host, 0);
      EXPECT_GT(s.chunk_moves, 0);
      EXPECT_GT(s.io_bytes, 0);
    }
    if (std::string(rule) == "adamw") {
      const Trained host = train_one(with({"memory.offload_tier=host", "memory.offload_optim_frac=1"}));
      expect_identical(host, plain);
      EXPECT_GT(host.steps.back().mem_host, 0);
      EXPECT_EQ(host.steps.back().mem_nvme, 0);
      EXPECT_FALSE(plain.steps.back().offload);
    }
  }
  // The swap files are gone with their trainers.
  for (const auto& e : fs::directory_iterator(dir / "swap")) ADD_FAILURE() << "left behind: " << e.path();
}

TEST(Offload, ZeroThreeWithMasterParametersAndStateOnNvmeIsBitIdentical) {
  train::configure_threads(1);
  test::TempDir dir("offload");
  auto run = [&](std::vector<std::string> extra) {
    std::vector<double> losses;
    std::vector<std::pair<std::string, at::Tensor>> optim;
    std::vector<train::StepResult> steps;
    auto sets = small_sets({"parallel.zero=3", "train.batch_size=2"});
    sets.insert(sets.end(), extra.begin(), extra.end());
    test::run_trainer_ranks(
        2, sets, [](int) { return no_files(); },
        [&](train::Trainer& t, int rank) {
          for (int64_t s = 0; s < 20; ++s) {
            const train::StepResult r = t.train_step(s);
            if (rank == 0) {
              losses.push_back(r.loss);
              steps.push_back(r);
            }
          }
          auto state = t.optimizer_state();  // collective: whole tensors on every rank
          if (rank == 0) optim = std::move(state);
        });
    return std::make_tuple(losses, optim, steps);
  };
  const auto [plain_losses, plain_optim, plain_steps] = run({});
  const auto [losses, optim, steps] =
      run({"memory.offload_tier=nvme", "memory.offload_param_frac=0.5", "memory.offload_optim_frac=0.7",
           "memory.nvme_path=" + dir / "swap"});
  ASSERT_EQ(losses.size(), plain_losses.size());
  for (size_t s = 0; s < losses.size(); ++s) EXPECT_EQ(losses[s], plain_losses[s]) << "step " << s;
  ASSERT_EQ(optim.size(), plain_optim.size());
  for (size_t i = 0; i < optim.size(); ++i)
    EXPECT_TRUE(at::equal(optim[i].second, plain_optim[i].second)) << optim[i].first;
  // Parameters are read back for the gathers of forward and backward and written by the optimizer every step.
  for (const auto& s : steps) {
    EXPECT_GT(s.mem_nvme, 0);
    EXPECT_GT(s.chunk_moves, 0);
  }
}

TEST(Offload, AutoPlacementUnderABudgetThatForcesEvictionIsBitIdentical) {
  // memory.placement = "auto" on two ranks: every shard's home on nvme, a shard cache after two steps. Under a
  // cache of 40% of a rank's parameter shard (the test hook stands for a budget that tight) shards are evicted;
  // under a 64 GiB budget (the budget's own rule) every shard stays. Both give the losses and optimizer state of
  // ZeRO-3 without offload bit for bit, and move fewer tier bytes than static placement with everything on nvme.
  train::configure_threads(1);
  test::TempDir dir("offload");
  struct Run {
    std::vector<double> losses;
    std::vector<std::pair<std::string, at::Tensor>> optim;
    std::vector<train::StepResult> steps;
    int64_t shard_bytes = 0;  // rank 0's share of the parameters, fp32
  };
  // A step's figures with the tail of its update (which otherwise overlaps the next forward) added, so that steps
  // compare; `overlapped`: left to overlap the next forward as in training (the values must not change).
  auto run = [&](std::vector<std::string> extra, int64_t cache_fraction_percent, bool overlapped = false) {
    Run out;
    auto sets = small_sets({"parallel.zero=3", "train.batch_size=2"});
    sets.insert(sets.end(), extra.begin(), extra.end());
    int64_t numel = 0;
    for (const auto& [name, p] : train::Trainer(load_config("tiny", small_sets({})), no_files()).model().params())
      numel += p.numel();
    out.shard_bytes = numel * 4 / 2;
    test::run_trainer_ranks(
        2, sets,
        [&](int) {
          train::RunOptions o = no_files();
          if (cache_fraction_percent >= 0) o.test_shard_cache_bytes = out.shard_bytes * cache_fraction_percent / 100;
          return o;
        },
        [&](train::Trainer& t, int rank) {
          for (int64_t s = 0; s < 20; ++s) {
            train::StepResult r = t.train_step(s);
            if (!overlapped) {
              const train::StepResult tail = t.finish_optimizer_step();
              r.io_bytes += tail.io_bytes;
              r.chunk_moves += tail.chunk_moves;
              r.mem_cached = tail.offload ? tail.mem_cached : r.mem_cached;
            }
            if (rank == 0) {
              out.losses.push_back(r.loss);
              out.steps.push_back(r);
            }
          }
          auto state = t.optimizer_state();
          if (rank == 0) out.optim = std::move(state);
        });
    return out;
  };
  const std::string swap = "memory.nvme_path=" + dir / "swap";
  const Run plain = run({}, -1);
  const Run all_static = run({"memory.offload_tier=nvme", "memory.offload_param_frac=1", "memory.offload_grads=true",
                              "memory.offload_optim_frac=1", swap}, -1);
  const Run tight = run({"memory.placement=auto", "memory.budget=64GiB", "memory.offload_tier=nvme", swap}, 40);
  const Run roomy = run({"memory.placement=auto", "memory.budget=64GiB", "memory.offload_tier=nvme", swap}, -1);
  const Run tight_overlapped = run({"memory.placement=auto", "memory.budget=64GiB", "memory.offload_tier=nvme",
                                    "memory.overlap_step=true", swap}, 40, true);
  for (const Run* r : {&all_static, &tight, &roomy, &tight_overlapped}) {
    ASSERT_EQ(r->losses.size(), plain.losses.size());
    for (size_t s = 0; s < plain.losses.size(); ++s) EXPECT_EQ(r->losses[s], plain.losses[s]) << "step " << s;
    ASSERT_EQ(r->optim.size(), plain.optim.size());
    for (size_t i = 0; i < plain.optim.size(); ++i)
      EXPECT_TRUE(at::equal(r->optim[i].second, plain.optim[i].second)) << plain.optim[i].first;
  }
  // Steps 0 (the trace) and 1 run without a cache: the same bytes as static placement. Then the cache: within its
  // capacity, hits every step, fewer bytes; the roomy one holds every shard (within the chunks' padding) and moves
  // fewer still.
  for (size_t s = 0; s < 2; ++s) {
    EXPECT_EQ(tight.steps[s].io_bytes, all_static.steps[s].io_bytes) << "step " << s;
    EXPECT_EQ(roomy.steps[s].io_bytes, all_static.steps[s].io_bytes) << "step " << s;
    EXPECT_EQ(tight.steps[s].mem_cached, 0) << "step " << s;  // sized after step 1's optimizer step
  }
  for (size_t s = 2; s < plain.losses.size(); ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    EXPECT_LE(tight.steps[s].mem_cached, tight.shard_bytes * 40 / 100);
    EXPECT_GT(tight.steps[s].mem_cached, 0);
    EXPECT_GE(roomy.steps[s].mem_cached, roomy.shard_bytes);
    EXPECT_GT(tight.steps[s].cache_hits, 0);
    EXPECT_LT(tight.steps[s].io_bytes, all_static.steps[s].io_bytes);
    EXPECT_LT(roomy.steps[s].io_bytes, tight.steps[s].io_bytes);
  }
}

std::vector<nlohmann::json> metrics(const std::string& run) {
  std::vector<nlohmann::json> out;
  std::ifstream f(run + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// (ChunkZero3.OneRankMatchesPlainTraining compares one-process ZeRO-3 with plain training.)
TEST(Offload, OneProcessZeroThreeWithEverythingOnNvmeIsBitIdenticalToNoOffload) {
  train::configure_threads(1);
  test::TempDir dir("offload");
  auto options = [&](const std::string& out) {
    train::RunOptions o;
    o.out_dir = out;
    o.final_eval = false;
    return o;
  };
  const auto base = small_sets({"train.log_every=1", "train.save_every=0", "parallel.zero=3"});
  auto offload = base;
  for (const std::string s : {"memory.offload_tier=nvme", "memory.offload_param_frac=1", "memory.offload_grads=true",
                              "memory.offload_optim_frac=1"})
    offload.push_back(s);
  offload.push_back("memory.nvme_path=" + dir / "swap");
  offload.push_back("memory.overlap_step=true");  // each update overlaps the next forward
  train::Trainer(load_config("tiny", base), options(dir / "plain")).train();
  train::Trainer(load_config("tiny", offload), options(dir / "nvme")).train();
  auto in_step = offload;  // the update completes inside its step
  in_step.back() = "memory.overlap_step=false";
  train::Trainer(load_config("tiny", in_step), options(dir / "in_step")).train();

  // The final checkpoints (whole parameters and optimizer state) and every step's loss, bit for bit.
  int64_t numel = 0;
  for (const char* file : {"model.safetensors", "optim.safetensors"}) {
    auto a = checkpoint::load_safetensors(dir / "plain/checkpoints/step_20/" + file);
    auto b = checkpoint::load_safetensors(dir / "nvme/checkpoints/step_20/" + file);
    auto c = checkpoint::load_safetensors(dir / "in_step/checkpoints/step_20/" + file);
    ASSERT_EQ(a.size(), b.size()) << file;
    ASSERT_EQ(a.size(), c.size()) << file;
    for (const auto& [name, t] : a) {
      EXPECT_TRUE(at::equal(t, b.at(name))) << file << " " << name;
      EXPECT_TRUE(at::equal(t, c.at(name))) << file << " " << name << " (overlap_step = false)";
      if (std::string(file) == "model.safetensors") numel += t.numel();
    }
  }
  const auto plain = metrics(dir / "plain"), nvme = metrics(dir / "nvme");
  ASSERT_EQ(plain.size(), nvme.size());
  int64_t steps_bytes = 0, steps = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    if (!plain[i].contains("loss")) continue;
    EXPECT_EQ(plain[i]["loss"].get<double>(), nvme[i]["loss"].get<double>()) << i;
    // Every byte of parameters, gradients and optimizer state is on the tier (4 fp32 values per parameter), and
    // each step moves at least the parameters (read for the gathers, written by the optimizer), the gradients
    // (written, read) and the two moments (read, written): 4·8 bytes per parameter (summed below).
    ASSERT_TRUE(nvme[i].contains("mem_bytes")) << nvme[i].dump();
    EXPECT_GE(nvme[i]["mem_bytes"]["nvme"].get<int64_t>(), 4 * 4 * numel);
    steps_bytes += nvme[i]["io_bytes"].get<int64_t>();
    ++steps;
  }
  // Each step's update streams behind the next step's forward (memory/offload.h "The overlapped step"), so a step's
  // figures hold the previous step's update, not its own; the last update (28 of the 40 bytes a parameter: p, g, m,
  // v read, p, m, v written) finishes after the last step.
  EXPECT_GE(steps_bytes, steps * 4 * 8 * numel - 4 * 7 * numel);
  for (const auto& e : fs::directory_iterator(dir / "swap")) ADD_FAILURE() << "left behind: " << e.path();
}

TEST(Offload, ResumedOffloadRunEqualsAStraightRunAndLogsItsTiers) {
  train::configure_threads(1);
  test::TempDir dir("offload");
  auto options = [&](const std::string& out, int64_t stop_after, bool resume) {
    train::RunOptions o;
    o.out_dir = out;
    o.stop_after = stop_after;
    o.resume = resume;
    o.final_eval = false;
    return o;
  };
  const auto base = small_sets({"train.steps=8", "train.save_every=4", "train.log_every=1"});
  auto offload = base;
  for (const std::string s : {"memory.offload_tier=nvme", "memory.offload_optim_frac=0.5"}) offload.push_back(s);
  offload.push_back("memory.nvme_path=" + dir / "swap");
  train::Trainer(load_config("tiny", base), options(dir / "a", 0, false)).train();
  train::Trainer(load_config("tiny", offload), options(dir / "b", 4, false)).train();
  train::Trainer(load_config("tiny", offload), options(dir / "b", 0, true)).train();

  for (const char* file : {"model.safetensors", "optim.safetensors"}) {
    auto a = checkpoint::load_safetensors(dir / "a/checkpoints/step_8/" + file);
    auto b = checkpoint::load_safetensors(dir / "b/checkpoints/step_8/" + file);
    ASSERT_EQ(a.size(), b.size()) << file;
    for (const auto& [name, t] : a) EXPECT_TRUE(at::equal(t, b.at(name))) << file << " " << name;
  }
  const auto ma = metrics(dir / "a"), mb = metrics(dir / "b");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    if (!ma[i].contains("loss")) continue;
    EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << i;
    EXPECT_FALSE(ma[i].contains("mem_bytes"));
    ASSERT_TRUE(mb[i].contains("mem_bytes")) << mb[i].dump();
    EXPECT_GT(mb[i]["mem_bytes"]["compute"].get<int64_t>(), 0);
    EXPECT_GT(mb[i]["mem_bytes"]["nvme"].get<int64_t>(), 0);
    EXPECT_EQ(mb[i]["mem_bytes"]["host"].get<int64_t>(), 0);
    EXPECT_GT(mb[i]["chunk_moves"].get<int64_t>(), 0);
    EXPECT_GT(mb[i]["io_bytes"].get<int64_t>(), 0);
    EXPECT_GT(mb[i]["io_gbps"].get<double>(), 0);
  }
}

std::string input_error(const std::vector<std::string>& sets, int world = 1) {
  try {
    Config c = load_config("tiny", small_sets(sets), world);
    train::Trainer t(c, no_files());
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Offload, BadSettingsAreInputErrorsNamingTheirKeys) {
  EXPECT_NE(input_error({"memory.offload_tier=nvme", "memory.offload_optim_frac=0.5"}).find("memory.nvme_path"),
            std::string::npos);
  for (const char* rule : {"lars", "lamb"}) {
    const std::string e = input_error({std::string("optim.name=") + rule, "memory.offload_optim_frac=0.5"});
    EXPECT_NE(e.find("memory.offload_optim_frac"), std::string::npos) << e;
    EXPECT_NE(e.find(rule), std::string::npos) << e;
  }
  const std::string e = input_error({"memory.offload_param_frac=0.5"});
  EXPECT_NE(e.find("memory.offload_param_frac"), std::string::npos) << e;
  EXPECT_NE(e.find("parallel.zero = 3"), std::string::npos) << e;
  EXPECT_NE(input_error({"memory.offload_grads=true"}).find("memory.offload_grads"), std::string::npos);
  EXPECT_NE(input_error({"memory.placement=auto"}).find("memory.budget"), std::string::npos);
  EXPECT_NE(input_error({"memory.placement=auto", "memory.budget=1GiB"}).find("parallel.zero"), std::string::npos);
  EXPECT_NE(input_error({"memory.placement=auto", "memory.budget=1GiB", "parallel.zero=3", "memory.offload_optim_frac=1"})
                .find("memory.offload_optim_frac"),
            std::string::npos);
}

// The child's part of DiskFullAtACheckpoint, with the 64 MiB tmpfs mounted at `tmpfs`: returns "" when every check
// holds, else what failed.
std::string fill_tmpfs(const std::string& tmpfs, const std::string& copy) {
  std::string failures;
  // 1.65M parameters: checkpoints of about 20 MB (parameters and AdamW's two moments) and a 13 MB swap file for
  // the optimizer state: the third checkpoint does not fit.
  const std::vector<std::string> args = {
      "train", "--config", "parity", "--set", "model.layers=2", "--set", "model.hidden=256", "--set",
      "model.ffn_hidden=1024", "--set", "train.steps=10", "--set", "train.save_every=1", "--set", "train.mfu=false",
      "--set", "train.threads=1", "--set", "memory.offload_tier=nvme", "--set", "memory.offload_optim_frac=1",
      "--set", "memory.nvme_path=" + tmpfs + "/swap", "--out", tmpfs + "/run"};
  const test::RunResult r = test::run_kolos(args);
  if (r.exit_code != 2) failures += "exit code " + std::to_string(r.exit_code) + " (expected 2); ";
  int error_lines = 0;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("error") == std::string::npos) continue;
    ++error_lines;
    if (line.find(tmpfs) == std::string::npos) failures += "the error names no path on the tmpfs: " + line + "; ";
  }
  if (error_lines != 1) failures += std::to_string(error_lines) + " error lines; ";
  for (const auto& e : fs::directory_iterator(tmpfs + "/swap")) failures += "left behind: " + e.path().string() + "; ";
  std::ifstream latest(tmpfs + "/run/checkpoints/latest");
  std::string name;
  latest >> name;
  if (name.empty()) failures += "no complete checkpoint before the disk filled; ";
  // The run directory (its complete checkpoints) into a normal directory, before the tmpfs goes with this process.
  std::error_code ec;
  fs::copy(tmpfs + "/run", copy, fs::copy_options::recursive, ec);
  if (ec) failures += "copy: " + ec.message() + "; ";
  if (!failures.empty()) failures += "output: " + r.output;
  return failures;
}

TEST(Offload, DiskFullAtACheckpointIsExitTwoAndTheLastCheckpointResumes) {
  test::TempDir dir("offload");
  const std::string tmpfs = dir / "tmpfs", copy = dir / "copy";
  fs::create_directories(tmpfs);
  const std::string report = test::in_private_tmpfs(tmpfs, "64m", [&] { return fill_tmpfs(tmpfs, copy); });
  if (report.rfind("skip: ", 0) == 0) GTEST_SKIP() << report.substr(6) << " (needs root)";
  ASSERT_EQ(report, "");

  // The last complete checkpoint resumes (with the offload in a normal directory) and trains one more step.
  std::ifstream latest(copy + "/checkpoints/latest");
  std::string name;
  latest >> name;
  ASSERT_EQ(name.rfind("step_", 0), 0u) << name;
  const int64_t step = std::stoll(name.substr(5));
  const test::RunResult r = test::run_kolos(
      {"train", "--config", "parity", "--set", "model.layers=2", "--set", "model.hidden=256", "--set",
       "model.ffn_hidden=1024", "--set", "train.steps=" + std::to_string(step + 1), "--set", "train.save_every=1",
       "--set", "train.mfu=false", "--set", "train.threads=1", "--set", "memory.offload_tier=nvme", "--set",
       "memory.offload_optim_frac=1", "--set", "memory.nvme_path=" + dir / "swap", "--out", copy, "--resume"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(copy + "/checkpoints/step_" + std::to_string(step + 1) + "/optim.safetensors"));
}

}  // namespace
}  // namespace kolos
