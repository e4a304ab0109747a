#include "kolos/dist/bench_comm.h"

#include <algorithm>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "kolos/core/cli.h"
#include "kolos/core/error.h"
#include "kolos/core/timer.h"
#include "kolos/core/units.h"
#include "kolos/dist/comm.h"
#include "kolos/dist/env.h"
#include "kolos/dist/iface.h"

namespace kolos::dist {

namespace {

struct OpResult {
  std::string op;
  int64_t bytes = 0;
  double seconds = 0;  // median of the timed iterations
};

double bus_factor(const std::string& op, int n) {
  return op == "all_reduce" ? 2.0 * (n - 1) / n : static_cast<double>(n - 1) / n;
}

}  // namespace

int bench_comm_main(int argc, char** argv) {
  CLI::App app{"Bandwidth of all-reduce, all-gather and reduce-scatter over the world group. Run it under a "
               "launcher: kolos run -n 2 -- kolos bench comm",
               "bench comm"};
  std::string min_text = "1KiB", max_text = "256MiB";
  double timeout_s = 120;
  app.add_option("--min-size", min_text, "smallest message (default 1KiB)");
  app.add_option("--max-size", max_text, "largest message (default 256MiB)");
  app.add_option("--timeout", timeout_s, "seconds a peer may stay silent (default 120)")->check(CLI::PositiveNumber);
  bool no_shm = false;
  app.add_flag("--no-shm", no_shm, "all collectives through Gloo's TCP even when every rank is on this machine");
  bool in_place = false;
  app.add_flag("--in-place", in_place,
               "the in-place forms on a Comm::shared_zeros buffer (the reduce-scatter's output and the all-gather's "
               "input are the rank's chunk of the buffer), as data parallelism uses them");
  if (!parse_args(app, argc, argv)) return 0;
  const int64_t min_bytes = parse_bytes(min_text, "--min-size");
  const int64_t max_bytes = parse_bytes(max_text, "--max-size");
  KOLOS_CHECK(min_bytes >= 4 && min_bytes <= max_bytes, "--min-size / --max-size: expected 4 B <= min <= max, got {} and {}",
              min_text, max_text);

  const DistEnv env = read_dist_env();
  KOLOS_CHECK(env.world_size >= 2,
              "kolos bench comm: needs at least 2 ranks, found WORLD_SIZE = {}; run it as "
              "`kolos run -n 2 -- kolos bench comm`",
              env.world_size);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  // Gloo binds the interface that reaches the master, not what this host's name resolves to (often 127.0.0.1).
  // Resolved before the rendezvous, so an unreachable master is bad input (exit 2), not a peer failure.
  const std::string iface = resolve_gloo_interface("", env.master_addr, env.master_port);
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.waitWorkers = false;
  so.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    throw PeerError(fmt::format("rank {}: rendezvous at {}:{} failed: {}", env.rank, env.master_addr,
                                env.master_port, e.what()));
  }
  Comm::Options co;
  co.timeout = timeout;
  co.iface = iface;
  co.shm = !no_shm;
  auto comm = Comm::create(store, env.rank, env.world_size, "world", co);
  const int n = env.world_size;

  std::vector<OpResult> results;
  for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    const int64_t numel = std::max<int64_t>(n, bytes / 4 / n * n);  // divisible by n for the sharded ops
    const int iters = static_cast<int>(std::clamp<int64_t>((64ll << 20) / (numel * 4), 3, 50));
    at::Tensor full = in_place ? comm->shared_zeros(numel, at::kFloat).fill_(1) : at::ones({numel}, at::kFloat);
    at::Tensor shard = in_place ? full.narrow(0, env.rank * (numel / n), numel / n) : at::empty({numel / n}, at::kFloat);
    for (const std::string op : {"all_reduce", "all_gather", "reduce_scatter"}) {
      auto run_once = [&] {
        if (op == "all_reduce") comm->all_reduce(full);
        else if (op == "all_gather") comm->all_gather(shard, full);
        else comm->reduce_scatter(full, shard);
      };
      run_once();  // warm-up (connections, page faults)
      comm->barrier();
      std::vector<double> times;
      for (int i = 0; i < iters; ++i) {
        Timer t;
        run_once();
        times.push_back(t.seconds());
      }
      std::sort(times.begin(), times.end());
      results.push_back({op, numel * 4, times[times.size() / 2]});
    }
  }

  if (env.rank == 0) {
    std::printf("kolos bench comm: %d ranks (%s), Gloo on interface %s, master %s:%d\n", n, env.launcher.c_str(),
                co.iface.c_str(), env.master_addr.c_str(), env.master_port);
    std::printf("%-15s %12s %12s %12s %12s\n", "op", "bytes", "time_us", "algbw_GB/s", "busbw_GB/s");
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : results) {
      const double algbw = r.bytes / r.seconds / 1e9;
      const double busbw = algbw * bus_factor(r.op, n);
      std::printf("%-15s %12ld %12.1f %12.3f %12.3f\n", r.op.c_str(), r.bytes, r.seconds * 1e6, algbw, busbw);
      rows.push_back({{"op", r.op}, {"bytes", r.bytes}, {"time_us", r.seconds * 1e6}, {"algbw_gbps", algbw},
                      {"busbw_gbps", busbw}});
    }
    std::printf("%s\n", nlohmann::json{{"world", n},
                                       {"iface", co.iface},
                                       {"all_reduce_shm", comm->uses_shm()},
                                       {"in_place", in_place},
                                       {"results", rows}}
                            .dump()
                            .c_str());
  }
  comm->barrier();
  return 0;
}

}  // namespace kolos::dist
