#include "kolos/memory/chunk.h"

#include <cstring>

#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/core/error.h"

namespace kolos::memory {

const char* tensor_state_name(TensorState state) {
  switch (state) {
    case TensorState::kHold: return "hold";
    case TensorState::kCompute: return "compute";
    case TensorState::kReadyForReduce: return "ready_for_reduce";
  }
  return "?";
}

c10::DataPtr BufferCache::take(int64_t nbytes) {
  for (size_t i = 0; i < free_.size(); ++i) {
    if (free_[i].first != nbytes) continue;
    c10::DataPtr buffer = std::move(free_[i].second);
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
    cached_bytes_ -= nbytes;
    return buffer;
  }
  return allocator_->allocate(static_cast<size_t>(nbytes));
}

void BufferCache::give(c10::DataPtr buffer, int64_t nbytes) {
  if (!buffer.get()) return;
  if (cached_bytes_ + nbytes > limit_bytes_) return;  // `buffer` frees itself here
  cached_bytes_ += nbytes;
  free_.emplace_back(nbytes, std::move(buffer));
}

Chunk::Chunk(int index, int block, int64_t capacity, at::Tensor shard, at::Tensor grad_shard, dist::Comm* comm,
             BufferCache* cache)
    : index_(index),
      block_(block),
      capacity_(capacity),
      comm_(comm),
      cache_(cache),
      shard_(std::move(shard)),
      grad_shard_(std::move(grad_shard)) {
  if (comm_) {
    group_size_ = comm_->size();
    rank_ = comm_->rank();
  }
  KOLOS_ASSERT(capacity_ > 0 && capacity_ % group_size_ == 0, "chunk {}: capacity {} is not a positive multiple of {}",
               index_, capacity_, group_size_);
  KOLOS_ASSERT(shard_.numel() == shard_numel() && grad_shard_.numel() == shard_numel() &&
                   shard_.scalar_type() == at::kFloat && grad_shard_.scalar_type() == at::kFloat &&
                   shard_.is_contiguous() && grad_shard_.is_contiguous(),
               "chunk {}: the shards must be contiguous fp32 of {} elements", index_, shard_numel());
  storage_ = c10::Storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes()), cache_->take(nbytes()),
                          cache_->allocator(), /*resizable=*/false);
  full_ = tensor_on(storage_, 0, {capacity_});
  std::memset(storage_.data(), 0, static_cast<size_t>(nbytes()));
}

Chunk::~Chunk() {
  try {
    gather_.wait();
    reduce_.wait();
  } catch (...) {
    // A failed peer: reported by whoever waited first.
  }
}

at::Tensor Chunk::tensor_on(const c10::Storage& storage, int64_t offset, at::IntArrayRef shape) const {
  // A tensor of its own on the storage (not an autograd view): see the header comment.
  std::vector<int64_t> strides(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
  at::Tensor t = at::empty({0}, shard_.options());
  at::NoGradGuard no_grad;
  t.set_(storage, offset, shape, strides);
  return t;
}

const at::Tensor& Chunk::add_tensor(int64_t offset, at::IntArrayRef shape) {
  KOLOS_ASSERT(gathered(), "chunk {}: tensors are added before the first release", index_);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  KOLOS_ASSERT(offset >= 0 && offset + numel <= capacity_, "chunk {}: tensor [{}, {}) outside its capacity {}", index_,
               offset, offset + numel, capacity_);
  at::Tensor t = tensor_on(storage_, offset, shape);
  t.set_requires_grad(true);
  tensors_.push_back(t);
  offsets_.push_back(offset);
  numels_.push_back(numel);
  states_.push_back(TensorState::kHold);
  ++counts_[static_cast<int>(TensorState::kHold)];
  return tensors_.back();
}

void Chunk::gather_async(dist::Phase phase) {
  if (residency_ != Residency::kReleased) return;
  storage_.unsafeGetStorageImpl()->set_data_ptr_noswap(cache_->take(nbytes()));
  storage_.unsafeGetStorageImpl()->set_nbytes(static_cast<size_t>(nbytes()));
  if (group_size_ == 1) {
    std::memcpy(storage_.data(), shard_.data_ptr(), static_cast<size_t>(nbytes()));
    residency_ = Residency::kGathered;
    return;
  }
  dist::Ledger::PhaseScope scope(comm_->ledger(), phase);
  gather_ = comm_->all_gather_async(shard_, full_);
  residency_ = Residency::kGathering;
}

void Chunk::wait_gather() {
  KOLOS_ASSERT(residency_ != Residency::kReleased, "chunk {} (block {}) is read while released", index_, block_);
  if (residency_ == Residency::kGathering) {
    gather_.wait();
    gather_ = dist::Handle();
    residency_ = Residency::kGathered;
  }
}

void Chunk::free_storage(c10::Storage& storage) {
  auto* impl = storage.unsafeGetStorageImpl();
  const int64_t bytes = static_cast<int64_t>(impl->nbytes());
  c10::DataPtr old = impl->set_data_ptr(c10::DataPtr(nullptr, storage.device()));
  impl->set_nbytes(0);
  cache_->give(std::move(old), bytes);
}

void Chunk::release() {
  if (residency_ == Residency::kReleased) return;
  KOLOS_ASSERT(count(TensorState::kCompute) == 0, "chunk {} (block {}) released while {} of its tensors compute",
               index_, block_, count(TensorState::kCompute));
  if (residency_ == Residency::kGathering) wait_gather();  // the backend may still write into the buffer
  free_storage(storage_);
  residency_ = Residency::kReleased;
}

void Chunk::set_state(int i, TensorState state) {
  const TensorState from = states_[i];
  const bool allowed = (from == TensorState::kHold && state == TensorState::kCompute) ||
                       (from == TensorState::kCompute && state == TensorState::kHold) ||
                       (from != TensorState::kReadyForReduce && state == TensorState::kReadyForReduce) ||
                       (from == TensorState::kReadyForReduce && state == TensorState::kHold) || from == state;
  KOLOS_ASSERT(allowed, "chunk {} (block {}), tensor {}: no transition {} -> {}", index_, block_, i,
               tensor_state_name(from), tensor_state_name(state));
  --counts_[static_cast<int>(from)];
  ++counts_[static_cast<int>(state)];
  states_[i] = state;
}

void Chunk::set_all(TensorState from, TensorState to) {
  for (int i = 0; i < num_tensors(); ++i)
    if (states_[i] == from) set_state(i, to);
}

void Chunk::prepare_grads() {
  if (grad_full_.defined()) return;
  at::NoGradGuard no_grad;
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<size_t>(nbytes()), cache_->take(nbytes()),
                       cache_->allocator(), /*resizable=*/false);
  grad_full_ = tensor_on(storage, 0, {capacity_});
  grad_full_.zero_();
  for (int i = 0; i < num_tensors(); ++i) {
    if (states_[i] == TensorState::kReadyForReduce) continue;
    tensors_[i].mutable_grad() = tensor_on(storage, offsets_[i], tensors_[i].sizes());
  }
}

