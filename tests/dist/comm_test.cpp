// Comm's collectives against references computed here from every rank's input, and the ledger against the
// analytical byte counts of reference/yardsticks.md §5. Ranks are threads of this process (tests/dist/thread_ranks.h).
#include "kolos/dist/comm.h"

#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "kolos/core/error.h"
#include "tests/dist/thread_ranks.h"

namespace kolos::dist {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

void run_ranks(int n, const std::function<void(Comm&, int)>& body, std::chrono::milliseconds timeout = 20s,
               int64_t shm_slot_bytes = 0) {
  test::run_thread_ranks(n, body, timeout, shm_slot_bytes);
}

// One input per rank, different on every rank; float64 so that sums in any order agree to 1e-12.
std::vector<at::Tensor> rank_inputs(int n, at::IntArrayRef shape, uint64_t seed = 0) {
  std::vector<at::Tensor> out;
  for (int r = 0; r < n; ++r) {
    auto gen = at::detail::createCPUGenerator(seed * 1000 + r + 1);
    out.push_back(at::randn(shape, gen, at::kDouble));
  }
  return out;
}

at::Tensor stack_sum(const std::vector<at::Tensor>& xs) { return at::stack(xs).sum(0); }

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(at::allclose(got, want, 1e-12, 1e-12)) << what << ": max |diff| "
                                                     << (got - want).abs().max().item<double>();
}

class CommTest : public ::testing::TestWithParam<int> {};

TEST_P(CommTest, AllReduceSumAvgMaxMin) {
  const int n = GetParam();
  auto in = rank_inputs(n, {5, 7});
  const at::Tensor stacked = at::stack(in);
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor sum = in[r].clone(), avg = in[r].clone(), max = in[r].clone(), min = in[r].clone();
    comm.all_reduce(sum);
    comm.all_reduce(avg, ReduceOp::kAvg);
    comm.all_reduce(max, ReduceOp::kMax);
    comm.all_reduce(min, ReduceOp::kMin);
    expect_close(sum, stacked.sum(0), "sum");
    expect_close(avg, stacked.sum(0) / n, "avg");
    expect_close(max, stacked.amax(0), "max");
    expect_close(min, stacked.amin(0), "min");
  });
}

// Shared memory (ranks on one machine): sums in rank order, so fp32 results equal x0 + x1 + ... bit for bit on every
// rank; tensors many times the 4 KiB slot, sizes not divisible by the group; async ops complete in call order
// whatever order they are waited in; the ledger counts them like Gloo's.
TEST_P(CommTest, SharedMemoryAllReduceSumsInRankOrder) {
  const int n = GetParam();
  std::vector<at::Tensor> in32;
  for (const auto& x : rank_inputs(n, {10007}, 7)) in32.push_back(x.to(at::kFloat));
  at::Tensor want = in32[0].clone();
  for (int r = 1; r < n; ++r) want += in32[r];
  auto in64 = rank_inputs(n, {3, 333}, 8);
  run_ranks(
      n,
      [&](Comm& comm, int r) {
        ASSERT_TRUE(comm.uses_shm());
        at::Tensor sum = in32[r].clone(), avg = in32[r].clone(), d = in64[r].clone(), mx = in64[r].clone();
        Handle h1 = comm.all_reduce_async(sum);
        Handle h2 = comm.all_reduce_async(avg, ReduceOp::kAvg);
        Handle h3 = comm.all_reduce_async(d);
        comm.all_reduce(mx, ReduceOp::kMax);  // not a sum: through Gloo
        h3.wait();
        h2.wait();
        h1.wait();
        EXPECT_TRUE(at::equal(sum, want)) << "max |diff| " << (sum - want).abs().max().item<double>();
        EXPECT_TRUE(at::equal(avg, want / n));
        expect_close(d, stack_sum(in64), "fp64 sum");
        expect_close(mx, at::stack(in64).amax(0), "max");
        // Reduce-scatter (padded, output aliasing the input's chunk as ZeRO-1 uses it) and all-gather.
        for (int64_t numel : {int64_t(10007), int64_t(4 * n)}) {
          const int64_t c = comm.chunk_numel(numel);
          at::Tensor buf = at::zeros({n * c}, at::kFloat);
          buf.narrow(0, 0, numel).copy_(in32[r].narrow(0, 0, numel));
          comm.reduce_scatter(buf.narrow(0, 0, numel), buf.narrow(0, r * c, c), ReduceOp::kAvg);
          at::Tensor padded = at::zeros({n * c}, at::kFloat);
          padded.narrow(0, 0, numel).copy_(want.narrow(0, 0, numel));
          EXPECT_TRUE(at::equal(buf.narrow(0, r * c, c), padded.narrow(0, r * c, c) / n)) << numel;
          at::Tensor gathered = at::empty({n * c}, at::kFloat);
          comm.all_gather(buf.narrow(0, r * c, c).clone(), gathered);
          EXPECT_TRUE(at::equal(gathered, padded / n)) << numel;
        }
        EXPECT_EQ(comm.ledger().calls("dp", "all_reduce", Phase::kOther), 4);
        EXPECT_EQ(comm.ledger().bytes("dp", "all_reduce", Phase::kOther),
                  algorithmic_bytes("all_reduce", 10007 * 4, n) * 2 + algorithmic_bytes("all_reduce", 999 * 8, n) * 2);
      },
      20s, 4096);
}

