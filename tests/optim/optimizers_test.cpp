// The optimizers of optim.name against float64 references of their published rules, written here per tensor with
// plain at::Tensor double math (SGD: torch.optim.SGD; LARS: You et al. 2017 Alg. 1; LAMB: You et al. 2020 Alg. 2;
// Lion: Chen et al. 2023 Alg. 1; AdamW: Loshchilov & Hutter), 10 steps on random tensors of several shapes:
//   whole   one rank updates every element (pieces_for_slots);
//   sharded three simulated ranks, each a thread, own chunks of two "buckets" cut at odd offsets (so a tensor is
//           split across ranks and a rank holds several runs), gradients and state shard-sized as at ZeRO-2; the
//           per-tensor squared norms are summed across the threads by a barrier reducer.
// Edge cases ride along in every run: a zero weight tensor, a zero gradient tensor, one that is zero in both (a
// zero update for LAMB), a norm/bias tensor (no decay, no adaptation) and a one-element tensor.
// Per tensor, ‖x − x_ref‖ / ‖x_ref‖ < 1e-6 after 10 steps (exactly 0 where x_ref is 0).
#include "kolos/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kolos/optim/adamw_kernel.h"

namespace kolos::optim {
namespace {

constexpr int kSteps = 10;
constexpr double kGradScale = 0.37;

enum class Fill { kRandom, kZero };

struct TensorCase {
  std::string name;
  std::vector<int64_t> shape;
  Fill weight = Fill::kRandom, grad = Fill::kRandom;
  bool decay = true, adapt = true;
};

const std::vector<TensorCase> kTensors = {
    {"a", {7, 13}},
    {"b", {64}},
    {"c", {5, 3, 11}},
    {"norm_bias", {19}, Fill::kRandom, Fill::kRandom, false, false},
    {"zero_weight", {4, 4}, Fill::kZero, Fill::kRandom},
    {"zero_grad", {9}, Fill::kRandom, Fill::kZero},
    {"zero_both", {6}, Fill::kZero, Fill::kZero},
    {"d", {33, 17}},
    {"one", {1}},
};

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The flat layout: every tensor 16-aligned with zero padding after it, as DataParallel packs them.
struct Layout {
  std::vector<FlatSlot> slots;
  int64_t total = 0;
};

Layout make_layout() {
  Layout l;
  int64_t pos = 0;
  for (const auto& t : kTensors) {
    FlatSlot s;
    s.name = t.name;
    s.offset = pos;
    s.shape = t.shape;
    s.numel = numel_of(t.shape);
    s.decay = t.decay;
    s.adapt = t.adapt;
    l.slots.push_back(s);
    pos = (pos + s.numel + 15) / 16 * 16;
  }
  l.total = pos;
  return l;
}

// Initial weights and the gradients of each step, float (what both sides start from), per tensor.
struct Data {
  std::vector<at::Tensor> weights;              // per tensor
  std::vector<std::vector<at::Tensor>> grads;   // per step, per tensor
};

Data make_data(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  Data d;
  for (const auto& t : kTensors)
    d.weights.push_back(t.weight == Fill::kZero ? at::zeros(t.shape, at::kFloat)
                                                : at::randn(t.shape, gen, at::kFloat) * 0.5);
  for (int s = 0; s < kSteps; ++s) {
    std::vector<at::Tensor> step;
    for (const auto& t : kTensors)
      step.push_back(t.grad == Fill::kZero ? at::zeros(t.shape, at::kFloat) : at::randn(t.shape, gen, at::kFloat));
    d.grads.push_back(step);
  }
  return d;
}

// ----- float64 references, one tensor at a time -----

double l2(const at::Tensor& x) { return x.norm().item<double>(); }

double ref_trust(double num, double den, const OptimConfig& c) {
  if (num == 0 || den == 0) return 1.0;
  double r = num / den;
  r = std::max(r, c.min_trust_ratio);
  if (c.max_trust_ratio > 0) r = std::min(r, c.max_trust_ratio);
  return r;
}

// Weights after kSteps of config's rule, per tensor (double).
std::vector<at::Tensor> reference(const OptimConfig& c, const Data& data, const std::vector<double>& lrs) {
  std::vector<at::Tensor> out;
  for (size_t k = 0; k < kTensors.size(); ++k) {
    const double wd = kTensors[k].decay ? c.weight_decay : 0.0;
    const bool adapt = kTensors[k].adapt;
    at::Tensor x = data.weights[k].to(at::kDouble);
    at::Tensor m = at::zeros_like(x), v = at::zeros_like(x);
    for (int s = 0; s < kSteps; ++s) {
      const double lr = lrs[s];
      const int t = s + 1;
      const at::Tensor g = data.grads[s][k].to(at::kDouble) * kGradScale;
      if (c.name == "sgd") {
        const at::Tensor d = g + wd * x;
        m = c.momentum * m + d;
        x = x - lr * (c.nesterov ? d + c.momentum * m : m);
      } else if (c.name == "lars") {
        const double local = adapt ? ref_trust(c.trust_coefficient * l2(x), l2(g) + wd * l2(x), c) : 1.0;
        m = c.momentum * m + lr * local * (g + wd * x);
        x = x - m;
      } else if (c.name == "lamb") {
        m = c.beta1 * m + (1 - c.beta1) * g;
        v = c.beta2 * v + (1 - c.beta2) * g * g;
        const double bc1 = c.bias_correction ? 1 - std::pow(c.beta1, t) : 1.0;
        const double bc2 = c.bias_correction ? 1 - std::pow(c.beta2, t) : 1.0;
        const at::Tensor u = (m / bc1) / ((v / bc2).sqrt() + c.eps) + wd * x;
        const double ratio = adapt ? ref_trust(l2(x), l2(u), c) : 1.0;
        x = x - lr * ratio * u;
      } else if (c.name == "lion") {
        const at::Tensor cc = c.beta1 * m + (1 - c.beta1) * g;
        x = x - lr * (cc.sign() + wd * x);
        m = c.beta2 * m + (1 - c.beta2) * g;
      } else if (c.name == "adamw") {
        m = c.beta1 * m + (1 - c.beta1) * g;
        v = c.beta2 * v + (1 - c.beta2) * g * g;
        const double bc1 = 1 - std::pow(c.beta1, t), bc2 = 1 - std::pow(c.beta2, t);
        x = x - lr * wd * x - lr * (m / bc1) / ((v / bc2).sqrt() + c.eps);
      } else {
        ADD_FAILURE() << "no reference for " << c.name;
      }
    }
    out.push_back(x);
  }
  return out;
}

// ----- the implementation under the two layouts -----

// Sums a vector over `ranks` threads: each calls reduce() with its partial sums and gets the total.
class ThreadSum {
 public:
  explicit ThreadSum(int ranks) : ranks_(ranks) {}
  void reduce(at::Tensor& t) {
    std::unique_lock<std::mutex> lock(mu_);
    if (arrived_ == 0) acc_ = at::zeros_like(t);
    acc_ += t;
    const int generation = generation_;
    if (++arrived_ == ranks_) {
      arrived_ = 0;
      ++generation_;
      result_ = acc_.clone();
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
    t.copy_(result_);
  }

 private:
  int ranks_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0, generation_ = 0;
  at::Tensor acc_, result_;
};

void write_grads(at::Tensor& flat, const Layout& l, const std::vector<at::Tensor>& grads) {
  for (size_t k = 0; k < l.slots.size(); ++k)
    flat.narrow(0, l.slots[k].offset, l.slots[k].numel).copy_(grads[k].reshape({-1}));
}

std::vector<at::Tensor> unpack(const at::Tensor& flat, const Layout& l) {
  std::vector<at::Tensor> out;
  for (const auto& s : l.slots) out.push_back(flat.narrow(0, s.offset, s.numel).view(s.shape).clone());
  return out;
}

at::Tensor initial_params(const Layout& l, const Data& data) {
  at::Tensor params = at::zeros({l.total}, at::kFloat);
  for (size_t k = 0; k < l.slots.size(); ++k)
    params.narrow(0, l.slots[k].offset, l.slots[k].numel).copy_(data.weights[k].reshape({-1}));
  return params;
}

std::vector<at::Tensor> run_whole(const OptimConfig& c, const Data& data, const std::vector<double>& lrs) {
  const Layout l = make_layout();
  OptimizerBuffers b;
  b.params = initial_params(l, data);
  b.grads = at::zeros({l.total}, at::kFloat);
  b.state_numel = l.total;
  b.pieces = pieces_for_slots(l.slots, c.weight_decay);
  b.num_tensors = static_cast<int64_t>(l.slots.size());
  at::Tensor params = b.params, grads = b.grads;
  auto opt = make_optimizer(c, b);
  EXPECT_STREQ(opt->name(), c.name.c_str());
  for (int s = 0; s < kSteps; ++s) {
    write_grads(grads, l, data.grads[s]);
    opt->step(lrs[s], kGradScale);
  }
  EXPECT_EQ(opt->step_count(), kSteps);
  // Padding stays zero.
  at::Tensor mask = at::ones({l.total}, at::kBool);
  for (const auto& sl : l.slots) mask.narrow(0, sl.offset, sl.numel).fill_(false);
  EXPECT_EQ(params.masked_select(mask).abs().sum().item<double>(), 0.0);
  return unpack(params, l);
}

// Chunks of the flat range [lo, hi) and the rank owning each.
struct Chunk {
  int64_t lo, hi;
  int rank;
  int64_t state_offset = 0;  // in the owner's shard
};

std::vector<Chunk> zero_chunks(const Layout& l, int ranks) {
  // Two buckets (the first ends after zero_weight's padding), each cut into `ranks` chunks at odd offsets.
  const int64_t split = l.slots[5].offset;
  std::vector<Chunk> chunks;
  for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, split}, {split, l.total}}) {
    std::vector<int64_t> cuts = {lo};
    for (int r = 1; r < ranks; ++r) cuts.push_back(lo + (hi - lo) * r / ranks + (r % 2 ? 5 : -3));
    cuts.push_back(hi);
    for (int r = 0; r < ranks; ++r) chunks.push_back({cuts[r], cuts[r + 1], r});
  }
  return chunks;
}

