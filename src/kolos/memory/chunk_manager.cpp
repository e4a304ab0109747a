#include "kolos/memory/chunk_manager.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>

#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>

#include "kolos/core/error.h"
#include "kolos/optim/norm.h"

namespace kolos::memory {

namespace {

using torch::autograd::variable_list;

// The identity on a block's output: its backward runs before any node of the block's own backward (they are
// reachable only through this output), so the block's chunks are gathered (and the previous block's prefetched)
// just in time.
class PreBackward : public torch::autograd::Node {
 public:
  PreBackward(ChunkManager* manager, int block) : manager_(manager), block_(block) {}
  std::string name() const override { return "kolos::memory::PreBackward"; }
  variable_list apply(variable_list&& grads) override {
    manager_->before_backward(block_);
    return std::move(grads);
  }

 private:
  ChunkManager* manager_;
  int block_;
};

// An aligned buffer (for O_DIRECT reads into it) of align_up(bytes) bytes as a DataPtr that frees it.
c10::DataPtr aligned_data_ptr(int64_t bytes) {
  auto* buffer = new AlignedBuffer(bytes);
  void* data = buffer->data();
  return c10::DataPtr(data, buffer, [](void* ctx) { delete static_cast<AlignedBuffer*>(ctx); },
                      c10::Device(c10::kCPU));
}

// Page-aligned (kIoAlignment) CPU memory, sizes rounded up to it: the chunk buffers double as O_DIRECT targets of
// the offloaded shards and gradients (which take their buffers from the same cache). Buffers of kMapBytes and more
// are mapped and unmapped on their own: kolos's main() keeps freed memory in a heap it never trims (warm pages for
// activations), where buffers of 100+ MB, freed and taken in a different order, fragment it until the peak RSS
// passes a memory budget (a 2B model under 2 GiB peaked 100 MiB over it).
class PageAlignedAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kMapBytes = size_t{32} << 20;
  struct Mapping {
    void* data;
    size_t bytes;
  };
  c10::DataPtr allocate(size_t nbytes) const override {
    const auto bytes = static_cast<size_t>(align_up(static_cast<int64_t>(nbytes)));
    if (bytes >= kMapBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      KOLOS_CHECK(p != MAP_FAILED, "out of memory mapping {} bytes for a chunk", nbytes);
      return {p, new Mapping{p, bytes}, &unmap, c10::Device(c10::kCPU)};
    }
    void* p = std::aligned_alloc(kIoAlignment, bytes);
    KOLOS_CHECK(p != nullptr || nbytes == 0, "out of memory allocating {} bytes for a chunk", nbytes);
    return {p, p, &std::free, c10::Device(c10::kCPU)};
  }

 private:
  static void unmap(void* ctx) {
    auto* m = static_cast<Mapping*>(ctx);
    munmap(m->data, m->bytes);
    delete m;
  }
};

c10::Allocator* page_aligned_allocator() {
  static PageAlignedAllocator allocator;
  return &allocator;
}

// A tensor of `numel` fp32 on a storage of its own (aligned, for O_DIRECT), which an offloaded shard swaps memory in
// and out of (nbytes 0 between uses: free_storage, or return_storage to a cache).
at::Tensor own_storage_tensor(int64_t numel, c10::Storage* storage) {
  *storage = c10::Storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(numel * 4), aligned_data_ptr(numel * 4),
                          /*allocator=*/nullptr, /*resizable=*/false);
  at::Tensor t = at::empty({0}, at::kFloat);
  t.set_(*storage, 0, {numel}, {1});
  return t;
}

void free_storage(c10::Storage& storage) {
  auto* impl = storage.unsafeGetStorageImpl();
  impl->set_data_ptr_noswap(c10::DataPtr(nullptr, c10::Device(c10::kCPU)));
  impl->set_nbytes(0);
}