// Buffers from Comm::shared_zeros: with shared memory the collectives on their ranges run in place (the peers read
// each rank's data where it lies); without it they are plain tensors. Either way: rank-order fp32 sums bit for bit,
// fp64 sums to 1e-12, elements outside the range untouched, the in-place reduce-scatter (output = the input's own
// chunk) and all-gather (input = the output's own chunk), several ops in flight, and the buffer outliving its Comm.
TEST_P(CommTest, SharedBuffersReduceAndGatherInPlace) {
  const int n = GetParam();
  const int64_t numel = 10007, lead = 48;  // a range not divisible by n, not at the buffer's start
  std::vector<at::Tensor> in32;
  for (const auto& x : rank_inputs(n, {numel}, 11)) in32.push_back(x.to(at::kFloat));
  at::Tensor want = in32[0].clone();
  for (int r = 1; r < n; ++r) want += in32[r];
  auto in64 = rank_inputs(n, {777}, 12);
  for (const bool shm : {true, false}) {
    std::vector<at::Tensor> kept(n);
    run_ranks(
        n,
        [&](Comm& comm, int r) {
          ASSERT_EQ(comm.uses_shm(), shm);
          // Shared memory sums in rank order, exactly; Gloo in its own order.
          auto same = [&](const at::Tensor& got, const at::Tensor& ref) {
            return shm ? at::equal(got, ref) : at::allclose(got, ref, 1e-5, 1e-6);
          };
          at::Tensor buf = comm.shared_zeros(lead + numel + 16, at::kFloat);
          ASSERT_EQ(buf.numel(), lead + numel + 16);
          ASSERT_TRUE(at::equal(buf, at::zeros_like(buf)));
          buf.fill_(-1);
          at::Tensor range = buf.narrow(0, lead, numel);
          range.copy_(in32[r]);
          at::Tensor d = comm.shared_zeros(777, at::kDouble);
          d.copy_(in64[r]);
          Handle h1 = comm.all_reduce_async(range, ReduceOp::kAvg);
          Handle h2 = comm.all_reduce_async(d);
          h2.wait();
          h1.wait();
          EXPECT_TRUE(same(range, want / n)) << "max |diff| " << (range - want / n).abs().max().item<double>();
          EXPECT_TRUE(at::equal(buf.narrow(0, 0, lead), at::full({lead}, -1.f)));
          EXPECT_TRUE(at::equal(buf.narrow(0, lead + numel, 16), at::full({16}, -1.f)));
          expect_close(d, stack_sum(in64), "fp64 sum");
          // Reduce-scatter, then all-gather of the reduced chunks: the whole sum again.
          const int64_t c = 64 * 3;
          at::Tensor whole = buf.narrow(0, lead, n * c), chunk = whole.narrow(0, r * c, c);
          whole.copy_(in32[r].narrow(0, 0, n * c));
          comm.reduce_scatter(whole, chunk);
          EXPECT_TRUE(same(chunk, want.narrow(0, r * c, c))) << "reduce_scatter rank " << r;
          comm.all_gather(chunk, whole);
          EXPECT_TRUE(same(whole, want.narrow(0, 0, n * c))) << "all_gather rank " << r;
          kept[r] = buf;
        },
        20s, shm ? 4096 : 0);
    for (int r = 0; r < n; ++r)  // the Comms are gone; the buffers are still readable
      EXPECT_TRUE(at::allclose(kept[r].narrow(0, lead, n * 64 * 3), want.narrow(0, 0, n * 64 * 3), 1e-5, 1e-6)) << shm;
  }
}

