#include "kolos/parallel/data/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>

#include <fmt/ranges.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>

#include "kolos/core/error.h"
#include "kolos/core/units.h"
#include "kolos/memory/chunk_search.h"
#include "kolos/optim/norm.h"

namespace kolos::parallel {

namespace {

constexpr int64_t kAlign = 16;  // floats: 64 bytes

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Elements of this tp rank's piece of the parameter.
int64_t local_numel(const nn::ParamSpec& spec, const nn::TpLayout& tp) {
  int64_t n = 1;
  for (int64_t d : spec.local_shape(tp)) n *= d;
  return n;
}

bool in_first_block(const std::string& name) { return name.rfind("h.0.", 0) == 0 || name.rfind("layers.0.", 0) == 0; }

}  // namespace

nlohmann::json ShardReport::to_json() const {
  return {{"flat_numel", flat_numel}, {"param_numel", param_numel}, {"param_elements", param_elements}, {"grad_numel", grad_numel},
          {"optim_numel", optim_numel}, {"optim_states", optim_states}, {"buckets", buckets}, {"kept_chunks", kept_chunks}};
}

// Runs after the parameter's AccumulateGrad node: the parameter's gradient for this backward is complete.
class DataParallel::ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(DataParallel* owner, int param) : owner_(owner), param_(param) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    owner_->on_grad_ready(param_);
    return outputs;
  }

 private:
  DataParallel* owner_;
  int param_;
};

DataParallel::DataParallel(models::Model& model, const Config& config, const Plan& plan,
                           dist::Comm* dp_comm, dist::Comm* tp_comm)
    : model_(model), config_(config), comm_(dp_comm), tp_comm_(tp_comm) {
  if (tp_comm_ && tp_comm_->size() > 1) {
    tp_ = tp_comm_->size();
    tp_rank_ = tp_comm_->rank();
  }
  tp_layout_ = model_.sharding().layout();
  KOLOS_ASSERT(model_.sharding().parts == tp_, "the model is sharded {} ways, the tp Comm has {} ranks",
               model_.sharding().parts, tp_);
  if (comm_ && comm_->size() > 1) {
    dp_ = comm_->size();
    rank_ = comm_->rank();
    zero_ = plan.zero;
  }
  // One rank: ZeRO 1 and 2 have nothing to shard, but ZeRO-3's chunks still stream the model block by block (each
  // chunk whole on this rank), which is what parameter and gradient offload build on.
  if (plan.zero == 3) zero_ = 3;
  KOLOS_ASSERT(dp_ == plan.dp * plan.sp || dp_ == 1, "the data Comm has {} ranks, the plan dp × sp = {} × {}", dp_,
               plan.dp, plan.sp);
  specs_ = model_.param_specs();
  const auto& specs = specs_;
  build_layout(specs);
  if (zero_ == 3) {
    KOLOS_ASSERT(tp_ == 1 && model_.segments().empty(), "ZeRO-3 with tensor or pipeline parallelism");
    build_chunked();
    return;
  }

  const int64_t total = buckets_.empty() ? 0 : buckets_.back().offset + buckets_.back().numel;
  // At zero >= 1 the parameters are all-gathered after each step: in place when the peers share this machine.
  flat_params_ = zero_ > 0 ? comm_->shared_zeros(total, at::kFloat) : at::zeros({total}, at::kFloat);
  // In memory the dp peers map when they share this machine: the reductions then read the gradients where
  // autograd accumulated them (Comm::shared_zeros).
  if (zero_ < 2) flat_grads_ = dp_ > 1 ? comm_->shared_zeros(total, at::kFloat) : at::zeros({total}, at::kFloat);
  shard_numel_ = total / dp_;
  if (zero_ == 2) grad_shard_ = at::zeros({shard_numel_}, at::kFloat);
  fp16_ = config_.train.dtype == "fp16";
  if (fp16_ && zero_ < 2) half_grads_ = at::zeros({total}, at::kHalf);

  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& slot = slots_[i];
    at::Tensor p = flat_params_.narrow(0, slot.offset, slot.numel).view(slot.shape);
    // Initialised on the global shape; this tp rank keeps its piece.
    p.copy_(nn::shard_param(nn::init_param(specs[i], config_.train.seed), specs[i], tp_layout_, tp_rank_));
    p.set_requires_grad(true);
    if (zero_ < 2) p.mutable_grad() = flat_grads_.narrow(0, slot.offset, slot.numel).view(slot.shape);
    params_.push_back(p);
  }
  model_.bind_params(params_);

  // The hooks. The accumulator is held here: a parameter keeps only a weak reference to it.
  for (size_t i = 0; i < params_.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    KOLOS_ASSERT(acc, "parameter {} has no gradient accumulator", slots_[i].name);
    acc->add_post_hook(std::make_unique<ReadyHook>(this, static_cast<int>(i)));
    accumulators_.push_back(std::move(acc));
  }

  // The optimizer's pieces: everything (zero 0), or this rank's chunk of every bucket, one piece per parameter.
  const double wd = config_.optim.weight_decay;
  optim::OptimizerBuffers ob;
  ob.params = flat_params_;
  ob.num_tensors = static_cast<int64_t>(slots_.size());
  if (zero_ == 0) {
    ob.grads = flat_grads_;
    ob.state_numel = total;
    ob.pieces = optim::pieces_for_slots(slots_, wd);
  } else {
    ob.grads = zero_ == 2 ? grad_shard_ : flat_grads_;
    ob.state_numel = shard_numel_;
    for (const auto& b : buckets_) {
      const int64_t lo = chunk_offset(b), hi = lo + b.numel / dp_;
      for (int i = b.first_param; i < b.end_param; ++i) {
        // The parameter's range extended over the padding after it (zero, updated harmlessly).
        const int64_t start = slots_[i].offset;
        const int64_t end = i + 1 < b.end_param ? slots_[i + 1].offset : b.offset + b.numel;
        const int64_t s = std::max(start, lo), e = std::min(end, hi);
        if (s >= e) continue;
        const int64_t state = b.shard_offset + (s - lo);
        ob.pieces.push_back({s, zero_ == 2 ? state : s, state, e - s, slots_[i].decay ? wd : 0.0, i, slots_[i].adapt});
      }
    }
    // Whole-tensor norms: a tensor's pieces may lie on several dp ranks.
    ob.norm_reducers.push_back([this](at::Tensor& sums) {
      dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOptimizer);
      comm_->all_reduce(sums);
    });
  }
  if (tp_ > 1) {
    // ... and the tensors split over tp are summed over the tp ranks too (the replicated ones are not), each piece
    // once: 2.5D's layers above depth 0 hold copies of depth 0's pieces and add nothing.
    ob.norm_reducers.push_back([this](at::Tensor& sums) {
      at::Tensor split = sums.clone();
      const bool counted = tp_layout_.counts_pieces(tp_rank_);
      for (size_t t = 0; t < specs_.size(); ++t)
        if (!counted || !nn::split_over_tp(specs_[t], tp_layout_))
          split.narrow(0, 2 * static_cast<int64_t>(t), 2).zero_();
      dist::Ledger::PhaseScope phase(tp_comm_->ledger(), dist::Phase::kOptimizer);
      tp_comm_->all_reduce(split);
      for (size_t t = 0; t < specs_.size(); ++t)
        if (nn::split_over_tp(specs_[t], tp_layout_)) sums.narrow(0, 2 * static_cast<int64_t>(t), 2).copy_(split.narrow(0, 2 * t, 2));
    });
  }
  pieces_ = ob.pieces;
  grad_buffer_ = ob.grads;
  sequence_sliced_ = tp_ > 1 && plan.megatron_sp;
  build_optimizer(std::move(ob));
}