// Memory for an emptied storage of `numel` fp32 from the cache, and back.
void refill_storage(c10::Storage& storage, int64_t numel, BufferCache& cache) {
  auto* impl = storage.unsafeGetStorageImpl();
  impl->set_data_ptr_noswap(cache.take(numel * 4));
  impl->set_nbytes(static_cast<size_t>(numel * 4));
}

void return_storage(c10::Storage& storage, BufferCache& cache) {
  auto* impl = storage.unsafeGetStorageImpl();
  const int64_t bytes = static_cast<int64_t>(impl->nbytes());
  c10::DataPtr old = impl->set_data_ptr(c10::DataPtr(nullptr, c10::Device(c10::kCPU)));
  impl->set_nbytes(0);
  cache.give(std::move(old), bytes);
}

}  // namespace

// Runs after the parameter's AccumulateGrad node: its gradient of this backward is complete.
class ChunkManager::ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(ChunkManager* owner, int param) : owner_(owner), param_(param) {}
  variable_list operator()(const variable_list& outputs, const variable_list& /*inputs*/) override {
    owner_->on_grad_ready(param_);
    return outputs;
  }

 private:
  ChunkManager* owner_;
  int param_;
};

ChunkManager::ChunkManager(std::vector<ChunkParam> params, Options options, dist::Comm* comm)
    : params_(std::move(params)), options_(std::move(options)), comm_(comm) {
  KOLOS_CHECK(options_.chunk_size > 0, "the chunk size must be > 0 elements, got {}", options_.chunk_size);
  KOLOS_CHECK(options_.max_pending_reductions >= 1, "max_pending_reductions must be >= 1, got {}",
              options_.max_pending_reductions);
  KOLOS_CHECK(!params_.empty(), "ChunkManager: no parameters to manage");
  if (comm_ && comm_->size() > 1) {
    group_size_ = comm_->size();
    rank_ = comm_->rank();
  } else {
    comm_ = nullptr;  // one rank: local copies, nothing communicated
  }

  std::vector<int64_t> numels;
  std::vector<int> blocks;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    int64_t n = 1;
    for (int64_t d : p.shape) n *= d;
    KOLOS_CHECK(n > 0, "ChunkManager: parameter '{}' has no elements", p.name);
    KOLOS_CHECK(p.block >= 0 && (i == 0 || p.block >= params_[i - 1].block),
                "ChunkManager: parameter '{}' is in block {} after block {}: register parameters in block (forward) "
                "order",
                p.name, p.block, i == 0 ? 0 : params_[i - 1].block);
    numels.push_back(n);
    blocks.push_back(p.block);
  }
  num_blocks_ = blocks.back() + 1;
  layout_ = pack_chunks(numels, blocks, options_.chunk_size, group_size_);

  block_chunks_.assign(num_blocks_, {0, 0});
  for (int b = 0, c = 0; b < num_blocks_; ++b) {
    block_chunks_[b].first = c;
    while (c < static_cast<int>(layout_.chunks.size()) && layout_.chunks[c].block == b) ++c;
    block_chunks_[b].second = c;
  }
  keep_gathered_.assign(num_blocks_, false);
  for (int b : options_.keep_gathered) {
    KOLOS_CHECK(b >= 0 && b < num_blocks_, "keep_gathered names block {}, the model has blocks 0..{}", b,
                num_blocks_ - 1);
    keep_gathered_[b] = true;
  }

  auto block_bytes = [&](int b) {
    int64_t bytes = 0;
    for (int c = block_chunks_[b].first; c < block_chunks_[b].second; ++c) bytes += layout_.chunks[c].capacity * 4;
    return bytes;
  };
  int64_t cache_bytes = options_.buffer_cache_bytes;
  if (cache_bytes < 0) {
    cache_bytes = 0;
    for (int b = 0; b < num_blocks_; ++b)
      cache_bytes = std::max(cache_bytes, 2 * (block_bytes(b) + (b + 1 < num_blocks_ ? block_bytes(b + 1) : 0)));
  }
  cache_ = std::make_unique<BufferCache>(page_aligned_allocator(), cache_bytes);

  int64_t shard_total = 0;
  for (const auto& c : layout_.chunks) {
    shard_offset_.push_back(shard_total);
    shard_total += c.capacity / group_size_;
  }
  const int total_chunks = static_cast<int>(layout_.chunks.size());
  KOLOS_CHECK(options_.offload_fraction >= 0 && options_.offload_fraction <= 1 &&
                  (options_.offload_fraction == 0 || options_.tier),
              "ChunkManager: offload fraction {} (in [0, 1], with a tier)", options_.offload_fraction);
  KOLOS_CHECK(!options_.offload_grads || options_.offload_fraction > 0,
              "ChunkManager: gradient offload needs parameter offload (offload_fraction > 0)");
  first_offloaded_ = total_chunks;
  if (options_.offload_fraction > 0) {
    const double want = options_.offload_fraction * static_cast<double>(shard_total);
    auto offloaded = [&](int first) { return shard_total - (first < total_chunks ? shard_offset_[first] : shard_total); };
    while (first_offloaded_ > 0 && static_cast<double>(offloaded(first_offloaded_)) < want) --first_offloaded_;
  }
  shard_params_ = at::zeros({first_offloaded_ < total_chunks ? shard_offset_[first_offloaded_] : shard_total},
                            at::kFloat);
  shard_grads_ = at::zeros({options_.offload_grads ? shard_params_.numel() : shard_total}, at::kFloat);

  param_place_.resize(params_.size());
  for (size_t c = 0; c < layout_.chunks.size(); ++c) {
    const auto& lc = layout_.chunks[c];
    const int64_t s = lc.capacity / group_size_;
    at::Tensor shard, grad_shard;
    if (static_cast<int>(c) < first_offloaded_) {
      shard = shard_params_.narrow(0, shard_offset_[c], s);
      grad_shard = shard_grads_.narrow(0, shard_offset_[c], s);
    } else {
      // A storage of its own, zero now (written to the tier below, then freed until the first gather).
      c10::Storage storage;
      shard = own_storage_tensor(s, &storage);
      std::memset(storage.data(), 0, static_cast<size_t>(align_up(s * 4)));
      offloaded_.push_back({shard_offset_[c], s, options_.tier->allocate(s * 4)});
      options_.tier->wait(options_.tier->write(offloaded_.back().region, 0, storage.data(), offloaded_.back().region.bytes));
      tier_storage_.push_back(storage);
      tier_reads_.push_back(0);
      tier_resident_.push_back(true);
      cached_.push_back(false);
      if (options_.offload_grads) {  // written at the first reduction of every step; no memory until then
        c10::Storage gs;
        grad_shard = own_storage_tensor(s, &gs);
        free_storage(gs);
        offloaded_.back().grad_region = options_.tier->allocate(s * 4);
        grad_storage_.push_back(gs);
        grad_written_.push_back(false);
        grad_sq_.push_back(0);
      } else {
        grad_shard = shard_grads_.narrow(0, shard_offset_[c], s);
      }
    }
    auto chunk = std::make_unique<Chunk>(static_cast<int>(c), lc.block, lc.capacity, shard, grad_shard, comm_,
                                         cache_.get());
    for (int i = lc.first_param; i < lc.end_param; ++i) {
      chunk->add_tensor(layout_.slots[i].offset, params_[i].shape);
      param_place_[i] = {static_cast<int>(c), chunk->num_tensors() - 1};
    }
    chunk->release();
    chunks_.push_back(std::move(chunk));
    evict_shard(static_cast<int>(c));
  }

  // The hooks. The accumulator is held here: a parameter keeps only a weak reference to it.
  for (int i = 0; i < num_params(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(param(i));
    KOLOS_ASSERT(acc, "parameter {} has no gradient accumulator", params_[i].name);
    acc->add_post_hook(std::make_unique<ReadyHook>(this, i));
    accumulators_.push_back(std::move(acc));
  }
  done_.assign(chunks_.size(), false);
  next_reduction_ = num_chunks() - 1;
}

