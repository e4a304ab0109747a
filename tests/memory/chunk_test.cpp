// Chunk-based ZeRO-3 (memory/chunk.h, memory/chunk_manager.h) on ranks run as threads (tests/dist/thread_ranks.h):
//   Parity    a small model of MLP blocks trained 3 SGD steps under the chunk manager on 1, 2 and 4 ranks (with
//             and without gradient accumulation and recomputed blocks, with a tied input/output matrix in a
//             keep-gathered block 0) ends with the parameters of the same model trained on one process with whole
//             tensors (fp32, 1e-6 relative). A parameter the loss does not use gets a zero gradient.
//   Release   a released chunk's storage has nbytes 0 and no data; a view taken before the release, and a tensor
//             autograd saved, read the right values after the re-gather.
//   Bytes     per step the ledger's all-gathers (forward, backward) and reduce-scatters equal 3Ψ in its convention,
//             Ψ padded to the chunk capacities (the padding is computed), and within 2% of the unpadded 3Ψ.
//   Prefetch  in forward, the gather of block b+1 starts (ledger timestamp) before block b computes.
//   Offload   with half the shards on the host or nvme tier (read back for each gather, updated there), the same
//             parity holds on 1 and 2 ranks and no offloaded shard stays resident after a backward; with every
//             shard and gradient on nvme, the memory a forward holds does not grow with the number of blocks.
//   Cache     every shard on nvme with a shard cache of two shards after the first step (memory.placement =
//             "auto"): values bit-identical to no cache, the recorded trace is the step's order of uses, the cache
//             never exceeds its capacity, ends every step holding the two shards the next step needs first
//             (Belady), hits more often than LRU and no more than MIN on the trace, and every later step moves
//             fewer tier bytes.
#include <gtest/gtest.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>

#include <torch/csrc/autograd/autograd.h>

#include "kolos/memory/chunk_manager.h"
#include "kolos/memory/tiers.h"
#include "kolos/nn/recompute.h"
#include "tests/dist/thread_ranks.h"
#include "tests/support.h"

namespace kolos::memory {
namespace {

using Clock = std::chrono::steady_clock;

// The test model: `layers` residual MLP blocks x + W2·gelu(W1·x + b1) + b2 of width h and hidden f. With `tied`,
// an input matrix Win (h × d) maps the inputs in and its transpose maps the result out (used at both ends, like a
// tied embedding): it is block 0, kept gathered. Loss: mean squared error against a target.
struct TinyModel {
  int layers = 4;
  int64_t h = 16, f = 30, d = 12;
  bool tied = false;
  bool recompute = false;  // each MLP block through nn::recompute (activation checkpointing)

  int first_mlp_block() const { return tied ? 1 : 0; }
  int64_t in_width() const { return tied ? d : h; }

  std::vector<ChunkParam> params() const {
    std::vector<ChunkParam> p;
    if (tied) p.push_back({"in.w", {h, d}, 0});
    for (int l = 0; l < layers; ++l) {
      const int b = first_mlp_block() + l;
      const std::string n = "h." + std::to_string(l) + ".";
      p.push_back({n + "fc1.w", {f, h}, b});
      p.push_back({n + "fc1.b", {f}, b});
      p.push_back({n + "fc2.w", {h, f}, b});
      p.push_back({n + "fc2.b", {h}, b});
    }
    return p;
  }

  int64_t num_elements() const {
    int64_t n = 0;
    for (const auto& p : params()) {
      int64_t m = 1;
      for (int64_t s : p.shape) m *= s;
      n += m;
    }
    return n;
  }

  std::vector<at::Tensor> init() const {
    std::vector<at::Tensor> out;
    int i = 0;
    for (const auto& p : params()) {
      auto gen = at::detail::createCPUGenerator(100 + i++);
      out.push_back(at::randn(p.shape, gen, at::kFloat) * 0.1);
    }
    return out;
  }

  // The step's global batch (8 rows): inputs and targets.
  std::pair<at::Tensor, at::Tensor> batch(int step) const {
    auto gen = at::detail::createCPUGenerator(7 + step);
    at::Tensor x = at::randn({8, in_width()}, gen, at::kFloat);
    at::Tensor y = at::randn({8, in_width()}, gen, at::kFloat);
    return {x, y};
  }

