// Chunk: a flat fp32 buffer of fixed capacity holding several parameters back to back, sharded over the dp group
// (ZeRO-3; DESIGN "Chunks"). The layout comes from pack_chunks (memory/chunk_search.h); ChunkManager
// (memory/chunk_manager.h) builds the chunks and drives them through a step.
//
// Storage. Each chunk owns one c10::Storage of capacity C elements (C a multiple of the group size n). Every
// parameter is a tensor on that storage (its own TensorImpl made with set_, not an autograd view of the buffer, so
// writes into the buffer never bump a parameter's version counter and autograd's saved parameters stay usable
// across a release and re-gather). Rank r owns the contiguous shard [r·C/n, (r+1)·C/n): `shard` and `grad_shard`,
// fp32 tensors that stay allocated for the whole run (slices of the manager's flat shard buffers, which the
// optimizer updates).
//   gather   all_gather of the n shards into the storage, re-allocated first (asynchronous: gather_async, then
//            wait_gather before the parameters are read). The shard is never written back: forward and backward do
//            not change parameter values; the optimizer changes the shard, and the next gather publishes it.
//   release  the storage's memory goes back (to the BufferCache) and the storage keeps a null data pointer with
//            nbytes 0. The storage object stays, so every tensor on it — the parameters, views of them, tensors
//            autograd saved — reads the right values again after the next gather. Reading a parameter while its
//            chunk is released is undefined (null data): the manager's protocol prevents it.
//
// Per-tensor states (a small version of Gemini's machine; the manager makes the transitions, others are a bug):
//   kHold            not in use. Initial; after forward (after_forward); after the chunk's gradient was reduced.
//   kCompute         its block is computing: set by before_forward and before_backward (from kHold).
//   kReadyForReduce  its gradient of this backward is complete (the AccumulateGrad hook, from kCompute or kHold).
//   kHold --before_*--> kCompute --after_forward--> kHold
//                       kCompute --gradient hook--> kReadyForReduce --reduce launched--> kHold
// A chunk may be released only when no tensor is in kCompute; its gradient is reduced once every tensor is in
// kReadyForReduce (finish_backward puts tensors that got no gradient there, with a zero gradient).
//
// Gradients. prepare_grads() allocates a zeroed chunk-shaped gradient buffer and points each tensor's .grad at its
// slice, so autograd accumulates into it in place (AccumulateGrad adds in place when grad mode is off). When all
// tensors are ready, reduce_async() reduce-scatters (average over the group) the buffer; wait_reduce() adds the
// result into `grad_shard` — so gradient-accumulation micro-steps sum there — and frees the buffer. A .grad is valid
// only during backward (it is reset when the reduction is launched).
//
// Not thread-safe: one thread (the training thread, which is also the thread the CPU autograd engine runs hooks
// on) calls every member. The Comm's worker threads write the storage between gather_async and wait_gather.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/core/Storage.h>

#include "kolos/dist/comm.h"

namespace kolos::memory {

enum class TensorState : uint8_t { kHold, kCompute, kReadyForReduce };

// "hold", "compute", "ready_for_reduce".
const char* tensor_state_name(TensorState state);

// Keeps freed chunk buffers for reuse instead of giving them back to the allocator: fresh pages cost a page fault
// each on these machines (DESIGN "Foundations"), and chunks come in few sizes. Holds at most `limit_bytes`; beyond
// that a buffer is freed. Not thread-safe (one per ChunkManager).
class BufferCache {
 public:
  BufferCache(c10::Allocator* allocator, int64_t limit_bytes) : allocator_(allocator), limit_bytes_(limit_bytes) {}
  // A buffer of exactly `nbytes`: a cached one (contents unspecified) or a new allocation.
  c10::DataPtr take(int64_t nbytes);
  // Gives a buffer of `nbytes` back. A null one is ignored.
  void give(c10::DataPtr buffer, int64_t nbytes);
  int64_t cached_bytes() const { return cached_bytes_; }
  c10::Allocator* allocator() const { return allocator_; }

 private:
  c10::Allocator* allocator_;
  int64_t limit_bytes_;
  int64_t cached_bytes_ = 0;
  std::vector<std::pair<int64_t, c10::DataPtr>> free_;
};

class Chunk {
 public:
  enum class Residency { kReleased, kGathering, kGathered };

  // `capacity` elements, a multiple of the group size n (comm->size(), or 1 when comm is null: then gather and
  // reduce are local copies). `shard` and `grad_shard`: contiguous fp32, capacity / n elements each; the caller
  // owns their memory and zero-initialises it. The storage starts gathered (zeros) so that tensors can be added;
  // the manager releases it once built. `comm` and `cache` must outlive the chunk.
  Chunk(int index, int block, int64_t capacity, at::Tensor shard, at::Tensor grad_shard, dist::Comm* comm,
        BufferCache* cache);
  ~Chunk();
  Chunk(const Chunk&) = delete;
  Chunk& operator=(const Chunk&) = delete;

