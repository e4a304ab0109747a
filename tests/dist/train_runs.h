// Helpers for tests that train the parity model under a launcher and compare with one process (defined in
// launchers_test.cpp; used by faults_test.cpp, netns_test.cpp and data_parallel_test.cpp).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

}  // namespace kolos::test