void DataParallel::build_optimizer(optim::OptimizerBuffers ob) {
  const auto& mc = config_.memory;
  const std::vector<memory::TierShard> shards = chunks_ ? chunks_->offloaded_shards() : std::vector<memory::TierShard>{};
  const double optim_frac = optim::state_buffers(config_.optim) == 0 ? 0.0 : auto_placement() ? 1.0 : mc.offload_optim_frac;
  const int64_t state_begin = memory::offload_begin(ob.state_numel, optim_frac, shards);
  if (!tier_ && state_begin < ob.state_numel) tier_ = memory::TierStore::from_config(mc, rank_);
  ob.resident_state = state_begin;
  if (chunks_) ob.resident_params = chunks_->shard_params().numel();
  if (chunks_) ob.resident_grads = chunks_->shard_grads().numel();
  optimizer_ = optim::make_optimizer(config_.optim, std::move(ob));
  // ZeRO-3 (memory.overlap_step): the step's IO overlaps the next forward where every streamed shard's gradient is
  // on the tier (memory/offload.h "The overlapped step"); the chunk manager's gathers wait for their shards.
  memory::StreamedStep::Options so;
  so.overlap = chunks_ != nullptr && mc.overlap_step;
  if (tier_) streamed_ = std::make_unique<memory::StreamedStep>(*optimizer_, *tier_, state_begin, shards, so);
  if (auto_placement())  // the optimizer's visits are uses of the shard cache, and fill it
    streamed_->set_param_cache([m = chunks_.get()](int shard) { return m->optimizer_visit(shard); });
  if (so.overlap && streamed_ && streamed_->overlappable())
    chunks_->set_update_fence([s = streamed_.get()](int shard) { s->settle(shard); });
}

bool DataParallel::auto_placement() const { return config_.memory.placement == "auto" && chunks_ != nullptr; }

at::Tensor DataParallel::state_buffer(size_t k) {
  return streamed_ ? streamed_->read_state(static_cast<int>(k)) : optimizer_->state().at(k).second;
}

void DataParallel::set_state_buffer(size_t k, const at::Tensor& values) {
  if (streamed_) {
    streamed_->write_state(static_cast<int>(k), values);
    return;
  }
  at::Tensor dst = optimizer_->state().at(k).second;  // shares the optimizer's buffer
  dst.copy_(values);
}