  // Building (while gathered, before the first release): a tensor of `shape` at element `offset`, on the chunk's
  // storage, requiring grad. Returns it; the chunk keeps it too (tensor(i), in the order added).
  const at::Tensor& add_tensor(int64_t offset, at::IntArrayRef shape);

  int index() const { return index_; }
  int block() const { return block_; }
  int64_t capacity() const { return capacity_; }
  int64_t shard_numel() const { return capacity_ / group_size_; }
  int64_t nbytes() const { return capacity_ * static_cast<int64_t>(sizeof(float)); }
  // The owned range [shard_begin(), shard_begin() + shard_numel()) of the chunk's elements.
  int64_t shard_begin() const { return rank_ * shard_numel(); }
  int num_tensors() const { return static_cast<int>(tensors_.size()); }
  const at::Tensor& tensor(int i) const { return tensors_[i]; }
  int64_t tensor_offset(int i) const { return offsets_[i]; }
  const at::Tensor& shard() const { return shard_; }
  const at::Tensor& grad_shard() const { return grad_shard_; }
  const c10::Storage& storage() const { return storage_; }

  // Residency. gather_async re-allocates the storage and starts the all-gather in the ledger's phase `phase`; a
  // chunk gathered or gathering is left alone. wait_gather blocks until the storage holds every shard (no-op when
  // gathered; a bug when released). release waits for a gather in flight, then frees the storage (nbytes 0); a
  // released chunk is left alone; a tensor in kCompute is a bug.
  void gather_async(dist::Phase phase);
  void wait_gather();
  void release();
  Residency residency() const { return residency_; }
  bool gathered() const { return residency_ == Residency::kGathered; }

  // States (see the header comment; a transition not in the machine throws std::logic_error).
  TensorState state(int i) const { return states_[i]; }
  void set_state(int i, TensorState state);
  // Every tensor: kHold -> kCompute, or kCompute -> kHold.
  void set_all(TensorState from, TensorState to);
  int count(TensorState state) const { return counts_[static_cast<int>(state)]; }

  // Gradients (see the header comment). prepare_grads: no-op when the buffer exists. grad_ready(i): moves tensor i
  // to kReadyForReduce, first copying a gradient autograd stored elsewhere (a fresh tensor, when prepare_grads had
  // not run) into the buffer; returns whether every tensor is now ready. mark_unused_ready: every tensor not yet
  // ready becomes ready (zero gradient unless one arrived). reduce_async: every tensor ready; resets the .grads and
  // starts the reduction (phase "backward"). wait_reduce: no-op unless launched; adds into grad_shard, frees the
  // buffer, every tensor back to kHold.
  void prepare_grads();
  bool grad_ready(int i);
  void mark_unused_ready();
  bool all_ready() const { return count(TensorState::kReadyForReduce) == num_tensors(); }
  void reduce_async();
  void wait_reduce();
  // One rank only, instead of wait_reduce: the launched reduction's result is the gradient buffer itself, handed
  // over (C elements, page-aligned memory from the cache; give it back with the cache) rather than added into
  // grad_shard; every tensor back to kHold.
  at::Tensor take_grad_buffer();
  bool reduce_launched() const { return reduce_launched_; }
  bool has_grad_buffer() const { return grad_full_.defined(); }

 private:
  at::Tensor tensor_on(const c10::Storage& storage, int64_t offset, at::IntArrayRef shape) const;
  void free_storage(c10::Storage& storage);

  int index_, block_;
  int64_t capacity_;
  int group_size_ = 1, rank_ = 0;
  dist::Comm* comm_;
  BufferCache* cache_;
  at::Tensor shard_, grad_shard_;

  c10::Storage storage_;
  at::Tensor full_;  // the whole buffer (C elements) on storage_: the all-gather's output
  Residency residency_ = Residency::kGathered;
  dist::Handle gather_;

  std::vector<at::Tensor> tensors_;
  std::vector<int64_t> offsets_, numels_;
  std::vector<TensorState> states_;
  int counts_[3] = {0, 0, 0};

  at::Tensor grad_full_;   // chunk-shaped gradient buffer of this backward (undefined outside backward)
  at::Tensor reduced_;     // this rank's reduced shard, until wait_reduce adds it
  dist::Handle reduce_;
  bool reduce_launched_ = false;
};

}  // namespace kolos::memory
