// Ranks as threads of the test process (DESIGN "Testing": unit tests of collectives may do so): each thread gets its
// own Comm over one c10d::HashStore, with its own ProcessGroupGloo over 127.0.0.1.
#pragma once

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "kolos/dist/comm.h"

namespace kolos::test {

// Runs `body(comm, rank)` on `n` threads, each with its own Comm of axis `axis`. The Comms are destroyed only once
// every thread has finished, so no rank tears its connections down under a slower peer. The first exception of
// any rank is rethrown here. With `shm_slot_bytes` > 0 the Comms use shared memory, staging pieces of that size.
inline void run_thread_ranks(int n, const std::function<void(dist::Comm&, int)>& body,
                             std::chrono::milliseconds timeout = std::chrono::seconds(20), int64_t shm_slot_bytes = 0,
                             const std::string& axis = "dp") {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::shared_ptr<dist::Comm>> comms(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        dist::Comm::Options options;
        options.timeout = timeout;
        options.hostname = "127.0.0.1";
        options.shm = shm_slot_bytes > 0;
        if (options.shm) options.shm_slot_bytes = shm_slot_bytes;
        comms[r] = dist::Comm::create(store, r, n, axis, options);
        body(*comms[r], r);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  comms.clear();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Runs `body(grid, rank)` on `n` tp thread ranks (axis "tp"), each with a grid of sub-groups built over its tp Comm
// by `Grid::create(store, tp, options, extra...)` (Grid2d, Grid25d, Grid3d) from one shared store. The grids live
// until every rank has finished, as the Comms do.
template <typename Grid, typename... Extra>
void run_grid_ranks(int n, const std::function<void(Grid&, int)>& body, Extra... extra) {
  auto grid_store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::unique_ptr<Grid>> grids(n);
  run_thread_ranks(
      n,
      [&](dist::Comm& tp, int r) {
        dist::Comm::Options options;
        options.timeout = std::chrono::seconds(20);
        options.hostname = "127.0.0.1";
        grids[r] = Grid::create(grid_store, tp, extra..., options);
        body(*grids[r], r);
      },
      std::chrono::seconds(20), 0, "tp");
  grids.clear();
}

}  // namespace kolos::test