DataParallel::MemoryFigures DataParallel::memory_figures() const {
  MemoryFigures f;
  const auto bytes = [](const at::Tensor& t) { return t.defined() ? t.numel() * 4 : int64_t{0}; };
  if (chunks_) {
    f.compute = bytes(chunks_->shard_params()) + chunks_->fetched_shard_bytes() + bytes(chunks_->shard_grads());
  } else {
    f.compute = bytes(flat_params_) + bytes(flat_grads_) + bytes(grad_shard_);
  }
  f.compute += optimizer_->state_numel() * 4 + (streamed_ ? streamed_->staging_bytes() : 0);
  if (tier_) {
    (tier_->tier() == memory::Tier::kNvme ? f.nvme : f.host) = tier_->allocated_bytes();
    f.moves = tier_->moves();
    f.io_bytes = tier_->bytes_moved();
    f.io_wait_ms = tier_->wait_ms() + (streamed_ ? streamed_->settle_wait_ms() : 0.0);
  }
  if (chunks_) {
    f.cached = chunks_->shard_cache_bytes();
    f.cache_hits = chunks_->cache_hits();
  }
  return f;
}

DataParallel::~DataParallel() {
  if (chunks_) model_.set_block_hooks({});
  try {
    finish_optimizer_step();  // its worker copies into the chunk manager's cached shards
  } catch (...) {
    // A full disk: reported by whoever waited first, or the run is already failing.
  }
  try {
    for (auto& p : in_flight_) p.handle.wait();
  } catch (...) {
    // A failed peer: the error was (or will be) reported by whoever waited first.
  }
  // The hooks point at this object. accumulators_ holds their only strong references (a parameter keeps a weak
  // one), so they go with it: a later backward through the model builds fresh accumulators without hooks.
}

void DataParallel::build_layout(const std::vector<nn::ParamSpec>& specs) {
  const int n = static_cast<int>(specs.size());
  KOLOS_ASSERT(n > 0, "a model without parameters");
  const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(config_.parallel.bucket_mb * 1048576.0 / 4.0));
  // Group from the last parameter backwards; a bucket closes once it reaches the cap.
  std::vector<std::pair<int, int>> ranges;  // [first, end)
  int end = n;
  int64_t size = 0;
  for (int i = n - 1; i >= 0; --i) {
    size += round_up(local_numel(specs[i], tp_layout_), kAlign);
    if (size >= cap || i == 0) {
      ranges.emplace_back(i, end);
      end = i;
      size = 0;
    }
  }
  std::reverse(ranges.begin(), ranges.end());  // flat order
  int64_t offset = 0, shard = 0;
  bucket_of_.assign(n, 0);
  slots_.resize(n);
  for (size_t b = 0; b < ranges.size(); ++b) {
    Bucket bucket;
    bucket.offset = offset;
    bucket.first_param = ranges[b].first;
    bucket.end_param = ranges[b].second;
    int64_t pos = offset;
    for (int i = bucket.first_param; i < bucket.end_param; ++i) {
      const auto& s = specs[i];
      const bool decay = s.is_embedding ? config_.optim.decay_embeddings
                                        : (s.decay || config_.optim.decay_norms_biases);
      // Norms and biases: the specs without decay that are not embeddings.
      const bool adapt = s.decay || s.is_embedding || config_.optim.adapt_norms_biases;
      slots_[i] = {s.name, pos, s.local_shape(tp_layout_), local_numel(s, tp_layout_), decay, adapt};
      bucket_of_[i] = static_cast<int>(b);
      pos = round_up(pos + local_numel(s, tp_layout_), kAlign);
    }
    bucket.numel = round_up(pos - offset, kAlign * dp_);
    bucket.shard_offset = shard;
    shard += bucket.numel / dp_;
    offset += bucket.numel;
    buckets_.push_back(bucket);
  }
  is_first_block_.resize(n);
  for (int i = 0; i < n; ++i) is_first_block_[i] = in_first_block(specs[i].name);
  held_.assign(n, false);
  norm_excluded_.assign(n, false);
}