  // The loss; `m` (may be null) is called around every block as the chunk protocol says. `times` gets each MLP
  // block's compute start and end.
  at::Tensor loss(const std::vector<at::Tensor>& p, const at::Tensor& x, const at::Tensor& target, ChunkManager* m,
                  std::vector<std::pair<Clock::time_point, Clock::time_point>>* times = nullptr) const {
    size_t k = 0;
    at::Tensor a = x, win;
    if (tied) {
      win = p[k++];
      if (m) m->before_forward(0);
      a = a.mm(win.t());
      if (m) {
        m->after_forward(0);
        a = m->pre_backward(0, a);
      }
    }
    for (int l = 0; l < layers; ++l) {
      const int b = first_mlp_block() + l;
      const at::Tensor &w1 = p[k], &b1 = p[k + 1], &w2 = p[k + 2], &b2 = p[k + 3];
      k += 4;
      if (m) m->before_forward(b);
      const auto start = Clock::now();
      auto block = [w1, b1, w2, b2](const at::Tensor& in) {
        return in + at::gelu(in.mm(w1.t()) + b1).mm(w2.t()) + b2;
      };
      at::Tensor y = recompute ? nn::recompute(block, a) : block(a);
      if (times) times->push_back({start, Clock::now()});
      if (m) {
        m->after_forward(b);
        y = m->pre_backward(b, y);
      }
      a = y;
    }
    if (tied) a = a.mm(win);  // block 0 is still gathered (kept)
    return (a - target).pow(2).mean();
  }
};

double rel_diff(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).norm().item<double>() / std::max(want.norm().item<double>(), 1e-30);
}

constexpr double kLr = 0.05;
constexpr int kSteps = 3;

// One process, whole tensors, plain autograd and SGD.
std::vector<at::Tensor> train_reference(const TinyModel& model, int steps = kSteps) {
  std::vector<at::Tensor> p = model.init();
  for (auto& t : p) t.set_requires_grad(true);
  for (int step = 0; step < steps; ++step) {
    auto [x, y] = model.batch(step);
    model.loss(p, x, y, nullptr).backward();
    at::NoGradGuard no_grad;
    for (auto& t : p) {
      t.sub_(t.grad() * kLr);
      t.mutable_grad().reset();
    }
  }
  return p;
}

// Makes one rank's tier store for parameter offload (null function: no offload).
using StoreMaker = std::function<std::unique_ptr<TierStore>(int rank)>;

// A tier store on `tier` for `rank`, its swap file (nvme) under `dir`, growing 1 MiB at a time.
std::unique_ptr<TierStore> tier_store(Tier tier, const std::string& dir, int rank = 0) {
  TierStore::Options so;
  so.tier = tier;
  so.nvme_path = dir;
  so.rank = rank;
  so.grow_step = 1 << 20;
  return std::make_unique<TierStore>(so);
}

// The chunk manager on `comm` (null: one rank), `accum` micro-steps per step; returns the whole parameters. With
// `make_store`, options.offload_fraction of the shards live on this rank's store and the SGD step updates them there.
std::vector<at::Tensor> train_chunked(const TinyModel& model, ChunkManager::Options options, dist::Comm* comm,
                                      int accum, const StoreMaker& make_store = nullptr) {
  const int n = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  std::unique_ptr<TierStore> store = make_store ? make_store(rank) : nullptr;
  options.tier = store.get();
  ChunkManager m(model.params(), options, comm);
  if (store) {
    EXPECT_LT(m.shard_params().numel(), m.shard_numel());
  }
  const auto init = model.init();
  for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = model.batch(step);
    const int64_t rows = 8 / n / accum;
    m.begin_step();
    for (int k = 0; k < accum; ++k) {
      const int64_t first = rank * (8 / n) + k * rows;
      at::Tensor loss = model.loss(m.params(), x.narrow(0, first, rows), y.narrow(0, first, rows), &m) / accum;
      loss.backward();
      m.finish_backward();
      EXPECT_EQ(m.gathered_bytes(), 0);
      EXPECT_EQ(m.fetched_shard_bytes(), 0);
    }
    at::NoGradGuard no_grad;
    const int64_t resident = m.shard_params().numel();
    m.shard_params().sub_(m.shard_grads().narrow(0, 0, resident) * kLr);
    for (const TierShard& sh : m.offloaded_shards()) {  // read, update, write back
      AlignedBuffer buf(sh.region.bytes);
      store->wait(store->read(sh.region, 0, buf.data(), sh.region.bytes));
      at::Tensor shard = at::from_blob(buf.data(), {sh.numel}, at::kFloat);
      shard.sub_(m.shard_grads().narrow(0, sh.begin, sh.numel) * kLr);
      store->wait(store->write(sh.region, 0, buf.data(), sh.region.bytes));
    }
  }
  return m.whole_params();
}