ChunkManager::~ChunkManager() {
  try {
    while (!pending_.empty()) wait_oldest_reduction();
    while (!grad_writes_.empty()) wait_oldest_grad_write();
  } catch (...) {
    // A failed peer (reported by whoever waited first), or an IO error of a write nobody needs any more.
  }
  for (size_t i = 0; i < tier_reads_.size(); ++i) {
    try {
      options_.tier->wait(tier_reads_[i]);
    } catch (...) {
      // An IO error of a read nobody needs any more.
    }
  }
}

void ChunkManager::fetch_shard(int c) {
  const int i = tier_index(c);
  if (i < 0) return;
  settle(i);
  if (tier_resident_[i]) return;
  const TierShard& sh = offloaded_[i];
  refill_storage(tier_storage_[i], sh.numel, *cache_);
  tier_reads_[i] = options_.tier->read(sh.region, 0, tier_storage_[i].data(), sh.region.bytes);
  tier_resident_[i] = true;
}

void ChunkManager::wait_shard(int c) {
  const int i = tier_index(c);
  if (i < 0) return;
  fetch_shard(c);
  const AioTicket t = tier_reads_[i];
  tier_reads_[i] = 0;
  options_.tier->wait(t);
}

void ChunkManager::evict_shard(int c) {
  const int i = tier_index(c);
  if (i < 0 || !tier_resident_[i]) return;
  const AioTicket t = tier_reads_[i];
  tier_reads_[i] = 0;
  options_.tier->wait(t);  // the engine may still write into the buffer
  if (admit(i, true)) return;  // the shard cache keeps it
  drop_shard(i);
}

