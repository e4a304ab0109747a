// ShmGroup: all-reduce, reduce-scatter and all-gather through shared memory for a group whose ranks all run on one
// machine.
//
// Gloo moves every byte through TCP, which on loopback costs about as much CPU per byte as the sums themselves
// (about 1 GB/s of bus bandwidth here): data-parallel ranks on one machine would spend as long communicating as
// computing. Ranks that share a machine (same boot id and network namespace) instead map one shared segment with a
// slot per rank and reduce in place: each rank copies a piece of its tensor into its slot; after a barrier, rank r
// sums segment r of the piece over all slots in rank order (so every rank gets bit-identical results) and writes
// it into its own slot; after a second barrier every rank copies all segments out; a third barrier frees the slots
// for the next piece. A rank sends and receives nothing over the network.
//
// Barriers are per-rank 32-bit generation counters in the segment, waited on with futexes (no spinning against
// the compute threads). A peer whose process is gone (its pid sits next to its counter), or that does not arrive
// within the timeout, fails the op with PeerError, and every later op of the group fails at once.
//
// Buffers in place. shared_zeros() hands out tensors that live in a segment every rank maps, one region per rank.
// all_reduce on a range of such a buffer skips the staging copy: after a barrier, rank r sums segment r of the range
// over the ranks' regions (rank order) straight into its own region, and after a second barrier copies the other
// segments from their owners' regions; a third barrier keeps every region unchanged until all have read it.
// reduce_scatter whose output is the input's own chunk needs only the sum and the last barrier; all_gather whose
// input is its output's own chunk, only the copies between two barriers. That saves the staging copy in (a third
// of the staged all-reduce's memory traffic) and, for the other two, the copies through the slots.
//
// Ops run in call order on one worker thread per group; all_reduce returns a c10d::Work that wait() blocks on.
// Every rank must call the same ops in the same order (as for any collective).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

namespace kolos::dist {

// "boot id/network namespace": equal for processes that can share memory and loopback.
std::string local_host_id();

class ShmGroup {
 public:
  // Collective over the group's `size` ranks through `store` (the group's own namespace). Returns null — and the
  // caller keeps using Gloo — when the ranks are not all on this machine, when size < 2, or when the segment
  // cannot be made (the reason is in `why_not`). `slot_bytes`: the piece each rank stages at a time.
  static std::unique_ptr<ShmGroup> create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                          std::chrono::milliseconds timeout, int64_t slot_bytes,
                                          std::string* why_not = nullptr);
  ~ShmGroup();
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  // True for the tensors all_reduce takes: contiguous fp32 or fp64 on the CPU.
  static bool supports(const at::Tensor& tensor);
  // A zero-filled tensor of `numel` elements of `dtype` (fp32 or fp64) in this rank's region of a fresh shared
  // segment (collective: every rank calls it with the same arguments). all_reduce, reduce_scatter and all_gather
  // work on its ranges in place, as above, provided every rank passes the same range of its own buffer. An undefined tensor
  // on every rank when some rank could not map the memory (`why_not` says why). The segment is unmapped when
  // the last tensor viewing it goes, which may be after the group.
  at::Tensor shared_zeros(int64_t numel, at::ScalarType dtype, std::string* why_not = nullptr);
  // tensor ← Σ over the ranks (÷ size when `average`), asynchronously; the Work's wait() rethrows a PeerError.
  c10::intrusive_ptr<c10d::Work> all_reduce(const at::Tensor& tensor, bool average);
  // Comm::reduce_scatter's contract: the input's N elements read as zero-padded to size·c (c = output's numel,
  // = ceil(N / size)); output ← this rank's chunk of the sum over the ranks (÷ size when `average`), summed in rank
  // order. Input and output: same dtype, contiguous; the output may alias the input's chunk.
  c10::intrusive_ptr<c10d::Work> reduce_scatter(const at::Tensor& input, const at::Tensor& output, bool average);
  // output (size × input's numel) ← the ranks' inputs in rank order. The input may be the output's chunk of this
  // rank.
  c10::intrusive_ptr<c10d::Work> all_gather(const at::Tensor& input, const at::Tensor& output);

 private:
  struct Buffer;  // a segment of shared_zeros()

  ShmGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int size, std::chrono::milliseconds timeout,
           int64_t slot_floats, void* base, size_t bytes);
  void worker_loop();
  // The shared buffer whose region of this rank holds all of `tensor` (its byte offset in the region), or null.
  std::shared_ptr<Buffer> find_buffer(const at::Tensor& tensor, size_t* offset) const;
  template <typename T>
  void run_gather_in_place(const Buffer& buffer, size_t offset, int64_t numel);
  template <typename T>
  void run_in_place(const Buffer& buffer, size_t offset, int64_t numel, bool average, bool scatter_only);
  template <typename T>
  void run_all_reduce(T* data, int64_t numel, bool average);
  template <typename T>
  void run_reduce_scatter(const T* input, int64_t numel, T* output, int64_t chunk, bool average);
  template <typename T>
  void run_all_gather(const T* input, int64_t numel, T* output);
  // Queues `body` on the worker; the returned Work completes when it has run (with its exception, if any).
  c10::intrusive_ptr<c10d::Work> enqueue(std::function<void()> body);
  void barrier();
  uint32_t* counter(int rank) const;
  float* slot(int rank) const;

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  int64_t slot_floats_;
  void* base_;
  size_t bytes_;
  uint32_t generation_ = 0;
  std::vector<float> scratch_;
  bool broken_ = false;
  int buffers_made_ = 0;
  mutable std::mutex buffers_mutex_;
  std::vector<std::weak_ptr<Buffer>> buffers_;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace kolos::dist