void expect_parity(const TinyModel& model, const ChunkManager::Options& options, int ranks, int accum,
                   const StoreMaker& make_store = nullptr) {
  const auto want = train_reference(model);
  std::vector<std::vector<at::Tensor>> got(ranks);
  if (ranks == 1) {
    got[0] = train_chunked(model, options, nullptr, accum, make_store);
  } else {
    test::run_thread_ranks(ranks, [&](dist::Comm& comm, int rank) {
      got[rank] = train_chunked(model, options, &comm, accum, make_store);
    });
  }
  const auto names = model.params();
  const auto init = model.init();
  for (int r = 0; r < ranks; ++r)
    for (size_t i = 0; i < want.size(); ++i) {
      const at::Tensor w = want[i].detach();
      ASSERT_GT(rel_diff(w, init[i]), 1e-4) << names[i].name;  // the steps moved it
      EXPECT_LE(rel_diff(got[r][i], w), 1e-6) << "rank " << r << " " << names[i].name;
      // Stricter: the change itself (a gradient off by a factor would show here first).
      EXPECT_LE(rel_diff(got[r][i] - init[i], w - init[i]), 1e-4) << "rank " << r << " " << names[i].name;
    }
}

ChunkManager::Options two_chunks_per_block(const TinyModel& model) {
  // 520 elements: fc1 (480 + 30) in one chunk, fc2 (480 + 16) in the next; the tied 16 × 12 matrix alone.
  ChunkManager::Options o;
  o.chunk_size = 520;
  if (model.tied) o.keep_gathered = {0};
  return o;
}

TEST(ChunkZero3, OneRankMatchesPlainTraining) {
  TinyModel model;
  model.tied = true;
  expect_parity(model, two_chunks_per_block(model), 1, 1);
}

TEST(ChunkZero3, TwoRanksMatchOneProcess) {
  TinyModel model;
  model.tied = true;
  expect_parity(model, two_chunks_per_block(model), 2, 1);
}

TEST(ChunkZero3, TwoRanksWithGradientAccumulationMatchOneProcess) {
  TinyModel model;
  model.tied = true;
  expect_parity(model, two_chunks_per_block(model), 2, 2);
}

TEST(ChunkZero3, TwoRanksWithRecomputedBlocksMatchOneProcess) {
  // Checkpointed blocks run again inside backward (a re-entrant backward fires the gradient hooks): the
  // pre-backward node has gathered the block before its recomputation.
  TinyModel model;
  model.tied = true;
  model.recompute = true;
  expect_parity(model, two_chunks_per_block(model), 2, 1);
}

TEST(ChunkZero3, FourRanksMatchOneProcess) {
  TinyModel model;
  model.tied = true;
  ChunkManager::Options o = two_chunks_per_block(model);
  o.chunk_size = 509;  // capacity 512: shards of 128 split parameters at any element
  o.max_pending_reductions = 1;
  expect_parity(model, o, 4, 1);
}

TEST(ChunkZero3, OffloadedShardsOnHostAndNvmeMatchOneProcess) {
  // Half the shard elements (the last chunks) on a tier: read back before each gather, freed after it.
  TinyModel model;
  model.tied = true;
  test::TempDir dir("chunk-offload");
  for (Tier tier : {Tier::kHost, Tier::kNvme})
    for (int ranks : {1, 2}) {
      SCOPED_TRACE(std::string(tier_name(tier)) + ", ranks " + std::to_string(ranks));
      ChunkManager::Options o = two_chunks_per_block(model);
      o.offload_fraction = 0.5;
      expect_parity(model, o, ranks, 1, [&](int rank) { return tier_store(tier, dir.path(), rank); });
    }
}

// The shard cache (ChunkManager::set_cache_capacity; memory.placement = "auto"): every shard on nvme, `steps` SGD
// steps; before the second, the cache gets `capacity` bytes (< 0: no cache). The SGD step visits the shards as
// StreamedStep does (optimizer_visit: read from the cache when it holds the shard, copy the update into it when it
// admits it; the tier written either way).
struct CachedRun {
  std::vector<at::Tensor> params;
  std::vector<int64_t> step_bytes;             // tier bytes moved per step
  std::vector<std::vector<int>> cached_after;  // per step: the chunks whose shards are cached after its SGD step
  std::vector<int> trace;
  std::vector<int64_t> step_hits;              // per step: uses that found their shard cached
  int64_t hits = 0, most_cached = 0;
  std::vector<std::pair<int, int>> blocks;     // per block: its chunks [first, end)
};

constexpr int kCacheSteps = 5;