void ChunkManager::drop_shard(int i) {
  settle(i);
  return_storage(tier_storage_[i], *cache_);
  tier_resident_[i] = false;
  cached_[i] = false;
}

int64_t ChunkManager::cached_shards(int except, std::vector<std::pair<int64_t, int>>* furthest_first) const {
  int64_t bytes = 0;
  for (int j = 0; j < static_cast<int>(offloaded_.size()); ++j) {
    if (j == except || !cached_[j]) continue;
    bytes += shard_bytes(j);
    if (furthest_first) furthest_first->emplace_back(next_use(j), j);
  }
  if (furthest_first) std::sort(furthest_first->begin(), furthest_first->end(), std::greater<>());
  return bytes;
}

void ChunkManager::note_use(int i) {
  if (trace_state_ == 1) trace_.push_back(i);
  if (cached_[i]) ++cache_hits_;
  ++uses_;
}

int64_t ChunkManager::next_use(int j) const {
  if (trace_state_ != 2 || trace_positions_[j].empty()) return std::numeric_limits<int64_t>::max();
  const auto& at = trace_positions_[j];
  const auto it = std::lower_bound(at.begin(), at.end(), uses_);
  // Past its last use this step: its first use of the next step (the trace repeats).
  return it != at.end() ? *it : at.front() + static_cast<int64_t>(trace_.size());
}

bool ChunkManager::admit(int i, bool evict) {
  if (cache_capacity_ <= 0) return false;
  const int64_t need = shard_bytes(i);
  if (need > cache_capacity_) return false;
  std::vector<std::pair<int64_t, int>> others;  // (next use, shard) of the other cached shards, furthest first
  int64_t used = cached_shards(i, evict ? &others : nullptr);
  if (used + need > cache_capacity_) {
    if (!evict) return false;
    // Belady: free the shards needed furthest in the future, unless this one is needed later than they are.
    const int64_t mine = next_use(i);
    std::vector<int> victims;
    for (const auto& [when, j] : others) {
      if (used + need <= cache_capacity_) break;
      if (when <= mine) return false;
      if (chunks_[first_offloaded_ + j]->residency() != Chunk::Residency::kReleased) continue;  // its gather reads it
      victims.push_back(j);
      used -= shard_bytes(j);
    }
    if (used + need > cache_capacity_) return false;
    for (int j : victims) drop_shard(j);
  }
  cached_[i] = true;
  return true;
}