std::vector<at::Tensor> run_sharded(const OptimConfig& c, const Data& data, const std::vector<double>& lrs,
                                    int ranks) {
  const Layout l = make_layout();
  auto chunks = zero_chunks(l, ranks);
  std::vector<int64_t> shard_numel(ranks, 0);
  for (auto& ch : chunks) {
    ch.state_offset = shard_numel[ch.rank];
    shard_numel[ch.rank] += ch.hi - ch.lo;
  }
  at::Tensor params = initial_params(l, data);
  ThreadSum sum(ranks);
  std::vector<std::unique_ptr<Optimizer>> opts;
  std::vector<at::Tensor> grad_shards;
  int split_tensors = 0;
  for (int r = 0; r < ranks; ++r) {
    OptimizerBuffers b;
    b.params = params;
    b.grads = at::zeros({shard_numel[r]}, at::kFloat);
    b.state_numel = shard_numel[r];
    b.num_tensors = static_cast<int64_t>(l.slots.size());
    for (const auto& ch : chunks) {
      if (ch.rank != r) continue;
      for (size_t k = 0; k < l.slots.size(); ++k) {
        const int64_t start = l.slots[k].offset, end = k + 1 < l.slots.size() ? l.slots[k + 1].offset : l.total;
        const int64_t s = std::max(start, ch.lo), e = std::min(end, ch.hi);
        if (s >= e) continue;
        if (s > start || e < end) ++split_tensors;
        const int64_t state = ch.state_offset + (s - ch.lo);
        b.pieces.push_back({s, state, state, e - s, l.slots[k].decay ? c.weight_decay : 0.0,
                            static_cast<int64_t>(k), l.slots[k].adapt});
      }
    }
    b.norm_reducers.push_back([&sum](at::Tensor& t) { sum.reduce(t); });
    grad_shards.push_back(b.grads);
    opts.push_back(make_optimizer(c, b));
  }
  EXPECT_GE(split_tensors, 4) << "the chunks should split tensors across ranks";
  at::Tensor full_grads = at::zeros({l.total}, at::kFloat);
  for (int s = 0; s < kSteps; ++s) {
    write_grads(full_grads, l, data.grads[s]);
    for (const auto& ch : chunks)
      grad_shards[ch.rank].narrow(0, ch.state_offset, ch.hi - ch.lo).copy_(full_grads.narrow(0, ch.lo, ch.hi - ch.lo));
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r) threads.emplace_back([&, r] { opts[r]->step(lrs[s], kGradScale); });
    for (auto& t : threads) t.join();
  }
  return unpack(params, l);
}