// Hits in the last of 6 repetitions of `trace` for a cache of `capacity` equal-sized items that admits every miss:
// with `min`, Belady's MIN (evict whichever of the cached and the new item is used furthest in the future), else LRU.
int64_t simulated_hits(const std::vector<int>& trace, size_t capacity, bool min) {
  std::vector<int> seq;
  for (int k = 0; k < 6; ++k) seq.insert(seq.end(), trace.begin(), trace.end());
  auto next = [&](size_t from, int x) {
    for (size_t q = from + 1; q < seq.size(); ++q)
      if (seq[q] == x) return q;
    return seq.size() + 1;
  };
  std::vector<int> cache;  // LRU: least recent first
  int64_t hits = 0;
  for (size_t p = 0; p < seq.size(); ++p) {
    const int x = seq[p];
    auto it = std::find(cache.begin(), cache.end(), x);
    if (it != cache.end()) {
      if (p >= 5 * trace.size()) ++hits;
      cache.erase(it);
      cache.push_back(x);
      continue;
    }
    if (cache.size() < capacity) {
      cache.push_back(x);
      continue;
    }
    if (!min) {
      cache.erase(cache.begin());
      cache.push_back(x);
      continue;
    }
    auto far = std::max_element(cache.begin(), cache.end(), [&](int a, int b) { return next(p, a) < next(p, b); });
    if (next(p, *far) > next(p, x)) {
      cache.erase(far);
      cache.push_back(x);
    }
  }
  return hits;
}

CachedRun train_cached(const TinyModel& model, dist::Comm* comm, int64_t capacity, const std::string& dir) {
  const int n = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  const std::unique_ptr<TierStore> owned = tier_store(Tier::kNvme, dir, rank);
  TierStore& store = *owned;
  ChunkManager::Options o = two_chunks_per_block(model);
  o.offload_fraction = 1;
  o.tier = &store;
  ChunkManager m(model.params(), o, comm);
  EXPECT_EQ(m.shard_params().numel(), 0);
  const auto init = model.init();
  for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
  CachedRun r;
  for (int b = 0; b < m.num_blocks(); ++b) r.blocks.push_back(m.block_chunks(b));
  for (int step = 0; step < kCacheSteps; ++step) {
    if (step == 1 && capacity >= 0) m.set_cache_capacity(capacity);
    const int64_t before = store.bytes_moved(), hits_before = m.cache_hits();
    auto [x, y] = model.batch(step);
    m.begin_step();
    at::Tensor loss = model.loss(m.params(), x.narrow(0, rank * (8 / n), 8 / n), y.narrow(0, rank * (8 / n), 8 / n), &m);
    loss.backward();
    m.finish_backward();
    EXPECT_EQ(m.gathered_bytes(), 0);
    EXPECT_EQ(m.fetched_shard_bytes(), m.shard_cache_bytes());  // nothing resident but the cache
    r.most_cached = std::max(r.most_cached, m.shard_cache_bytes());
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < m.offloaded_shards().size(); ++i) {
      const TierShard& sh = m.offloaded_shards()[i];
      const auto [src, dst] = m.optimizer_visit(static_cast<int>(i));
      AlignedBuffer buf(sh.region.bytes);
      if (src) {
        std::memcpy(buf.data(), src, static_cast<size_t>(sh.numel * 4));
      } else {
        store.wait(store.read(sh.region, 0, buf.data(), sh.region.bytes));
      }
      at::Tensor shard = at::from_blob(buf.data(), {sh.numel}, at::kFloat);
      shard.sub_(m.shard_grads().narrow(0, sh.begin, sh.numel) * kLr);
      store.wait(store.write(sh.region, 0, buf.data(), sh.region.bytes));
      if (dst) std::memcpy(dst, buf.data(), static_cast<size_t>(sh.numel * 4));
    }
    r.most_cached = std::max(r.most_cached, m.shard_cache_bytes());
    r.step_bytes.push_back(store.bytes_moved() - before);
    r.step_hits.push_back(m.cache_hits() - hits_before);
    r.cached_after.emplace_back();
    for (int c = 0; c < m.num_chunks(); ++c)
      if (m.shard_cached(c)) r.cached_after.back().push_back(c);
  }
  r.hits = m.cache_hits();
  r.trace = m.trace();
  r.params = m.whole_params();
  return r;
}