void DataParallel::build_chunked() {
  // Blocks in forward order (Model::set_block_hooks); the manager takes the parameters block by block, in spec
  // order within a block.
  const int n = static_cast<int>(specs_.size());
  const int num_blocks = static_cast<int>(model_.config().layers) + 2;
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::vector<int> block_of(n);
  for (int i = 0; i < n; ++i) block_of[i] = model_.param_block(specs_[i].name);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return block_of[a] < block_of[b]; });
  std::vector<memory::ChunkParam> cps;
  std::vector<int64_t> numels;
  std::vector<int> blocks;
  chunk_param_.assign(n, -1);
  std::vector<int64_t> block_numel(num_blocks, 0);
  for (int k = 0; k < n; ++k) {
    const auto& spec = specs_[order[k]];
    chunk_param_[order[k]] = k;
    cps.push_back({spec.name, spec.shape, block_of[order[k]]});
    numels.push_back(local_numel(spec, 1));
    blocks.push_back(block_of[order[k]]);
    block_numel[block_of[order[k]]] += numels.back();
  }
  // Chunk size (memory/chunk_search.h): candidates from the largest block / 256 (at least 256, at most 1 Mi
  // elements) to the largest block (chunks never span blocks, so a larger chunk only pads more; capped at 32 Mi
  // elements, 128 MiB fp32), at most ~2048 of them. Small candidates pad least (the large tensors get dedicated
  // chunks of their exact size) but cost more, smaller collectives; of the candidates whose padding is within 1% of
  // the parameters (or the least padding when none is), the one with the fewest chunks, then the least padding,
  // then the smallest.
  const int64_t total_numel = std::accumulate(numels.begin(), numels.end(), int64_t{0});
  const int64_t largest_block = *std::max_element(block_numel.begin(), block_numel.end());
  memory::ChunkSearchOptions so;
  so.group_size = dp_;
  so.max_size = std::max<int64_t>(1, std::min<int64_t>(largest_block, int64_t{32} << 20));
  so.min_size = std::min(so.max_size, std::clamp<int64_t>(largest_block / 256, 256, int64_t{1} << 20));
  so.step = std::max<int64_t>(1, (so.max_size - so.min_size) / 2048);
  const memory::ChunkSearchResult found = memory::search_chunk_size(numels, blocks, so);
  const int64_t allowed = std::max(found.waste, total_numel / 100);
  memory::ChunkSearchResult::Candidate pick{found.chunk_size, found.waste, found.chunks};
  for (const auto& c : found.candidates)
    if (c.waste <= allowed && std::tie(c.chunks, c.waste, c.chunk_size) < std::tie(pick.chunks, pick.waste, pick.chunk_size))
      pick = c;
  memory::ChunkManager::Options mo;
  mo.chunk_size = pick.chunk_size;
  const bool automatic = config_.memory.placement == "auto";
  if (config_.memory.offload_param_frac > 0 || automatic) {  // master shards on the tier (the optimizer streams them)
    tier_ = memory::TierStore::from_config(config_.memory, rank_);
    mo.offload_fraction = automatic ? 1.0 : config_.memory.offload_param_frac;
    mo.tier = tier_.get();
    mo.offload_grads = automatic || config_.memory.offload_grads;
  }
  const std::string tied = model_.tied_embedding();
  if (!tied.empty()) mo.keep_gathered.push_back(model_.param_block(tied));
  chunks_ = std::make_unique<memory::ChunkManager>(std::move(cps), mo, comm_);
  buckets_.clear();  // the flat layout's buckets do not exist here: the chunks take their place (report())
  int64_t shard = 0;
  for (int c = 0; c < chunks_->num_chunks(); ++c) {
    chunk_shard_offset_.push_back(shard);
    shard += chunks_->chunk(c).shard_numel();
    for (int b : mo.keep_gathered)
      if (chunks_->chunk(c).block() == b) ++kept_chunks_;
  }
  shard_numel_ = shard;

  // Every parameter from (seed, name) on its global shape; this rank keeps its shard.
  std::vector<int> spec_of(n);  // manager index -> spec index
  for (int i = 0; i < n; ++i) spec_of[chunk_param_[i]] = i;
  chunks_->set_params([&](int k) { return nn::init_param(specs_[spec_of[k]], config_.train.seed); });
  for (int i = 0; i < n; ++i) params_.push_back(chunks_->param(chunk_param_[i]));
  model_.bind_params(params_);

  memory::ChunkManager* m = chunks_.get();
  const int head = num_blocks - 1;
  models::Model::BlockHooks hooks;
  hooks.before = [this, m](int b) {
    m->before_forward(b);
    if (record_blocks_ && at::GradMode::is_enabled()) block_forward_start_.at(b) = Clock::now();
  };
  hooks.after = [m, head](int b) {
    m->after_forward(b);
    // A forward without backward (evaluation, sampling): nothing stays gathered after the head.
    if (b == head && !at::GradMode::is_enabled()) m->release_all();
  };
  hooks.pre_backward = [m](int b, const at::Tensor& y) { return m->pre_backward(b, y); };
  model_.set_block_hooks(std::move(hooks));

  const double wd = config_.optim.weight_decay;
  std::vector<double> decay(n);
  std::vector<bool> adapt(n);
  for (int i = 0; i < n; ++i) {
    decay[chunk_param_[i]] = slots_[i].decay ? wd : 0.0;
    adapt[chunk_param_[i]] = slots_[i].adapt;
  }
  optim::OptimizerBuffers ob;
  ob.params = chunks_->shard_params();
  ob.grads = chunks_->shard_grads();
  ob.state_numel = shard_numel_;
  ob.num_tensors = n;
  ob.pieces = chunks_->optimizer_pieces(decay, adapt);
  if (dp_ > 1)
    ob.norm_reducers.push_back([this](at::Tensor& sums) {
      dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOptimizer);
      comm_->all_reduce(sums);
    });
  pieces_ = ob.pieces;
  grad_buffer_ = ob.grads;
  build_optimizer(std::move(ob));
}

std::vector<at::Tensor> DataParallel::gather_chunks(const at::Tensor& shard) {
  std::vector<at::Tensor> out;
  if (dp_ == 1) {  // each shard is its whole chunk
    for (int c = 0; c < chunks_->num_chunks(); ++c)
      out.push_back(shard.narrow(0, chunk_shard_offset_[c], chunks_->chunk(c).capacity()).clone());
    return out;
  }
  std::vector<dist::Handle> handles;
  dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOther);
  for (int c = 0; c < chunks_->num_chunks(); ++c) {
    const auto& ch = chunks_->chunk(c);
    out.push_back(at::empty({ch.capacity()}, at::kFloat));
    handles.push_back(comm_->all_gather_async(shard.narrow(0, chunk_shard_offset_[c], ch.shard_numel()), out.back()));
  }
  for (auto& h : handles) h.wait();
  return out;
}