// Largest per-tensor ‖x − ref‖ / ‖ref‖ (a tensor whose reference is zero must be exactly zero).
double max_rel_error(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& ref, const std::string& what) {
  double worst = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    const double d = l2(got[k].to(at::kDouble) - ref[k]), r = l2(ref[k]);
    if (r == 0) {
      EXPECT_EQ(d, 0.0) << what << " tensor " << kTensors[k].name;
      continue;
    }
    EXPECT_LT(d / r, 1e-6) << what << " tensor " << kTensors[k].name;
    worst = std::max(worst, d / r);
  }
  return worst;
}

// A warmup-like schedule, so that the learning rate inside LARS's momentum matters.
std::vector<double> schedule(double lr) {
  std::vector<double> lrs;
  for (int s = 0; s < kSteps; ++s) lrs.push_back(lr * std::min(1.0, (s + 1) / 4.0));
  return lrs;
}

void check(const OptimConfig& c, const std::string& label, uint64_t seed = 7) {
  SCOPED_TRACE(label);
  const Data data = make_data(seed);
  const auto lrs = schedule(c.lr);
  const auto ref = reference(c, data, lrs);
  // The rule moves the weights: the comparison is not of the initial values with themselves.
  double moved = 0;
  for (size_t k = 0; k < ref.size(); ++k) moved = std::max(moved, l2(ref[k] - data.weights[k].to(at::kDouble)));
  EXPECT_GT(moved, 1e-3);
  const double whole = max_rel_error(run_whole(c, data, lrs), ref, label + " whole");
  const double sharded = max_rel_error(run_sharded(c, data, lrs, 3), ref, label + " sharded");
  std::printf("[optim] %-40s max rel error: whole %.3g, sharded %.3g\n", label.c_str(), whole, sharded);
}