TEST(ChunkZero3, ShardCacheKeepsTheShardsNeededSoonestAndChangesNoValue) {
  // Nine chunks (the tied matrix, then two per MLP block), every shard on nvme; a cache of two MLP chunks' shards.
  TinyModel model;
  model.tied = true;
  test::TempDir dir("chunk-cache");
  for (int ranks : {1, 2}) {
    SCOPED_TRACE("ranks " + std::to_string(ranks));
    const int64_t shard_bytes = 520 / ranks * 4;
    const int64_t capacity = 2 * shard_bytes;
    std::vector<CachedRun> plain(ranks), cached(ranks);
    auto run = [&](dist::Comm* comm, int rank) {
      plain[rank] = train_cached(model, comm, -1, dir.path());
      cached[rank] = train_cached(model, comm, capacity, dir.path());
    };
    if (ranks == 1) {
      run(nullptr, 0);
    } else {
      test::run_thread_ranks(ranks, [&](dist::Comm& comm, int rank) { run(&comm, rank); });
    }
    const auto want = train_reference(model, kCacheSteps);
    const auto names = model.params();
    for (int r = 0; r < ranks; ++r) {
      const CachedRun& got = cached[r];
      // No value changes: bit-identical to the run without the cache, and the one-process reference within 1e-6.
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_TRUE(at::equal(got.params[i], plain[r].params[i])) << "rank " << r << " " << names[i].name;
        EXPECT_LE(rel_diff(got.params[i], want[i].detach()), 1e-6) << "rank " << r << " " << names[i].name;
      }
      // The trace (the first step's uses): forward gathers blocks 0..4, backward 4..1 (block 0 stays gathered),
      // the SGD step visits every shard in chunk order.
      std::vector<int> expected;
      for (int b = 0; b < 5; ++b)
        for (int c = got.blocks[b].first; c < got.blocks[b].second; ++c) expected.push_back(c);
      for (int b = 4; b >= 1; --b)
        for (int c = got.blocks[b].first; c < got.blocks[b].second; ++c) expected.push_back(c);
      for (int c = 0; c < 9; ++c) expected.push_back(c);
      EXPECT_EQ(got.trace, expected) << "rank " << r;
      EXPECT_LE(got.most_cached, capacity) << "rank " << r;
      // Belady on this trace: at the end of each step the cache holds the two shards the next step uses first,
      // chunks 0 and 1. Every step after the first moves fewer bytes than without the cache.
      for (int step = 1; step < kCacheSteps; ++step) {
        EXPECT_EQ(got.cached_after[step], (std::vector<int>{0, 1})) << "rank " << r << " step " << step;
        EXPECT_LT(got.step_bytes[step], plain[r].step_bytes[step]) << "rank " << r << " step " << step;
      }
      EXPECT_EQ(got.step_bytes[0], plain[r].step_bytes[0]) << "rank " << r;  // the traced step: no cache yet
      EXPECT_GT(got.hits, 0) << "rank " << r;
      // Hits of a step in the steady state against two-item caches simulated here on the same (repeating) trace:
      // no more than Belady's MIN with bypass (the optimum), more than LRU (which this trace defeats).
      const int64_t opt = simulated_hits(got.trace, 2, true), lru = simulated_hits(got.trace, 2, false);
      std::printf("[cache] rank %d: hits per step %lld (MIN %lld, LRU %lld)\n", r,
                  static_cast<long long>(got.step_hits.back()), static_cast<long long>(opt), static_cast<long long>(lru));
      EXPECT_LE(got.step_hits.back(), opt) << "rank " << r;
      EXPECT_GT(got.step_hits.back(), lru) << "rank " << r;
      EXPECT_EQ(plain[r].hits, 0) << "rank " << r;
    }
  }
}

// Bytes the process holds in malloc'ed memory (glibc's arena plus its mmapped blocks): chunk buffers, tier
// buffers and tensors alike, whichever allocator they came from.
int64_t heap_bytes() {
  const struct mallinfo2 mi = mallinfo2();
  return static_cast<int64_t>(mi.uordblks + mi.hblkhd);
}

// The growth of heap_bytes() over the forward of a `layers`-block model (recomputed blocks, one chunk each) with
// parameters and gradients all on nvme, one rank; the forward's graph still alive, as backward would find it.
int64_t forward_growth(int layers, const std::string& dir) {
  TinyModel model;
  model.layers = layers;
  model.h = 64;
  model.f = 256;  // a block: 33,088 elements (129 KiB); a recomputed block keeps its 8 × 64 input and RNG state
  model.recompute = true;
  const std::unique_ptr<TierStore> owned = tier_store(Tier::kNvme, dir);
  TierStore& store = *owned;
  ChunkManager::Options o;
  o.chunk_size = 2 * model.f * model.h + model.f + model.h;
  o.offload_fraction = 1;
  o.offload_grads = true;
  o.tier = &store;
  ChunkManager m(model.params(), o, nullptr);
  EXPECT_EQ(m.num_chunks(), layers);
  EXPECT_EQ(m.shard_params().numel(), 0);
  const auto init = model.init();
  for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
  auto [x, y] = model.batch(0);
  int64_t growth = 0;
  for (int step = 0; step < 2; ++step) {  // the second step finds the buffer cache warm, as in a run
    m.begin_step();
    const int64_t before = heap_bytes();
    at::Tensor loss = model.loss(m.params(), x, y, &m);
    growth = heap_bytes() - before;
    loss.backward();
    m.finish_backward();
    EXPECT_EQ(m.fetched_shard_bytes(), 0);
  }
  return growth;
}