std::vector<int> DataParallel::chunk_blocks() const {
  std::vector<int> out;
  if (chunks_)
    for (int c = 0; c < chunks_->num_chunks(); ++c) out.push_back(chunks_->chunk(c).block());
  return out;
}

int DataParallel::param_index(const std::string& name) const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) return static_cast<int>(i);
  return -1;
}

void DataParallel::begin_step() {
  if (chunks_) {
    chunks_->begin_step();
    return;
  }
  if (flat_grads_.defined()) flat_grads_.zero_();
  if (grad_shard_.defined()) grad_shard_.zero_();
  for (auto& p : params_)
    if (zero_ == 2) p.mutable_grad().reset();
}

void DataParallel::begin_micro(int64_t micro, int64_t num_micro) {
  if (chunks_) {  // every micro-step reduces (the manager's hooks)
    record_blocks_ = micro == num_micro - 1;
    if (record_blocks_) block_forward_start_.assign(model_.config().layers + 2, Clock::time_point{});
    return;
  }
  // Reduce on the last micro-step only, except at zero 2 (every micro-step: gradients stay sharded). One rank:
  // never (nothing to reduce) — but the hooks still run so the readiness trace works the same.
  armed_ = zero_ == 2 || micro == num_micro - 1;
  last_micro_ = micro == num_micro - 1;
  pending_params_.assign(buckets_.size(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) pending_params_[b] = buckets_[b].end_param - buckets_[b].first_param;
  param_ready_.assign(params_.size(), false);
  next_launch_ = static_cast<int>(buckets_.size()) - 1;
  if (armed_) first_block_ready_ = Clock::time_point{};
}

void DataParallel::on_grad_ready(int param) {
  if (!armed_ || param_ready_[param] || held_[param]) return;
  param_ready_[param] = true;
  if (is_first_block_[param] && first_block_ready_ == Clock::time_point{}) first_block_ready_ = Clock::now();
  --pending_params_[bucket_of_[param]];
  launch_ready_buckets();
}

void DataParallel::launch_ready_buckets() {
  // In bucket order only, so every rank issues the same collectives in the same order.
  while (next_launch_ >= 0 && pending_params_[next_launch_] == 0) launch(next_launch_--);
}

void DataParallel::launch(int index) {
  const Bucket& b = buckets_[index];
  if (inject_inf_ && zero_ < 2) {
    flat_grads_[b.offset].fill_(std::numeric_limits<float>::infinity());
    inject_inf_ = false;
  }
  if (dp_ == 1) {
    if (fp16_) {  // rounded through fp16 as a reduction would store it
      at::Tensor g = flat_grads_.narrow(0, b.offset, b.numel), h = half_grads_.narrow(0, b.offset, b.numel);
      h.copy_(g);
      g.copy_(h);
    }
    return;
  }
  dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kBackward);
  const int64_t chunk = b.numel / dp_;
  const at::Tensor inv_dp = at::scalar_tensor(1.0 / dp_, at::kFloat);
  Pending p;
  if (fp16_ && zero_ < 2) {
    // The average as a sum of the ranks' gradients divided by dp first (the fp16 sum then stays in range).
    at::Tensor h = half_grads_.narrow(0, b.offset, b.numel);
    at::mul_out(h, flat_grads_.narrow(0, b.offset, b.numel), inv_dp);
    if (zero_ == 0) {
      p.handle = comm_->all_reduce_async(h, dist::ReduceOp::kSum);
      p.half = h;
      p.dest = flat_grads_.narrow(0, b.offset, b.numel);
    } else {
      p.half = half_grads_.narrow(0, chunk_offset(b), chunk);
      p.handle = comm_->reduce_scatter_async(h, p.half, dist::ReduceOp::kSum);
      p.dest = flat_grads_.narrow(0, chunk_offset(b), chunk);
    }
  } else if (zero_ == 0) {
    p.handle = comm_->all_reduce_async(flat_grads_.narrow(0, b.offset, b.numel), dist::ReduceOp::kAvg);
  } else if (zero_ == 1) {
    // The chunk of the input is also the output: the all-to-all reads the input before the local sum writes it.
    p.handle = comm_->reduce_scatter_async(flat_grads_.narrow(0, b.offset, b.numel),
                                           flat_grads_.narrow(0, chunk_offset(b), chunk), dist::ReduceOp::kAvg);
  } else {
    at::NoGradGuard no_grad;
    p.staging = at::empty({b.numel}, at::kFloat);
    int64_t pos = b.offset;
    for (int i = b.first_param; i < b.end_param; ++i) {
      const auto& s = slots_[i];
      if (s.offset > pos) p.staging.narrow(0, pos - b.offset, s.offset - pos).zero_();
      at::Tensor dst = p.staging.narrow(0, s.offset - b.offset, s.numel);
      at::Tensor& g = params_[i].mutable_grad();
      if (g.defined()) {
        dst.copy_(g.reshape({-1}));
        g.reset();
      } else {
        dst.zero_();
      }
      pos = s.offset + s.numel;
    }
    if (b.offset + b.numel > pos) p.staging.narrow(0, pos - b.offset, b.offset + b.numel - pos).zero_();
    if (inject_inf_) {
      p.staging[0].fill_(std::numeric_limits<float>::infinity());
      inject_inf_ = false;
    }
    p.shard_offset = b.shard_offset;
    if (fp16_) {
      at::Tensor staging = at::empty({b.numel}, at::kHalf);
      at::mul_out(staging, p.staging, inv_dp);
      p.staging = staging;
      p.half = at::empty({chunk}, at::kHalf);
      p.dest = grad_shard_.narrow(0, b.shard_offset, chunk);
      p.handle = comm_->reduce_scatter_async(p.staging, p.half, dist::ReduceOp::kSum);
    } else {
      p.result = at::empty({chunk}, at::kFloat);
      p.handle = comm_->reduce_scatter_async(p.staging, p.result, dist::ReduceOp::kAvg);
    }
  }
  in_flight_.push_back(std::move(p));
}