// Contract: chunks of c = ceil(N / n) elements over the input zero-padded to n·c; rank r gets [r·c, (r+1)·c).
TEST_P(CommTest, ReduceScatterPadsSizesNotDivisibleByGroup) {
  const int n = GetParam();
  for (int64_t numel : {int64_t(4 * n), int64_t(4 * n + 1), int64_t(4 * n + n - 1), int64_t(1)}) {
    auto in = rank_inputs(n, {numel}, numel);
    const int64_t c = (numel + n - 1) / n;
    at::Tensor padded_sum = at::zeros({n * c}, at::kDouble);
    padded_sum.narrow(0, 0, numel).copy_(stack_sum(in));
    run_ranks(n, [&](Comm& comm, int r) {
      ASSERT_EQ(comm.chunk_numel(numel), c);
      at::Tensor out = at::empty({c}, at::kDouble), avg = at::empty({c}, at::kDouble);
      comm.reduce_scatter(in[r], out);
      comm.reduce_scatter(in[r], avg, ReduceOp::kAvg);
      expect_close(out, padded_sum.narrow(0, r * c, c), fmt::format("numel {} rank {}", numel, r));
      expect_close(avg, padded_sum.narrow(0, r * c, c) / n, fmt::format("avg numel {} rank {}", numel, r));
    });
  }
}

TEST_P(CommTest, AllGatherConcatenatesInRankOrder) {
  const int n = GetParam();
  auto in = rank_inputs(n, {3, 4});
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor out = at::empty({n * 3, 4}, at::kDouble);
    comm.all_gather(in[r], out);
    expect_close(out, at::cat(in, 0), "all_gather");
  });
}

TEST_P(CommTest, BroadcastAndReduceToRoot) {
  const int n = GetParam();
  const int root = n - 1;
  auto in = rank_inputs(n, {6});
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor b = in[r].clone();
    comm.broadcast(b, root);
    expect_close(b, in[root], "broadcast");
    at::Tensor s = in[r].clone();
    comm.reduce(s, root);
    if (r == root) expect_close(s, stack_sum(in), "reduce");
  });
}

TEST_P(CommTest, AllToAllExchangesChunks) {
  const int n = GetParam();
  auto in = rank_inputs(n, {2 * n, 3});
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor out = at::empty({2 * n, 3}, at::kDouble);
    comm.all_to_all(in[r], out);
    for (int j = 0; j < n; ++j)
      expect_close(out.narrow(0, 2 * j, 2), in[j].narrow(0, 2 * r, 2), fmt::format("chunk from rank {}", j));
  });
}

TEST_P(CommTest, SendRecvRing) {
  const int n = GetParam();
  auto in = rank_inputs(n, {9});
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor got = at::empty({9}, at::kDouble);
    Handle recv = comm.recv_async(got, (r + n - 1) % n, /*tag=*/7);
    comm.send(in[r], (r + 1) % n, /*tag=*/7);
    recv.wait();
    expect_close(got, in[(r + n - 1) % n], "recv");
  });
}

// Several async ops in flight at once, waited on out of order; every result still matches.
TEST_P(CommTest, AsyncHandlesCompleteOutOfOrder) {
  const int n = GetParam();
  auto a = rank_inputs(n, {1000}, 1), b = rank_inputs(n, {333}, 2), g = rank_inputs(n, {17}, 3);
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor ta = a[r].clone(), tb = b[r].clone(), gathered = at::empty({n * 17}, at::kDouble);
    const int64_t c = comm.chunk_numel(333);
    at::Tensor rs = at::empty({c}, at::kDouble);
    Handle h1 = comm.all_reduce_async(ta, ReduceOp::kAvg);
    Handle h2 = comm.reduce_scatter_async(b[r], rs);
    Handle h3 = comm.all_gather_async(g[r], gathered);
    Handle h4 = comm.all_reduce_async(tb);
    h4.wait();
    h3.wait();
    h2.wait();
    h1.wait();
    h1.wait();  // idempotent
    EXPECT_TRUE(h1.done() && h2.done() && h3.done() && h4.done());
    expect_close(ta, stack_sum(a) / n, "async avg");
    expect_close(tb, stack_sum(b), "async sum");
    expect_close(gathered, at::cat(g), "async all_gather");
    at::Tensor padded = at::zeros({n * c}, at::kDouble);
    padded.narrow(0, 0, 333).copy_(stack_sum(b));
    expect_close(rs, padded.narrow(0, r * c, c), "async reduce_scatter");
    // Every event has started before it ended, and the ledger saw them in call order.
    auto events = comm.ledger().events();
    ASSERT_EQ(events.size(), 4u);
    EXPECT_EQ(events[1].op, "reduce_scatter");
    for (const auto& e : events) {
      EXPECT_NE(e.end, Ledger::Clock::time_point{}) << e.op;
      EXPECT_LE(e.start, e.end) << e.op;
    }
  });
}

