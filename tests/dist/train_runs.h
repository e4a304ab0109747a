// Helpers for tests that train the parity model under a launcher and compare with one process (defined in
// launchers_test.cpp; used by faults_test.cpp, netns_test.cpp, data_parallel_test.cpp and tensor_parallel_test.cpp).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support.h"

namespace kolos::test {

std::string read_text(const std::string& path);
// "train --config parity --out OUT --set train.batch_size=B --set train.steps=S ..." as one shell-quoted string.
std::string parity_train_args(const std::string& out, int batch_size, int steps);
// The step records (with "loss") of RUN_DIR/metrics.jsonl.
std::vector<nlohmann::json> step_records(const std::string& run_dir);
// Trains the parity model on one process into `out` and returns its losses.
std::vector<double> one_process_losses(const std::string& out, int batch_size, int steps);
// Every step of run_dir's metrics matches `reference` within 1e-5 relative.
void expect_losses_match(const std::string& run_dir, const std::vector<double>& reference);
// RUN_DIR/ranks/rank_R.json says the rank joined a world of `world`.
void expect_rank_joined(const std::string& run_dir, int rank, int world);
// Runs `kolos verify --layouts LAYOUTS --out OUT EXTRA...`, expects `expected_exit`, returns its JSON line.
nlohmann::json run_verify(const std::string& layouts, const std::string& out, int expected_exit = 0,
                          const std::vector<std::string>& extra = {});
// (defined in data_parallel_test.cpp) "kolos train --config parity --out OUT --set train.mfu=false --set
// train.threads=1 --set S..." as argv, the binary first; and that argv run on `n` processes (kolos run -n N).
std::vector<std::string> parity_args(const std::string& out, std::vector<std::string> sets);
RunResult run_ranks(int n, std::vector<std::string> args);
// Every layout of a verify result is ok, its shards and op counts too, the loss within 1e-5 and the parameters
// within `param_tolerance`.
void expect_layouts_ok(const nlohmann::json& result, size_t layouts, double param_tolerance = 1e-5);

}  // namespace kolos::test