void DataParallel::end_micro() {
  if (chunks_) {
    chunks_->finish_backward();
    return;
  }
  if (armed_) {
    // Parameters that got no gradient in this backward: their (zero or accumulated) gradient is final as it is.
    for (size_t i = 0; i < params_.size(); ++i)
      if (!param_ready_[i]) {
        param_ready_[i] = true;
        --pending_params_[bucket_of_[i]];
      }
    launch_ready_buckets();
    KOLOS_ASSERT(next_launch_ < 0, "bucket {} was not launched", next_launch_);
  }
  armed_ = false;
  for (auto& p : in_flight_) {
    p.handle.wait();
    if (p.result.defined()) grad_shard_.narrow(0, p.shard_offset, p.result.numel()).add_(p.result);
    if (p.half.defined()) {
      if (zero_ == 2) {
        p.dest.add_(p.half);  // micro-steps accumulate into the shard
      } else {
        p.dest.copy_(p.half);
      }
    }
  }
  in_flight_.clear();
  if (last_micro_ && sequence_sliced_) reduce_sequence_sliced();
}

void DataParallel::reduce_sequence_sliced() {
  // Megatron-SP: each tp rank applied these parameters to its slice of the sequence only. The tp ranks hold the
  // same layout, so the same pieces of the optimizer's gradient buffer: one all-reduce of all of them.
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  for (const auto& piece : pieces_)
    if (specs_[piece.tensor].sequence_sliced) parts.push_back(grad_buffer_.narrow(0, piece.grad_offset, piece.numel));
  if (parts.empty()) return;
  at::Tensor packed = at::cat(parts);
  {
    dist::Ledger::PhaseScope phase(tp_comm_->ledger(), dist::Phase::kBackward);
    tp_comm_->all_reduce(packed);
  }
  int64_t at = 0;
  for (auto& part : parts) {
    part.copy_(packed.narrow(0, at, part.numel()));
    at += part.numel();
  }
}

void DataParallel::finish_optimizer_step() {
  if (streamed_) streamed_->finish();
}

double DataParallel::grad_norm() {
  finish_optimizer_step();  // settled by the forward's gathers already; joined here
  at::NoGradGuard no_grad;
  const bool excluding = std::find(norm_excluded_.begin(), norm_excluded_.end(), true) != norm_excluded_.end();
  if (tp_ > 1 || excluding) {
    // Split tensors summed over the tp ranks (each piece once: not 2.5D's copies above depth 0), replicated ones
    // counted once; then over the dp shards.
    double split = 0, replicated = 0;
    for (const auto& piece : pieces_) {
      if (norm_excluded_[piece.tensor]) continue;
      const double sq = optim::sum_of_squares(grad_buffer_.narrow(0, piece.grad_offset, piece.numel));
      (nn::split_over_tp(specs_[piece.tensor], tp_layout_) ? split : replicated) += sq;
    }
    at::Tensor split_sum = at::full({1}, tp_layout_.counts_pieces(tp_rank_) ? split : 0.0, at::kDouble);
    if (tp_ > 1) {
      dist::Ledger::PhaseScope phase(tp_comm_->ledger(), dist::Phase::kOptimizer);
      tp_comm_->all_reduce(split_sum);
    }
    at::Tensor total = at::full({1}, split_sum.item<double>() + replicated, at::kDouble);
    if (zero_ > 0) {
      dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOptimizer);
      comm_->all_reduce(total);
    }
    return std::sqrt(total.item<double>());
  }
  if (zero_ == 0) return std::sqrt(optim::sum_of_squares(flat_grads_));
  double sq = 0;
  if (zero_ == 3) {
    sq = chunks_->grad_sum_of_squares();  // the padding's gradient is zero
    if (dp_ == 1) return std::sqrt(sq);
  } else if (zero_ == 1) {
    for (const auto& b : buckets_) sq += optim::sum_of_squares(flat_grads_.narrow(0, chunk_offset(b), b.numel / dp_));
  } else {
    sq = optim::sum_of_squares(grad_shard_);
  }
  dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOptimizer);
  at::Tensor t = at::full({1}, sq, at::kDouble);
  comm_->all_reduce(t);
  return std::sqrt(t.item<double>());
}