void ChunkManager::set_cache_capacity(int64_t bytes) {
  if (trace_state_ < 2) {  // the trace ends here (or is empty: no step ran)
    trace_state_ = 2;
    trace_positions_.assign(offloaded_.size(), {});
    for (size_t q = 0; q < trace_.size(); ++q) trace_positions_[trace_[q]].push_back(static_cast<int64_t>(q));
  }
  cache_capacity_ = std::max<int64_t>(0, bytes);
  // Over the new capacity: free the shards needed furthest in the future (whose chunks are not gathered).
  std::vector<std::pair<int64_t, int>> held;
  int64_t used = cached_shards(-1, &held);
  for (const auto& [when, j] : held) {
    if (used <= cache_capacity_) break;
    if (chunks_[first_offloaded_ + j]->residency() != Chunk::Residency::kReleased) continue;
    drop_shard(j);
    used -= shard_bytes(j);
  }
}

std::pair<float*, float*> ChunkManager::optimizer_visit(int i) {
  KOLOS_ASSERT(i >= 0 && i < static_cast<int>(offloaded_.size()), "optimizer_visit({}): {} offloaded shards", i,
               offloaded_.size());
  note_use(i);
  if (tier_resident_[i]) {
    KOLOS_ASSERT(tier_reads_[i] == 0, "offloaded shard {} is being read during the optimizer step", i);
    float* data = static_cast<float*>(tier_storage_[i].data());
    return cached_[i] ? std::pair<float*, float*>{data, data} : std::pair<float*, float*>{nullptr, nullptr};
  }
  if (!admit(i, false)) return {nullptr, nullptr};  // into free room only: the step's windows point into the cache
  refill_storage(tier_storage_[i], offloaded_[i].numel, *cache_);
  tier_resident_[i] = true;
  return {nullptr, static_cast<float*>(tier_storage_[i].data())};
}

void ChunkManager::fetch_block(int block) {
  if (block < 0 || block >= num_blocks_) return;
  for (int c = std::max(block_chunks_[block].first, first_offloaded_); c < block_chunks_[block].second; ++c)
    if (chunks_[c]->residency() == Chunk::Residency::kReleased && !done_[c]) fetch_shard(c);
}

int64_t ChunkManager::fetched_shard_bytes() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < offloaded_.size(); ++i) {
    if (tier_resident_[i]) bytes += offloaded_[i].numel * 4;
    if (i < grad_storage_.size()) bytes += static_cast<int64_t>(grad_storage_[i].nbytes());
  }
  return bytes;
}

double ChunkManager::grad_sum_of_squares() const {
  // Chunk by chunk in chunk order, whether a chunk's gradient is resident or was summed as it was written: the same
  // sum with and without gradient offload, bit for bit.
  double sq = 0;
  for (int c = 0; c < num_chunks(); ++c) {
    const int i = tier_index(c);
    sq += i >= 0 && !grad_sq_.empty() ? grad_sq_[i]
                                      : optim::sum_of_squares(shard_grads_.narrow(0, shard_offset_[c], chunks_[c]->shard_numel()));
  }
  return sq;
}

const at::Tensor& ChunkManager::param(int i) const {
  const auto [c, t] = param_place_[i];
  return chunks_[c]->tensor(t);
}

std::vector<at::Tensor> ChunkManager::params() const {
  std::vector<at::Tensor> out;
  for (int i = 0; i < num_params(); ++i) out.push_back(param(i));
  return out;
}