TEST(ChunkZero3, OffloadedForwardHoldsMemoryIndependentOfDepth) {
  // Issue 4: with parameters, gradients and optimizer state on nvme, resident memory was reported to grow by one
  // block's parameters per block in forward. Eight blocks against four: what the four extra blocks add must be
  // their saved inputs, far below one block's 129 KiB of parameters each.
  test::TempDir dir("chunk-offload-depth");
  const int64_t four = forward_growth(4, dir.path()), eight = forward_growth(8, dir.path());
  const int64_t block_bytes = (2 * 256 * 64 + 256 + 64) * 4;
  std::printf("[depth] forward heap growth: 4 blocks %lld bytes, 8 blocks %lld bytes (a block: %lld)\n",
              static_cast<long long>(four), static_cast<long long>(eight), static_cast<long long>(block_bytes));
  EXPECT_LT(eight - four, 4 * block_bytes / 4);
}

TEST(ChunkZero3, UntiedOneChunkPerBlock) {
  TinyModel model;
  ChunkManager::Options o;
  o.chunk_size = 1006;
  expect_parity(model, o, 2, 1);
}

TEST(ChunkZero3, EvaluationForwardWithoutGradReleasesEverything) {
  TinyModel model;
  model.tied = true;
  const auto init = model.init();
  auto [x, y] = model.batch(0);
  test::run_thread_ranks(2, [&](dist::Comm& comm, int rank) {
    ChunkManager m(model.params(), two_chunks_per_block(model), &comm);
    for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
    at::NoGradGuard no_grad;
    const at::Tensor xs = x.narrow(0, rank * 4, 4), ys = y.narrow(0, rank * 4, 4);
    const at::Tensor got = model.loss(m.params(), xs, ys, &m);
    EXPECT_GT(m.gathered_bytes(), 0);  // the kept block 0
    m.release_all();
    EXPECT_EQ(m.gathered_bytes(), 0);
    EXPECT_FALSE(got.requires_grad());
    EXPECT_NEAR(got.item<double>(), model.loss(init, xs, ys, nullptr).item<double>(), 1e-6);
    EXPECT_EQ(comm.ledger().calls("dp", "reduce_scatter", dist::Phase::kBackward), 0);
  });
}