void DataParallel::optimizer_step(double lr, double grad_scale) {
  if (streamed_) {
    streamed_->step(lr, grad_scale);
  } else {
    optimizer_->step(lr, grad_scale);
  }
  if (auto_placement()) {
    // memory.placement = "auto". The first step records the trace; the first two run with no shard cached (the
    // second finds the buffer cache and the heap as every later step will) and peak at peak_rss_bytes(). What the
    // budget leaves above that, less a margin (1/16 of the budget, at least 16 MiB), holds cached shards from the
    // third step on. Should a later peak still come within half the margin of the budget, the cache shrinks by
    // the excess.
    const int64_t budget = parse_bytes(config_.memory.budget, "config key memory.budget");
    const int64_t margin = std::max<int64_t>(int64_t{16} << 20, budget / 16), peak = peak_rss_bytes();
    ++auto_steps_;
    if (auto_steps_ == 2) {
      chunks_->set_cache_capacity(test_cache_bytes_ >= 0 ? test_cache_bytes_ : budget - peak - margin);
    } else if (auto_steps_ > 2 && test_cache_bytes_ < 0 && peak > budget - margin / 2) {
      chunks_->set_cache_capacity(chunks_->cache_capacity() - (peak - (budget - margin / 2)) - margin / 2);
    }
  }
  if (zero_ == 0 || zero_ == 3) return;  // zero 3: the next forward gathers the updated shards
  dist::Ledger::PhaseScope phase(comm_->ledger(), dist::Phase::kOptimizer);
  std::vector<dist::Handle> handles;
  for (const auto& b : buckets_)
    handles.push_back(comm_->all_gather_async(flat_params_.narrow(0, chunk_offset(b), b.numel / dp_),
                                              flat_params_.narrow(0, b.offset, b.numel)));
  for (auto& h : handles) h.wait();
}

at::Tensor DataParallel::gather_flat(const at::Tensor& shard) {
  const int64_t total = buckets_.back().offset + buckets_.back().numel;
  at::Tensor full = at::zeros({total}, at::kFloat);
  std::vector<dist::Handle> handles;
  for (const auto& b : buckets_)
    handles.push_back(comm_->all_gather_async(shard.narrow(0, b.shard_offset, b.numel / dp_),
                                              full.narrow(0, b.offset, b.numel)));
  for (auto& h : handles) h.wait();
  return full;
}

std::vector<std::pair<std::string, at::Tensor>> DataParallel::optimizer_state() {
  if (chunks_) {
    std::vector<std::vector<at::Tensor>> whole;  // per state buffer: the whole chunks
    for (size_t k = 0; k < optimizer_->state().size(); ++k) whole.push_back(gather_chunks(state_buffer(k)));
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (size_t i = 0; i < specs_.size(); ++i) {
      const auto& slot = chunks_->layout().slots[chunk_param_[i]];
      for (size_t k = 0; k < whole.size(); ++k)
        out.emplace_back(optimizer_->state()[k].first + "." + specs_[i].name,
                         whole[k][slot.chunk].narrow(0, slot.offset, slots_[i].numel).view(specs_[i].shape).clone());
    }
    return out;
  }
  std::vector<at::Tensor> flat;
  for (size_t k = 0; k < optimizer_->state().size(); ++k)
    flat.push_back(zero_ > 0 ? gather_flat(state_buffer(k)) : state_buffer(k));
  // Parameter by parameter, its state buffers in the optimizer's order.
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < slots_.size(); ++i)
    for (size_t k = 0; k < flat.size(); ++k)
      out.emplace_back(optimizer_->state()[k].first + "." + slots_[i].name,
                       whole_across_tp(flat[k].narrow(0, slots_[i].offset, slots_[i].numel).view(slots_[i].shape), i));
  return out;
}