std::vector<optim::Piece> ChunkManager::optimizer_pieces(const std::vector<double>& weight_decay,
                                                         const std::vector<bool>& adapt) const {
  KOLOS_ASSERT(weight_decay.empty() || static_cast<int>(weight_decay.size()) == num_params(),
               "one weight decay per parameter expected");
  KOLOS_ASSERT(adapt.empty() || static_cast<int>(adapt.size()) == num_params(), "one adapt flag per parameter expected");
  std::vector<optim::Piece> pieces;
  for (int i = 0; i < num_params(); ++i) {
    const auto [c, t] = param_place_[i];
    const Chunk& ch = *chunks_[c];
    const int64_t begin = ch.tensor_offset(t), end = begin + ch.tensor(t).numel();
    const int64_t lo = std::max(begin, ch.shard_begin()), hi = std::min(end, ch.shard_begin() + ch.shard_numel());
    if (lo >= hi) continue;
    const int64_t at = shard_offset_[c] + (lo - ch.shard_begin());
    pieces.push_back({at, at, at, hi - lo, weight_decay.empty() ? 0.0 : weight_decay[i], i,
                      adapt.empty() ? true : static_cast<bool>(adapt[i])});
  }
  return pieces;
}

void ChunkManager::copy_param(int i, const at::Tensor& value) {
  const at::Tensor& p = param(i);
  KOLOS_CHECK(value.sizes() == p.sizes(), "parameter '{}': expected shape {}, got {}", params_[i].name,
              c10::str(p.sizes()), c10::str(value.sizes()));
  at::NoGradGuard no_grad;
  const auto [c, t] = param_place_[i];
  Chunk& ch = *chunks_[c];
  const at::Tensor flat = value.detach().to(at::kFloat).contiguous().view(-1);
  const int64_t begin = ch.tensor_offset(t), end = begin + p.numel();
  const int64_t lo = std::max(begin, ch.shard_begin()), hi = std::min(end, ch.shard_begin() + ch.shard_numel());
  if (lo < hi) {
    wait_shard(c);  // an offloaded shard: read back (the caller writes it out)
    ch.shard().narrow(0, lo - ch.shard_begin(), hi - lo).copy_(flat.narrow(0, lo - begin, hi - lo));
  }
  if (ch.residency() != Chunk::Residency::kReleased) {
    ch.wait_gather();
    p.detach().copy_(value);  // the gathered copy too
  }
}

void ChunkManager::write_shard(int c) {
  if (tier_index(c) < 0) return;
  const TierShard& sh = offloaded_[tier_index(c)];
  wait_shard(c);
  options_.tier->wait(options_.tier->write(sh.region, 0, chunks_[c]->shard().data_ptr(), sh.region.bytes));
  if (chunks_[c]->residency() == Chunk::Residency::kReleased) evict_shard(c);
}

void ChunkManager::set_param(int i, const at::Tensor& value) {
  copy_param(i, value);
  write_shard(param_place_[i].first);
}

void ChunkManager::set_params(const std::function<at::Tensor(int)>& value_of) {
  for (int c = 0; c < num_chunks(); ++c) {
    const auto& lc = layout_.chunks[c];
    for (int i = lc.first_param; i < lc.end_param; ++i) copy_param(i, value_of(i));
    write_shard(c);
  }
}

std::vector<at::Tensor> ChunkManager::whole_params() {
  std::vector<at::Tensor> out(params_.size());
  at::NoGradGuard no_grad;
  for (int c = 0; c < num_chunks(); ++c) {
    Chunk& ch = *chunks_[c];
    const bool was_released = ch.residency() == Chunk::Residency::kReleased;
    if (was_released) wait_shard(c);
    ch.gather_async(dist::Phase::kOther);
    ch.wait_gather();
    evict_shard(c);
    const auto& lc = layout_.chunks[c];
    for (int i = lc.first_param; i < lc.end_param; ++i) out[i] = param(i).detach().clone();
    if (was_released) ch.release();
  }
  return out;
}

void ChunkManager::check_block(int block, const char* what) const {
  KOLOS_ASSERT(block >= 0 && block < num_blocks_, "{}({}): the blocks are 0..{}", what, block, num_blocks_ - 1);
}