TEST(ChunkRelease, FreesStorageAndRegatherRestoresViewsAndSavedTensors) {
  TinyModel model;
  model.layers = 2;
  test::run_thread_ranks(2, [&](dist::Comm& comm, int rank) {
    ChunkManager::Options o;
    o.chunk_size = 1006;
    o.buffer_cache_bytes = 0;  // released memory really goes back to the allocator
    ChunkManager m(model.params(), o, &comm);
    const auto init = model.init();
    for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
    Chunk& c0 = m.chunk(0);
    EXPECT_EQ(c0.storage().nbytes(), 0u);  // built released
    EXPECT_EQ(m.gathered_bytes(), 0);

    m.before_forward(0);
    EXPECT_TRUE(c0.gathered());
    EXPECT_NE(m.chunk(1).residency(), Chunk::Residency::kReleased);  // prefetched
    EXPECT_EQ(c0.count(TensorState::kCompute), 4);
    const at::Tensor w1 = m.param(0);
    const at::Tensor view = w1.t().narrow(0, 3, 5);  // a strided view taken before the release
    EXPECT_TRUE(at::equal(view, init[0].t().narrow(0, 3, 5)));
    // A tensor autograd saves: w1 (for the gradient of x).
    at::Tensor x = at::randn({3, model.h}).set_requires_grad(true);
    at::Tensor out = m.pre_backward(0, x.mm(w1.t()));
    m.after_forward(0);
    EXPECT_EQ(c0.count(TensorState::kHold), 4);
    EXPECT_FALSE(c0.gathered());
    EXPECT_EQ(c0.storage().nbytes(), 0u);
    EXPECT_EQ(c0.storage().data(), nullptr);
    EXPECT_EQ(m.gathered_bytes(), m.chunk(1).nbytes());
    m.release_all();
    EXPECT_EQ(m.gathered_bytes(), 0);

    // New values while released: the re-gather must bring them, seen through the old view.
    at::Tensor w1_new = init[0] * 2 + 1;
    m.set_param(0, w1_new);
    c0.gather_async(dist::Phase::kOther);
    c0.wait_gather();
    EXPECT_EQ(c0.storage().nbytes(), static_cast<size_t>(c0.nbytes()));
    EXPECT_TRUE(at::equal(view, w1_new.t().narrow(0, 3, 5)));
    EXPECT_TRUE(at::equal(w1, w1_new));
    m.release_all();

    // Backward after the release: before_backward re-gathers; the saved w1 is read through the same storage
    // (no version-counter complaint, right values: dL/dx = 1·w1 for L = Σ out).
    out.sum().backward();
    EXPECT_TRUE(at::allclose(x.grad(), w1_new.sum(0).expand({3, model.h})));
    m.finish_backward();
    EXPECT_EQ(m.gathered_bytes(), 0);
    EXPECT_EQ(c0.storage().nbytes(), 0u);
    // dL/dw1 = Σ_rows x (every output row sums), averaged over the 2 ranks' different x; this rank's shard holds
    // its part. Checked through the whole gradient: all-gather the shards by hand.
    at::Tensor whole = at::empty({c0.capacity()});
    comm.all_gather(c0.grad_shard().contiguous(), whole);
    at::Tensor xs = at::empty({2, 3, model.h});
    comm.all_gather(x.detach().contiguous(), xs);
    at::Tensor want = (xs.sum(1).mean(0)).expand({model.f, model.h});
    EXPECT_TRUE(at::allclose(whole.narrow(0, 0, model.f * model.h).view({model.f, model.h}), want, 1e-5, 1e-6));
    EXPECT_TRUE(at::equal(whole.narrow(0, model.f * model.h, model.f), at::zeros({model.f})));  // b1 unused
    (void)rank;
  });
}

// Per step: bytes of the forward and backward all-gathers and the backward reduce-scatters, against 3Ψ.
void check_three_psi(int ranks) {
  TinyModel model;
  ChunkSearchOptions so;
  so.min_size = 512;
  so.max_size = 2048;
  so.step = 2;
  so.group_size = ranks;
  std::vector<int64_t> numels;
  std::vector<int> blocks;
  for (const auto& p : model.params()) {
    int64_t n = 1;
    for (int64_t s : p.shape) n *= s;
    numels.push_back(n);
    blocks.push_back(p.block);
  }
  const ChunkSearchResult found = search_chunk_size(numels, blocks, so);
  const int64_t psi = model.num_elements();
  test::run_thread_ranks(ranks, [&](dist::Comm& comm, int rank) {
    ChunkManager::Options o;
    o.chunk_size = found.chunk_size;
    ChunkManager m(model.params(), o, &comm);
    const auto init = model.init();
    for (int i = 0; i < m.num_params(); ++i) m.set_param(i, init[i]);
    const int64_t padded = m.layout().total_capacity();
    ASSERT_EQ(padded, psi + found.waste);
    auto& ledger = comm.ledger();
    for (int step = 0; step < 2; ++step) {
      auto [x, y] = model.batch(step);
      const int64_t rows = 8 / ranks;
      ledger.reset();
      m.begin_step();
      model.loss(m.params(), x.narrow(0, rank * rows, rows), y.narrow(0, rank * rows, rows), &m).backward();
      m.finish_backward();
      const int64_t chunks = m.num_chunks();
      using dist::Phase;
      EXPECT_EQ(ledger.calls("dp", "all_gather", Phase::kForward), chunks);
      EXPECT_EQ(ledger.calls("dp", "all_gather", Phase::kBackward), chunks);
      EXPECT_EQ(ledger.calls("dp", "reduce_scatter", Phase::kBackward), chunks);
      const int64_t bytes = ledger.bytes("dp", "all_gather", Phase::kForward) +
                            ledger.bytes("dp", "all_gather", Phase::kBackward) +
                            ledger.bytes("dp", "reduce_scatter", Phase::kBackward);
      EXPECT_EQ(bytes, ledger.total_bytes());  // nothing else moved
      // Each chunk of C elements moves (n−1)·4C/n bytes per collective, three times: exact with the padding.
      EXPECT_EQ(bytes, 3 * (ranks - 1) * 4 * padded / ranks);
      const double three_psi = 3.0 * (ranks - 1) * 4.0 * static_cast<double>(psi) / ranks;
      EXPECT_NEAR(bytes / three_psi, 1.0, 0.02);
      if (rank == 0 && step == 1)
        std::printf("[3psi] dp=%d chunk_size=%lld chunks=%lld psi=%lld padded=%lld bytes=%lld 3psi=%.0f ratio=%.5f\n",
                    ranks, static_cast<long long>(found.chunk_size), static_cast<long long>(chunks),
                    static_cast<long long>(psi), static_cast<long long>(padded), static_cast<long long>(bytes),
                    three_psi, bytes / three_psi);
      at::NoGradGuard no_grad;
      m.shard_params().sub_(m.shard_grads() * kLr);
    }
  });
}