void DataParallel::load_optimizer_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                        int64_t step_count) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  const int64_t total = buckets_.empty() ? 0 : buckets_.back().offset + buckets_.back().numel;
  for (size_t k = 0; k < optimizer_->state().size(); ++k) {
    const std::string kind = optimizer_->state()[k].first;
    at::Tensor target = at::zeros({optimizer_->buffer_numel()}, at::kFloat);  // then set_state_buffer
    if (chunks_) {
      // Whole chunks from the whole tensors; this rank keeps its shard of each.
      std::vector<at::Tensor> whole;
      for (int c = 0; c < chunks_->num_chunks(); ++c) whole.push_back(at::zeros({chunks_->chunk(c).capacity()}, at::kFloat));
      for (size_t i = 0; i < specs_.size(); ++i) {
        const std::string name = fmt::format("{}.{}", kind, specs_[i].name);
        auto it = by_name.find(name);
        KOLOS_CHECK(it != by_name.end(), "optimizer state: tensor {} is missing (optim.name = \"{}\")", name,
                    optimizer_->name());
        KOLOS_CHECK(it->second.sizes() == at::IntArrayRef(specs_[i].shape) && it->second.scalar_type() == at::kFloat,
                    "optimizer state: tensor {} has shape {} ({}), expected {} (float32)", name,
                    fmt::join(it->second.sizes(), "x"), c10::toString(it->second.scalar_type()),
                    fmt::join(specs_[i].shape, "x"));
        const auto& slot = chunks_->layout().slots[chunk_param_[i]];
        whole[slot.chunk].narrow(0, slot.offset, slots_[i].numel).copy_(it->second.reshape({-1}));
      }
      for (int c = 0; c < chunks_->num_chunks(); ++c) {
        const auto& ch = chunks_->chunk(c);
        target.narrow(0, chunk_shard_offset_[c], ch.shard_numel()).copy_(whole[c].narrow(0, ch.shard_begin(), ch.shard_numel()));
      }
      set_state_buffer(k, target);
      continue;
    }
    at::Tensor full = at::zeros({total}, at::kFloat);
    for (const auto& s : slots_) {
      const std::string name = fmt::format("{}.{}", kind, s.name);
      auto it = by_name.find(name);
      KOLOS_CHECK(it != by_name.end(), "optimizer state: tensor {} is missing (optim.name = \"{}\")", name,
                  optimizer_->name());
      const auto& spec = specs_[&s - slots_.data()];
      KOLOS_CHECK(it->second.sizes() == at::IntArrayRef(spec.shape) && it->second.scalar_type() == at::kFloat,
                  "optimizer state: tensor {} has shape {} ({}), expected {} (float32)", name,
                  fmt::join(it->second.sizes(), "x"), c10::toString(it->second.scalar_type()),
                  fmt::join(spec.shape, "x"));
      full.narrow(0, s.offset, s.numel).copy_(nn::shard_param(it->second, spec, tp_layout_, tp_rank_).reshape({-1}));
    }
    if (zero_ == 0) {
      target.copy_(full);
    } else {
      for (const auto& b : buckets_)
        target.narrow(0, b.shard_offset, b.numel / dp_).copy_(full.narrow(0, chunk_offset(b), b.numel / dp_));
    }
    set_state_buffer(k, target);
  }
  optimizer_->set_step_count(step_count);
}

at::Tensor DataParallel::whole_across_tp(const at::Tensor& piece, size_t param) {
  const auto& spec = specs_[param];
  if (!nn::split_over_tp(spec, tp_layout_)) return piece;
  at::Tensor gathered = at::empty({tp_ * piece.numel()}, piece.options());
  {
    dist::Ledger::PhaseScope phase(tp_comm_->ledger(), dist::Phase::kOther);
    tp_comm_->all_gather(piece.contiguous(), gathered);
  }
  std::vector<at::Tensor> pieces;
  for (int r = 0; r < tp_; ++r) pieces.push_back(gathered.narrow(0, r * piece.numel(), piece.numel()).view(piece.sizes()));
  return nn::unshard_param(pieces, spec, tp_layout_);
}

std::vector<std::pair<std::string, at::Tensor>> DataParallel::whole_params() {
  at::NoGradGuard no_grad;
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (chunks_) {
    std::vector<at::Tensor> whole = chunks_->whole_params();
    for (size_t i = 0; i < specs_.size(); ++i) out.emplace_back(specs_[i].name, whole[chunk_param_[i]]);
    return out;
  }
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back(specs_[i].name, whole_across_tp(params_[i].detach(), i));
  return out;
}

void DataParallel::load_whole_params(const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& spec = specs_[i];
    auto it = tensors.find(spec.name);
    KOLOS_CHECK(it != tensors.end(), "{} lacks parameter {}", source, spec.name);
    KOLOS_CHECK(it->second.sizes() == at::IntArrayRef(spec.shape) && it->second.scalar_type() == at::kFloat,
                "{}: parameter {} has shape {} ({}), expected {} (float32)", source, spec.name,
                fmt::join(it->second.sizes(), "x"), c10::toString(it->second.scalar_type()), fmt::join(spec.shape, "x"));
    if (chunks_) {
      chunks_->set_param(chunk_param_[i], it->second);
    } else {
      params_[i].copy_(nn::shard_param(it->second, spec, tp_layout_, tp_rank_));
    }
  }
}

ShardReport DataParallel::report() const {
  ShardReport r;
  if (chunks_) {
    r.flat_numel = chunks_->layout().total_capacity();
    r.param_numel = chunks_->shard_params().numel();
    for (const auto& slot : slots_) r.param_elements += slot.numel;
    r.grad_numel = chunks_->shard_grads().numel();
    r.optim_numel = optimizer_->state_numel();
    r.optim_states = static_cast<int64_t>(optimizer_->state().size());
    r.buckets = chunks_->num_chunks();
    r.kept_chunks = kept_chunks_;
    return r;
  }
  r.flat_numel = flat_params_.numel();
  r.param_numel = flat_params_.numel();
  for (const auto& slot : slots_) r.param_elements += slot.numel;
  r.grad_numel = zero_ == 2 ? grad_shard_.numel() : flat_grads_.numel();
  r.optim_numel = optimizer_->state_numel();
  r.optim_states = static_cast<int64_t>(optimizer_->state().size());
  r.buckets = static_cast<int64_t>(buckets_.size());
  return r;
}

}  // namespace kolos::parallel