OptimConfig config(const std::string& name) {
  OptimConfig c;
  c.name = name;
  c.weight_decay = 0.05;
  return c;
}

TEST(Optimizers, SgdMatchesFloat64Reference) {
  OptimConfig c = config("sgd");
  c.lr = 0.05;
  c.momentum = 0.9;
  check(c, "sgd momentum 0.9");
  c.nesterov = true;
  check(c, "sgd nesterov");
  c.momentum = 0;
  c.nesterov = false;
  check(c, "sgd plain");
}

TEST(Optimizers, LarsMatchesFloat64Reference) {
  OptimConfig c = config("lars");
  c.lr = 1.0;
  c.momentum = 0.9;
  c.trust_coefficient = 0.02;
  check(c, "lars");
  c.max_trust_ratio = 0.005;  // binds for most tensors
  c.min_trust_ratio = 0.001;
  check(c, "lars clamped");
  c.momentum = 0;
  c.weight_decay = 0;
  check(c, "lars no momentum, no decay");
}

TEST(Optimizers, LambMatchesFloat64Reference) {
  OptimConfig c = config("lamb");
  c.lr = 0.01;
  c.beta2 = 0.999;
  c.eps = 1e-6;
  check(c, "lamb bias correction");
  c.bias_correction = false;
  c.min_trust_ratio = 0.01;
  c.max_trust_ratio = 1.5;
  check(c, "lamb no bias correction, clamped");
  c.weight_decay = 0;
  check(c, "lamb no decay");
}

TEST(Optimizers, LionMatchesFloat64Reference) {
  OptimConfig c = config("lion");
  c.lr = 3e-3;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.weight_decay = 0.5;
  check(c, "lion");
}