TEST(ChunkZero3, LedgerShowsThreePsiPerStepTwoRanks) { check_three_psi(2); }
TEST(ChunkZero3, LedgerShowsThreePsiPerStepFourRanks) { check_three_psi(4); }

TEST(ChunkZero3, NextBlockGatherStartsBeforeTheBlockComputes) {
  TinyModel model;
  test::run_thread_ranks(2, [&](dist::Comm& comm, int rank) {
    ChunkManager::Options o;
    o.chunk_size = 1006;  // one chunk per block: forward all-gather k is block k's
    ChunkManager m(model.params(), o, &comm);
    ASSERT_EQ(m.num_chunks(), model.layers);
    auto [x, y] = model.batch(0);
    comm.ledger().reset();
    std::vector<std::pair<Clock::time_point, Clock::time_point>> times;
    m.begin_step();
    at::Tensor loss = model.loss(m.params(), x.narrow(0, rank * 4, 4), y.narrow(0, rank * 4, 4), &m, &times);
    loss.backward();
    m.finish_backward();
    std::vector<dist::Ledger::Event> gathers;
    for (const auto& e : comm.ledger().events())
      if (e.op == "all_gather" && e.phase == dist::Phase::kForward) gathers.push_back(e);
    ASSERT_EQ(gathers.size(), static_cast<size_t>(model.layers));
    ASSERT_EQ(times.size(), static_cast<size_t>(model.layers));
    for (int b = 0; b + 1 < model.layers; ++b) {
      EXPECT_LT(gathers[b + 1].start, times[b].first) << "block " << b + 1 << "'s gather was not prefetched";
      EXPECT_LT(gathers[b + 1].start, times[b].second);
    }
    // In backward, each block's gather is issued before the block after it (in backward order) ... is waited on:
    // one gather per block, the first for the last block.
    int backward_gathers = 0;
    for (const auto& e : comm.ledger().events())
      backward_gathers += e.op == "all_gather" && e.phase == dist::Phase::kBackward;
    EXPECT_EQ(backward_gathers, model.layers);
  });
}

TEST(ChunkZero3, UnusedParameterGetsZeroGradientAndEveryChunkIsReduced) {
  // Block 1 has a parameter the loss never uses: its chunk is reduced in finish_backward with a zero gradient.
  std::vector<ChunkParam> params = {{"a", {4, 4}, 0}, {"b", {4, 4}, 1}, {"unused", {6}, 1}};
  test::run_thread_ranks(2, [&](dist::Comm& comm, int rank) {
    ChunkManager::Options o;
    o.chunk_size = 64;
    ChunkManager m(params, o, &comm);
    for (int i = 0; i < 3; ++i) m.set_param(i, at::full(params[i].shape, 1.0f));
    m.begin_step();
    at::Tensor x = at::ones({2, 4});
    m.before_forward(0);
    at::Tensor a = m.pre_backward(0, x.mm(m.param(0)));
    m.after_forward(0);
    m.before_forward(1);
    at::Tensor b = m.pre_backward(1, a.mm(m.param(1)));
    m.after_forward(1);
    b.sum().backward();
    m.finish_backward();
    EXPECT_EQ(comm.ledger().calls("dp", "reduce_scatter", dist::Phase::kBackward), 2);
    const auto whole = m.whole_params();
    EXPECT_EQ(whole.size(), 3u);
    // 'unused' lies in chunk 1 after 'b' (16 elements): its gradient elements are zero on whichever rank owns them.
    at::Tensor g = at::empty({m.chunk(1).capacity()});
    comm.all_gather(m.chunk(1).grad_shard().contiguous(), g);
    EXPECT_TRUE(at::equal(g.narrow(0, 16, 6), at::zeros({6})));
    EXPECT_GT(g.narrow(0, 0, 16).abs().sum().item<float>(), 0.f);
    (void)rank;
  });
}

}  // namespace
}  // namespace kolos::memory