// An async all-reduce runs while the caller computes: its event ends (backend completion) before the caller's
// wait(), so the ledger's timestamps can show overlap.
TEST_P(CommTest, AsyncAllReduceOverlapsCallerWork) {
  const int n = GetParam();
  run_ranks(n, [&](Comm& comm, int r) {
    at::Tensor x = at::ones({4096});
    Handle h = comm.all_reduce_async(x);
    std::this_thread::sleep_for(500ms);  // "compute"
    const auto before_wait = Ledger::Clock::now();
    h.wait();
    const auto event = comm.ledger().events().at(0);
    EXPECT_LT(event.end, before_wait);
    EXPECT_TRUE(at::equal(x, at::full({4096}, double(n), at::kFloat)));
  });
}

// The ledger's bytes per op are the ring/bandwidth-optimal volumes of yardsticks §5, written out here.
TEST_P(CommTest, LedgerBytesMatchAnalyticalVolumes) {
  const int64_t n = GetParam();
  run_ranks(n, [&](Comm& comm, int r) {
    const int64_t elems = 1000;           // float32 input of every op
    const int64_t m = elems * 4;          // its bytes
    at::Tensor x = at::ones({elems});
    {
      Ledger::PhaseScope backward(comm.ledger(), Phase::kBackward);
      comm.all_reduce(x.clone());
      comm.all_reduce(x.clone());
    }
    {
      Ledger::PhaseScope optimizer(comm.ledger(), Phase::kOptimizer);
      at::Tensor shard = at::empty({comm.chunk_numel(elems)});
      comm.reduce_scatter(x, shard);
      at::Tensor full = at::empty({n * shard.numel()});
      comm.all_gather(shard, full);  // as ZeRO does: gather the updated shards
    }
    Ledger::PhaseScope forward(comm.ledger(), Phase::kForward);
    comm.all_to_all(at::ones({n * 10}), at::empty({n * 10}));
    comm.broadcast(x.clone(), 0);
    comm.reduce(x.clone(), 0);
    at::Tensor got = at::empty({elems});
    Handle h = comm.recv_async(got, (r + n - 1) % n);
    comm.send(x, (r + 1) % n);
    h.wait();

    const Ledger& l = comm.ledger();
    const int64_t chunk = (elems + n - 1) / n, padded_m = chunk * n * 4;
    EXPECT_EQ(l.calls("dp", "all_reduce", Phase::kBackward), 2);
    EXPECT_EQ(l.bytes("dp", "all_reduce", Phase::kBackward), 2 * (2 * (n - 1) * m / n));
    EXPECT_EQ(l.bytes("dp", "reduce_scatter", Phase::kOptimizer), (n - 1) * padded_m / n);
    EXPECT_EQ(l.bytes("dp", "all_gather", Phase::kOptimizer), (n - 1) * chunk * 4);  // (n−1)/n of n·chunk
    EXPECT_EQ(l.bytes("dp", "all_to_all", Phase::kForward), (n - 1) * 10 * 4);
    EXPECT_EQ(l.bytes("dp", "broadcast", Phase::kForward), m);
    EXPECT_EQ(l.bytes("dp", "reduce", Phase::kForward), m);
    EXPECT_EQ(l.bytes("dp", "send", Phase::kForward), m);
    EXPECT_EQ(l.calls("dp", "recv", Phase::kForward), 1);
    EXPECT_EQ(l.bytes("dp", "recv", Phase::kForward), 0);
    EXPECT_EQ(l.calls("dp", "all_reduce", Phase::kForward), 0);
    // ZeRO's identity (yardsticks §5): reduce-scatter of the gradients + all-gather of the shards move what one
    // all-reduce moves.
    if (elems % n == 0) {
      EXPECT_EQ(l.bytes("dp", "reduce_scatter", Phase::kOptimizer) + l.bytes("dp", "all_gather", Phase::kOptimizer),
                l.bytes("dp", "all_reduce", Phase::kBackward) / 2);
    }

    const nlohmann::json j = l.to_json();
    ASSERT_EQ(j.size(), 1u);
    const auto& dp = j.at("dp");
    EXPECT_EQ(dp.size(), 8u);
    EXPECT_EQ(dp.at("all_reduce").size(), 1u);
    EXPECT_EQ(dp.at("all_reduce").at("backward").at("calls"), 2);
    EXPECT_EQ(dp.at("all_reduce").at("backward").at("bytes"), 4 * (n - 1) * m / n);
    EXPECT_EQ(dp.at("all_gather").at("optimizer").at("bytes"), (n - 1) * chunk * 4);
    EXPECT_EQ(dp.at("send").at("forward"), (nlohmann::json{{"calls", 1}, {"bytes", m}}));
  });
}

