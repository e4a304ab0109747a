// `n` Trainers of one run as threads of this process (a TCPStore on a free port, Gloo over loopback), for tests
// that drive train_step on several ranks (tests/train/mixed_precision_test.cpp, tests/train/offload_test.cpp).
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kolos/config/config.h"
#include "kolos/dist/launcher.h"
#include "kolos/train/trainer.h"

namespace kolos::test {

// Builds rank r's Trainer from the "tiny" recipe with `sets` (and dist.timeout_s=60) and options(r), then runs
// body(trainer, r) on rank r's thread. The Trainers are destroyed only after every thread has finished; the first
// exception of any rank is rethrown here.
inline void run_trainer_ranks(int n, const std::vector<std::string>& sets,
                              const std::function<train::RunOptions(int rank)>& options,
                              const std::function<void(train::Trainer&, int rank)>& body) {
  const int port = dist::find_free_port();
  std::vector<std::unique_ptr<train::Trainer>> trainers(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        dist::DistEnv env;
        env.rank = r;
        env.world_size = n;
        env.local_rank = r;
        env.local_world_size = n;
        env.master_addr = "127.0.0.1";
        env.master_port = port;
        env.launcher = "torchrun";
        std::vector<std::string> s = sets;
        s.push_back("dist.timeout_s=60");
        trainers[r] = std::make_unique<train::Trainer>(load_config("tiny", s, n), options(r), env);
        body(*trainers[r], r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  trainers.clear();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace kolos::test