bool Chunk::grad_ready(int i) {
  KOLOS_ASSERT(!reduce_launched_, "chunk {} (block {}): a gradient arrived after the chunk was reduced", index_,
               block_);
  at::NoGradGuard no_grad;
  at::Tensor& grad = tensors_[i].mutable_grad();
  const at::Tensor arrived = grad;  // AccumulateGrad's result: in our buffer, or a fresh tensor
  const bool ours = grad_full_.defined() && arrived.defined() &&
                    arrived.storage().unsafeGetStorageImpl() == grad_full_.storage().unsafeGetStorageImpl();
  if (!ours) {
    prepare_grads();
    at::Tensor slot = tensor_on(grad_full_.storage(), offsets_[i], tensors_[i].sizes());
    if (arrived.defined()) slot.copy_(arrived);
    grad = slot;
  }
  set_state(i, TensorState::kReadyForReduce);
  return all_ready();
}

void Chunk::mark_unused_ready() {
  prepare_grads();
  for (int i = 0; i < num_tensors(); ++i)
    if (states_[i] != TensorState::kReadyForReduce) grad_ready(i);
}

void Chunk::reduce_async() {
  KOLOS_ASSERT(all_ready() && grad_full_.defined() && !reduce_launched_,
               "chunk {} (block {}): reduction launched with {} of {} tensors ready", index_, block_,
               count(TensorState::kReadyForReduce), num_tensors());
  for (auto& t : tensors_) t.mutable_grad().reset();
  reduce_launched_ = true;
  if (group_size_ == 1) return;  // wait_reduce adds the whole buffer
  dist::Ledger::PhaseScope scope(comm_->ledger(), dist::Phase::kBackward);
  reduced_ = at::empty({shard_numel()}, shard_.options());
  reduce_ = comm_->reduce_scatter_async(grad_full_, reduced_, dist::ReduceOp::kAvg);
}

at::Tensor Chunk::take_grad_buffer() {
  KOLOS_ASSERT(reduce_launched_ && group_size_ == 1, "chunk {}: take_grad_buffer without a launched one-rank reduction",
               index_);
  at::Tensor g = std::move(grad_full_);
  grad_full_.reset();
  reduce_launched_ = false;
  set_all(TensorState::kReadyForReduce, TensorState::kHold);
  return g;
}

void Chunk::wait_reduce() {
  if (!reduce_launched_) return;
  at::NoGradGuard no_grad;
  if (group_size_ == 1) {
    grad_shard_.add_(grad_full_);
  } else {
    reduce_.wait();
    reduce_ = dist::Handle();
    grad_shard_.add_(reduced_);
    reduced_.reset();
  }
  c10::Storage storage = grad_full_.storage();
  grad_full_.reset();
  free_storage(storage);
  reduce_launched_ = false;
  set_all(TensorState::kReadyForReduce, TensorState::kHold);
}

}  // namespace kolos::memory