INSTANTIATE_TEST_SUITE_P(Comm, CommTest, ::testing::Values(2, 4), [](const auto& info) {
  return std::to_string(info.param) + "ranks";
});

TEST(CommErrorsTest, BadArgumentsAreInputErrors) {
  run_ranks(2, [](Comm& comm, int r) {
    EXPECT_THROW(comm.all_gather(at::ones({3}), at::empty({5})), InputError);
    EXPECT_THROW(comm.all_to_all(at::ones({3}), at::empty({3})), InputError);
    EXPECT_THROW(comm.reduce_scatter(at::ones({5}), at::empty({2})), InputError);
    EXPECT_THROW(comm.all_reduce(at::ones({3}, at::kLong), ReduceOp::kAvg), InputError);
    EXPECT_THROW(comm.broadcast(at::ones({3}), 2), InputError);
    EXPECT_THROW(comm.send(at::ones({3}), r), InputError);
    EXPECT_THROW(comm.all_reduce(at::ones({4, 4}).t()), InputError);
    EXPECT_EQ(comm.ledger().total_bytes(), 0);  // nothing was launched
  });
}

// Rank 1 never calls the collective: rank 0 must get PeerError naming the axis and itself within ~2× the timeout.
TEST(CommErrorsTest, SilentPeerBecomesPeerErrorWithinTimeout) {
  const auto timeout = 1000ms;
  std::atomic<bool> rank0_done{false};
  std::string message;
  double seconds = -1;
  run_ranks(
      2,
      [&](Comm& comm, int r) {
        if (r == 1) {
          while (!rank0_done) std::this_thread::sleep_for(10ms);  // alive but silent
          return;
        }
        const auto start = Clock::now();
        try {
          comm.all_reduce(at::ones({16}));
        } catch (const PeerError& e) {
          message = e.what();
        }
        seconds = std::chrono::duration<double>(Clock::now() - start).count();
        rank0_done = true;
      },
      timeout);
  EXPECT_NE(message.find("all_reduce on axis 'dp' (rank 0 of 2)"), std::string::npos) << message;
  EXPECT_NE(message.find("within 1000 ms"), std::string::npos) << message;
  EXPECT_GE(seconds, 0.5);
  EXPECT_LE(seconds, 2.0) << message;
}

// A rank that never joins the group: create() itself becomes PeerError, not a hang.
TEST(CommErrorsTest, SharedMemoryPeerThatNeverArrivesIsPeerError) {
  std::string message;
  const auto start = Clock::now();
  run_ranks(
      2,
      [&](Comm& comm, int r) {
        ASSERT_TRUE(comm.uses_shm());
        if (r == 1) {
          std::this_thread::sleep_for(2500ms);  // alive but silent
          return;
        }
        at::Tensor t = at::ones({1000});
        try {
          comm.all_reduce(t);
        } catch (const PeerError& e) {
          message = e.what();
        }
      },
      1s, 4096);
  EXPECT_NE(message.find("rank 1"), std::string::npos) << message;
  EXPECT_NE(message.find("all_reduce"), std::string::npos) << message;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 10.0);
}