void ChunkManager::gather_block(int block, dist::Phase phase) {
  for (int c = block_chunks_[block].first; c < block_chunks_[block].second; ++c) {
    Chunk& ch = *chunks_[c];
    if (ch.residency() != Chunk::Residency::kReleased || done_[c]) continue;
    if (tier_index(c) >= 0) note_use(tier_index(c));
    wait_shard(c);
    ch.gather_async(phase);
    ++gathers_;
    peak_gathered_bytes_ = std::max(peak_gathered_bytes_, gathered_bytes());
  }
}

void ChunkManager::release_chunk(Chunk& c) {
  if (c.residency() == Chunk::Residency::kReleased) return;
  c.release();
  evict_shard(c.index());
}

int64_t ChunkManager::gathered_bytes() const {
  int64_t bytes = 0;
  for (const auto& c : chunks_)
    if (c->residency() != Chunk::Residency::kReleased) bytes += c->nbytes();
  return bytes;
}

void ChunkManager::begin_step() {
  KOLOS_ASSERT(pending_.empty(), "begin_step with gradient reductions in flight (finish_backward was not called)");
  shard_grads_.zero_();
  grad_written_.assign(grad_written_.size(), false);
  // The shard cache's trace: the first step records, the second begin_step ends it.
  if (trace_state_ == 0 && !offloaded_.empty()) {
    trace_state_ = 1;
  } else if (trace_state_ == 1) {
    set_cache_capacity(cache_capacity_);
  }
  uses_ = 0;
}

void ChunkManager::before_forward(int block) {
  check_block(block, "before_forward");
  gather_block(block, dist::Phase::kForward);
  if (block + 1 < num_blocks_) gather_block(block + 1, dist::Phase::kForward);  // prefetch
  fetch_block(block + 2);  // offloaded shards: read ahead of the next prefetch
  for (int c = block_chunks_[block].first; c < block_chunks_[block].second; ++c) {
    chunks_[c]->wait_gather();
    evict_shard(c);
    chunks_[c]->set_all(TensorState::kHold, TensorState::kCompute);
  }
}

void ChunkManager::after_forward(int block) {
  check_block(block, "after_forward");
  for (int c = block_chunks_[block].first; c < block_chunks_[block].second; ++c) {
    chunks_[c]->set_all(TensorState::kCompute, TensorState::kHold);
    if (!keep_gathered_[block]) release_chunk(*chunks_[c]);
  }
}

at::Tensor ChunkManager::pre_backward(int block, const at::Tensor& output) {
  check_block(block, "pre_backward");
  if (!at::GradMode::is_enabled() || !output.requires_grad()) return output;
  at::Tensor y = output.detach();  // an alias: same storage, no copy
  auto node = std::shared_ptr<PreBackward>(new PreBackward(this, block), torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(output));
  torch::autograd::set_history(y, node);
  return y;
}

void ChunkManager::before_backward(int block) {
  check_block(block, "before_backward");
  gather_block(block, dist::Phase::kBackward);
  if (block > 0) gather_block(block - 1, dist::Phase::kBackward);  // prefetch
  fetch_block(block - 2);
  for (int c = block_chunks_[block].first; c < block_chunks_[block].second; ++c) {
    Chunk& ch = *chunks_[c];
    KOLOS_ASSERT(!done_[c], "block {}: its backward began after chunk {}'s gradient was complete", block, c);
    ch.wait_gather();
    evict_shard(c);
    ch.set_all(TensorState::kHold, TensorState::kCompute);
    ch.prepare_grads();
  }
}

void ChunkManager::on_grad_ready(int param) {
  const auto [c, t] = param_place_[param];
  Chunk& ch = *chunks_[c];
  KOLOS_ASSERT(!done_[c], "parameter '{}' received a second gradient in one backward (chunk {} was complete)",
               params_[param].name, c);
  if (!ch.grad_ready(t)) return;
  // No node of this backward reads the chunk's parameters any more: every use of them has delivered its gradient.
  done_[c] = true;
  release_chunk(ch);
  launch_ready_reductions();
}