TEST(Optimizers, AdamWMatchesFloat64Reference) {
  OptimConfig c = config("adamw");
  c.lr = 1e-2;
  c.eps = 1e-6;
  check(c, "adamw");
}

TEST(Optimizers, AdamWThroughTheInterfaceIsTheKernelBitForBit) {
  const Layout l = make_layout();
  const Data data = make_data(11);
  OptimConfig c = config("adamw");
  at::Tensor params = initial_params(l, data), grads = at::zeros({l.total}, at::kFloat);
  std::vector<FlatSlot> slots = l.slots;
  for (auto& s : slots) s.decay = true;  // one weight decay: the pieces merge into one run
  OptimizerBuffers b{params, grads, l.total, pieces_for_slots(slots, c.weight_decay), 9, {}};
  auto opt = make_optimizer(c, b);
  at::Tensor p2 = initial_params(l, data), m2 = at::zeros({l.total}), v2 = at::zeros({l.total});
  const int64_t end = l.slots.back().offset + l.slots.back().numel;
  for (int s = 0; s < kSteps; ++s) {
    write_grads(grads, l, data.grads[s]);
    opt->step(1e-2, kGradScale);
    AdamWStepArgs a;
    a.lr = 1e-2f;
    a.beta1 = float(c.beta1);
    a.beta2 = float(c.beta2);
    a.eps = float(c.eps);
    a.weight_decay = float(c.weight_decay);
    a.grad_scale = float(kGradScale);
    a.bias_correction1 = float(1.0 - std::pow(c.beta1, s + 1));
    a.bias_correction2 = float(1.0 - std::pow(c.beta2, s + 1));
    adamw_step_fp32(p2.data_ptr<float>(), grads.data_ptr<float>(), m2.data_ptr<float>(), v2.data_ptr<float>(), end, a);
  }
  EXPECT_TRUE(at::equal(params, p2));
  ASSERT_EQ(opt->state().size(), 2u);
  EXPECT_EQ(opt->state()[0].first, "exp_avg");
  EXPECT_TRUE(at::equal(opt->state()[0].second, m2));
  EXPECT_TRUE(at::equal(opt->state()[1].second, v2));
}

TEST(Optimizers, StateNamesAndCounts) {
  const std::map<std::string, std::vector<std::string>> expected = {
      {"adamw", {"exp_avg", "exp_avg_sq"}}, {"lamb", {"exp_avg", "exp_avg_sq"}}, {"sgd", {"momentum"}},
      {"lars", {"momentum"}}, {"lion", {"momentum"}}};
  for (const auto& [name, states] : expected) {
    OptimConfig c = config(name);
    OptimizerBuffers b{at::zeros({32}), at::zeros({32}), 32, {{0, 0, 0, 32, 0.0, 0, true}}, 1, {}};
    auto opt = make_optimizer(c, b);
    ASSERT_EQ(opt->state().size(), states.size()) << name;
    EXPECT_EQ(state_buffers(c), static_cast<int64_t>(states.size())) << name;
    for (size_t i = 0; i < states.size(); ++i) EXPECT_EQ(opt->state()[i].first, states[i]) << name;
    EXPECT_EQ(rule_options(c)["name"], name);
  }
  OptimConfig plain = config("sgd");
  plain.momentum = 0;
  EXPECT_EQ(state_buffers(plain), 0);
  OptimizerBuffers b{at::zeros({8}), at::zeros({8}), 8, {}, 1, {}};
  EXPECT_TRUE(make_optimizer(plain, b)->state().empty());
}

TEST(Optimizers, TrustRatioIsOneWhenANormIsZeroAndClampedOtherwise) {
  EXPECT_EQ(trust_ratio(0, 2, 0.5, 10), 1.0);
  EXPECT_EQ(trust_ratio(3, 0, 0.5, 10), 1.0);
  EXPECT_EQ(trust_ratio(3, 2, 0, 0), 1.5);
  EXPECT_EQ(trust_ratio(30, 2, 0, 10), 10.0);
  EXPECT_EQ(trust_ratio(1, 20, 0.1, 10), 0.1);
}

}  // namespace
}  // namespace kolos::optim
