// Static offload: the streamed optimizer step (memory/offload.h) over a tail of state and parameters on the host or
// nvme tier equals, bit for bit, the plain step with everything resident — for every element-wise rule, windows
// that do and do not divide the range, with and without offloaded parameter shards; the state reads back and
// writes out whole (checkpoints); the offloaded range starts where offload_begin says.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>

#include "kolos/memory/offload.h"
#include "kolos/memory/tiers.h"
#include "kolos/optim/optimizer.h"
#include "tests/support.h"

namespace kolos::memory {
namespace {

constexpr int64_t kN = 10000;  // state elements: not a multiple of kAlignElements

// Four tensors with alternating weight decay (the plain pieces of a flat layout), cut at the shard boundaries
// 4000 and 7000 as ZeRO-3's pieces are at chunk boundaries.
std::vector<optim::Piece> pieces() {
  std::vector<optim::FlatSlot> slots = {{"a", 0, {2500}, 2500, true, true},
                                        {"b", 2500, {100}, 100, false, true},
                                        {"c", 2600, {4700}, 4700, true, true},
                                        {"d", 7300, {2700}, 2700, false, true}};
  std::vector<optim::Piece> out;
  for (optim::Piece p : optim::pieces_for_slots(slots, 0.1)) {
    for (int64_t cut : {4000, 7000}) {
      if (p.param_offset < cut && cut < p.param_offset + p.numel) {
        optim::Piece head = p;
        head.numel = cut - p.param_offset;
        out.push_back(head);
        p.param_offset = p.grad_offset = p.state_offset = cut;
        p.numel -= head.numel;
      }
    }
    out.push_back(p);
  }
  return out;
}

OptimConfig rule(const std::string& name) {
  OptimConfig c;
  c.name = name;
  c.beta1 = 0.9;
  c.beta2 = name == "lion" ? 0.99 : 0.999;
  c.eps = 1e-8;
  c.momentum = 0.9;
  c.nesterov = name == "sgd";
  return c;
}

std::unique_ptr<optim::Optimizer> make(const OptimConfig& config, const at::Tensor& params, const at::Tensor& grads,
                                       int64_t resident_state, int64_t resident_params, int64_t resident_grads = -1) {
  optim::OptimizerBuffers ob;
  ob.resident_grads = resident_grads;
  ob.params = params;
  ob.grads = grads;
  ob.state_numel = kN;
  ob.pieces = pieces();
  ob.num_tensors = 4;
  ob.resident_state = resident_state;
  ob.resident_params = resident_params;
  return optim::make_optimizer(config, std::move(ob));
}

// Whole region contents as floats (numel of them).
at::Tensor read_region(TierStore& store, const TierRegion& region, int64_t numel) {
  AlignedBuffer buf(region.bytes);
  store.wait(store.read(region, 0, buf.data(), region.bytes));
  at::Tensor out = at::empty({numel}, at::kFloat);
  std::memcpy(out.data_ptr<float>(), buf.data(), static_cast<size_t>(numel * 4));
  return out;
}

void write_region(TierStore& store, const TierRegion& region, const at::Tensor& values) {
  AlignedBuffer buf(region.bytes);
  std::memset(buf.data(), 0, static_cast<size_t>(region.bytes));
  std::memcpy(buf.data(), values.contiguous().data_ptr<float>(), static_cast<size_t>(values.numel() * 4));
  store.wait(store.write(region, 0, buf.data(), region.bytes));
}

TierStore::Options store_options(Tier tier, const std::string& dir) {
  TierStore::Options o;
  o.tier = tier;
  o.nvme_path = dir;
  o.grow_step = 1 << 20;
  return o;
}

void check_streamed_equals_plain(const std::string& name, Tier tier, int64_t window, bool with_shards) {
  SCOPED_TRACE(name + " on " + tier_name(tier) + ", window " + std::to_string(window) +
               (with_shards ? ", parameters offloaded" : ""));
  test::TempDir dir("offload");
  TierStore store(store_options(tier, dir.path()));
  const OptimConfig config = rule(name);
  at::manual_seed(7);
  const at::Tensor init = at::randn({kN});
  const at::Tensor grads = at::zeros({kN});

  at::Tensor plain_params = init.clone();
  auto plain = make(config, plain_params, grads, -1, -1);

  // Shards [4000, 7000) and [7000, 10000) on the tier (like ZeRO-3's trailing chunks), or none.
  std::vector<TierShard> shards;
  if (with_shards)
    for (auto [begin, numel] : {std::pair<int64_t, int64_t>{4000, 3000}, {7000, 3000}}) {
      shards.push_back({begin, numel, store.allocate(numel * 4)});
      write_region(store, shards.back().region, init.narrow(0, begin, numel));
    }
  const int64_t resident_params = with_shards ? 4000 : kN;
  const int64_t state_begin = offload_begin(kN, 0.45, shards);
  at::Tensor head = init.narrow(0, 0, resident_params).clone();
  auto streamed = make(config, head, grads, state_begin, resident_params);
  StreamedStep::Options so;
  so.window_elements = window;
  StreamedStep step(*streamed, store, state_begin, shards, so);
  for (const auto& [kind, buffer] : streamed->state()) EXPECT_EQ(buffer.numel(), state_begin) << kind;

  for (int s = 0; s < 5; ++s) {
    grads.copy_(at::randn({kN}));
    const double lr = 1e-2 * (s + 1), scale = 0.5 + 0.25 * s;
    plain->step(lr, scale);
    step.step(lr, scale);
  }
  EXPECT_EQ(streamed->step_count(), plain->step_count());
  EXPECT_TRUE(at::equal(head, plain_params.narrow(0, 0, resident_params)));
  for (const auto& sh : shards)
    EXPECT_TRUE(at::equal(read_region(store, sh.region, sh.numel), plain_params.narrow(0, sh.begin, sh.numel)))
        << "shard at " << sh.begin;
  ASSERT_EQ(streamed->state().size(), plain->state().size());
  for (size_t k = 0; k < plain->state().size(); ++k) {
    EXPECT_TRUE(at::equal(step.read_state(static_cast<int>(k)), plain->state()[k].second)) << "state " << k;
    // A checkpoint's way back: written out whole, read back whole.
    const at::Tensor values = at::randn({kN});
    step.write_state(static_cast<int>(k), values);
    EXPECT_TRUE(at::equal(step.read_state(static_cast<int>(k)), values)) << "state " << k;
  }
  EXPECT_GT(store.moves(), 0);
  EXPECT_GT(store.bytes_moved(), 0);
}

TEST(StreamedStep, BitIdenticalToThePlainStepForEveryElementwiseRule) {
  for (const char* name : {"adamw", "sgd", "lion"})
    for (Tier tier : {Tier::kHost, Tier::kNvme}) {
      check_streamed_equals_plain(name, tier, 3 * kAlignElements, false);  // 3072: does not divide the range
      check_streamed_equals_plain(name, tier, 3 * kAlignElements, true);
    }
}

TEST(StreamedStep, WindowSizesOneBlockAndLargerThanTheRange) {
  for (int64_t window : {kAlignElements, 2 * kAlignElements, int64_t{1} << 20})
    for (bool shards : {false, true}) check_streamed_equals_plain("adamw", Tier::kNvme, window, shards);
}

TEST(StreamedStep, OverlappedStepSettlesShardByShardAndEqualsThePlainStep) {
  // Everything on nvme (parameters, gradients, state: ZeRO-3 with offload_grads), three shards. step() returns
  // with the windows still streaming on the worker; the shards are read back one by one, each after settle(), while
  // the worker goes on with the later ones (the next forward's gathers), and the gradients of the next step are
  // written each after settle() (the next backward). Five steps, bit-identical to the plain step.
  test::TempDir dir("offload");
  TierStore store(store_options(Tier::kNvme, dir.path()));
  const OptimConfig config = rule("adamw");
  at::manual_seed(11);
  const at::Tensor init = at::randn({kN});
  const at::Tensor grads = at::zeros({kN});
  at::Tensor plain_params = init.clone();
  auto plain = make(config, plain_params, grads, -1, -1);

  std::vector<TierShard> shards;
  for (auto [begin, numel] : {std::pair<int64_t, int64_t>{0, 4000}, {4000, 3000}, {7000, 3000}}) {
    shards.push_back({begin, numel, store.allocate(numel * 4), store.allocate(numel * 4)});
    write_region(store, shards.back().region, init.narrow(0, begin, numel));
  }
  const at::Tensor none = at::empty({0});
  auto streamed = make(config, none, none, 0, 0, 0);
  StreamedStep::Options so;
  so.window_elements = kAlignElements;  // several windows a shard: settling happens mid-step
  so.overlap = true;
  StreamedStep step(*streamed, store, 0, shards, so);
  ASSERT_TRUE(step.overlappable());

  for (int s = 0; s < 5; ++s) {
    SCOPED_TRACE("step " + std::to_string(s));
    grads.copy_(at::randn({kN}));
    for (size_t i = 0; i < shards.size(); ++i) {
      step.settle(static_cast<int>(i));
      write_region(store, shards[i].grad_region, grads.narrow(0, shards[i].begin, shards[i].numel));
    }
    const double lr = 1e-2 * (s + 1), scale = 0.5 + 0.25 * s;
    plain->step(lr, scale);
    step.step(lr, scale);
    EXPECT_TRUE(step.in_flight());  // returned without waiting for the windows
    for (size_t i = 0; i < shards.size(); ++i) {
      step.settle(static_cast<int>(i));
      EXPECT_TRUE(at::equal(read_region(store, shards[i].region, shards[i].numel),
                            plain_params.narrow(0, shards[i].begin, shards[i].numel)))
          << "shard " << i;
    }
  }
  step.finish();
  EXPECT_FALSE(step.in_flight());
  EXPECT_EQ(streamed->step_count(), plain->step_count());
  for (size_t k = 0; k < plain->state().size(); ++k)
    EXPECT_TRUE(at::equal(step.read_state(static_cast<int>(k)), plain->state()[k].second)) << "state " << k;

  // A shard whose gradient is resident cannot overlap (the next backward would write it under the worker).
  std::vector<TierShard> resident_grads = {{0, kN, store.allocate(kN * 4), {}}};
  auto other = make(config, none, grads, 0, 0);
  EXPECT_FALSE(StreamedStep(*other, store, 0, resident_grads, so).overlappable());
}

TEST(StreamedStep, OffloadBeginIsAlignedFromItsShard) {
  EXPECT_EQ(offload_begin(kN, 0), kN);
  EXPECT_EQ(offload_begin(kN, 1), 0);
  EXPECT_EQ(offload_begin(kN, 0.45), 5120);  // 10000 − 4500 = 5500, down to 5 × 1024
  const std::vector<TierShard> shards = {{4000, 3000, {}}, {7000, 3000, {}}};
  EXPECT_EQ(offload_begin(kN, 0.45, shards), 4000 + 1024);  // 1500 into the shard at 4000, down to 1024
  EXPECT_EQ(offload_begin(kN, 0.2, shards), 7000);  // 8000 is 1000 into the shard at 7000: down to its start
}

TEST(StreamedStep, RulesWithWholeTensorNormsAreNotElementwise) {
  const at::Tensor p = at::zeros({kN}), g = at::zeros({kN});
  for (const char* name : {"lars", "lamb"}) EXPECT_FALSE(make(rule(name), p, g, -1, -1)->elementwise()) << name;
  for (const char* name : {"adamw", "sgd", "lion"}) EXPECT_TRUE(make(rule(name), p, g, -1, -1)->elementwise()) << name;
}

}  // namespace
}  // namespace kolos::memory