void ChunkManager::launch_ready_reductions() {
  while (next_reduction_ >= 0 && done_[next_reduction_]) {
    if (static_cast<int>(pending_.size()) >= options_.max_pending_reductions) wait_oldest_reduction();
    chunks_[next_reduction_]->reduce_async();
    pending_.push_back(next_reduction_);
    --next_reduction_;
  }
}

void ChunkManager::wait_oldest_reduction() {
  const int c = pending_.front();
  pending_.erase(pending_.begin());
  const int i = tier_index(c);
  if (i < 0 || grad_storage_.empty()) {
    chunks_[c]->wait_reduce();
    return;
  }
  if (group_size_ == 1 && !grad_written_[i]) {  // the buffer is the whole gradient: written as it is
    write_grad_shard(c, chunks_[c]->take_grad_buffer());
    return;
  }
  // The gradient shard: zeros, or this step's partial sum back from the tier; the reduced gradient added in.
  const TierShard& sh = offloaded_[i];
  refill_storage(grad_storage_[i], sh.numel, *cache_);
  void* data = grad_storage_[i].data();
  if (grad_written_[i]) {
    options_.tier->wait(options_.tier->read(sh.grad_region, 0, data, sh.grad_region.bytes));
  } else {
    std::memset(data, 0, static_cast<size_t>(sh.grad_region.bytes));
  }
  chunks_[c]->wait_reduce();
  write_grad_shard(c);
}

void ChunkManager::write_grad_shard(int c, at::Tensor buffer) {
  const int i = tier_index(c);
  settle(i);
  const TierShard& sh = offloaded_[i];
  const at::Tensor& values = buffer.defined() ? buffer : chunks_[c]->grad_shard();
  grad_sq_[i] = optim::sum_of_squares(values);
  grad_written_[i] = true;
  const AioTicket t = options_.tier->write(sh.grad_region, 0, values.data_ptr(), sh.grad_region.bytes);
  grad_writes_.push_back({i, t, std::move(buffer)});
  while (static_cast<int>(grad_writes_.size()) > options_.max_pending_reductions) wait_oldest_grad_write();
}

void ChunkManager::wait_oldest_grad_write() {
  GradWrite w = std::move(grad_writes_.front());
  grad_writes_.erase(grad_writes_.begin());
  options_.tier->wait(w.ticket);
  if (w.buffer.defined()) {
    c10::Storage storage = w.buffer.storage();
    return_storage(storage, *cache_);
  } else {
    return_storage(grad_storage_[w.index], *cache_);
  }
}

void ChunkManager::finish_backward() {
  // Parameters that got no gradient (unused in this backward): a zero gradient, so every rank reduces every chunk.
  for (int c = num_chunks() - 1; c >= 0; --c) {
    if (done_[c]) continue;
    chunks_[c]->mark_unused_ready();
    done_[c] = true;
  }
  launch_ready_reductions();
  KOLOS_ASSERT(next_reduction_ < 0, "chunk {} was not reduced", next_reduction_);
  while (!pending_.empty()) wait_oldest_reduction();
  while (!grad_writes_.empty()) wait_oldest_grad_write();
  release_all();
  for (int c = 0; c < num_chunks(); ++c) {
    KOLOS_ASSERT(chunks_[c]->count(TensorState::kHold) == chunks_[c]->num_tensors(),
                 "chunk {}: {} tensors compute after backward", c, chunks_[c]->count(TensorState::kCompute));
    done_[c] = false;
  }
  next_reduction_ = num_chunks() - 1;
}

void ChunkManager::release_all() {
  for (auto& c : chunks_) {
    c->set_all(TensorState::kCompute, TensorState::kHold);
    release_chunk(*c);
    evict_shard(c->index());  // read ahead and never gathered
  }
}

}  // namespace kolos::memory