TEST(CommErrorsTest, MissingPeerAtRendezvousBecomesPeerError) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  Comm::Options options;
  options.timeout = 1000ms;
  options.hostname = "127.0.0.1";
  const auto start = Clock::now();
  try {
    Comm::create(store, 0, 2, "tp", options);
    FAIL() << "create() returned without its peer";
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("axis 'tp' (rank 0 of 2)"), std::string::npos) << e.what();
  }
  EXPECT_LE(std::chrono::duration<double>(Clock::now() - start).count(), 2.0);
}

TEST(LedgerTest, CountsPerAxisOpPhaseAndJsonShape) {
  Ledger ledger;
  EXPECT_EQ(ledger.phase(), Phase::kOther);
  ledger.record("dp", "all_reduce", 100);
  {
    Ledger::PhaseScope fwd(ledger, Phase::kForward);
    ledger.record("tp", "all_reduce", 10);
    {
      Ledger::PhaseScope bwd(ledger, Phase::kBackward);
      ledger.record("tp", "all_reduce", 20);
      ledger.record("tp", "all_reduce", 20);
      EXPECT_EQ(ledger.phase(), Phase::kBackward);
    }
    EXPECT_EQ(ledger.phase(), Phase::kForward);
    ledger.record("tp", "all_gather", 5);
  }
  EXPECT_EQ(ledger.phase(), Phase::kOther);
  const int64_t id = ledger.record("dp", "reduce_scatter", 7);
  const nlohmann::json want = {
      {"dp", {{"all_reduce", {{"other", {{"calls", 1}, {"bytes", 100}}}}},
              {"reduce_scatter", {{"other", {{"calls", 1}, {"bytes", 7}}}}}}},
      {"tp", {{"all_reduce", {{"forward", {{"calls", 1}, {"bytes", 10}}}, {"backward", {{"calls", 2}, {"bytes", 40}}}}},
              {"all_gather", {{"forward", {{"calls", 1}, {"bytes", 5}}}}}}}};
  EXPECT_EQ(ledger.to_json(), want) << ledger.to_json().dump();
  EXPECT_EQ(ledger.total_bytes(), 162);

  auto events = ledger.events();
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[2].phase, Phase::kBackward);
  EXPECT_EQ(events[5].end, Ledger::Clock::time_point{});
  ledger.finish(id);
  const auto end = ledger.events()[5].end;
  EXPECT_GE(end, events[5].start);
  ledger.finish(id);  // the first completion wins
  EXPECT_EQ(ledger.events()[5].end, end);

  ledger.reset();
  EXPECT_EQ(ledger.to_json(), nlohmann::json::object());
  EXPECT_TRUE(ledger.events().empty());
  const int64_t fresh = ledger.record("dp", "send", 1);
  ledger.finish(id);  // an id from before reset() is ignored
  EXPECT_EQ(ledger.events()[0].end, Ledger::Clock::time_point{});
  ledger.finish(fresh);
  EXPECT_NE(ledger.events()[0].end, Ledger::Clock::time_point{});
}

TEST(LedgerTest, AlgorithmicBytesFollowYardsticks) {
  // M = 1200 bytes: n = 4 gives 2·3/4·M = 1800 for all-reduce and 3/4·M = 900 for the others of §5.
  EXPECT_EQ(algorithmic_bytes("all_reduce", 1200, 4), 1800);
  EXPECT_EQ(algorithmic_bytes("reduce_scatter", 1200, 4), 900);
  EXPECT_EQ(algorithmic_bytes("all_gather", 1200, 4), 900);
  EXPECT_EQ(algorithmic_bytes("all_to_all", 1200, 4), 900);
  EXPECT_EQ(algorithmic_bytes("broadcast", 1200, 4), 1200);
  EXPECT_EQ(algorithmic_bytes("send", 1200, 4), 1200);
  EXPECT_EQ(algorithmic_bytes("recv", 1200, 4), 0);
  EXPECT_EQ(algorithmic_bytes("all_reduce", 1200, 2), 1200);
  EXPECT_EQ(algorithmic_bytes("all_reduce", 1200, 1), 0);
}

}  // namespace
}  // namespace kolos::dist
