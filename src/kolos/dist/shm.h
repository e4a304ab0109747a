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
  // tensor ← Σ over the ranks (÷ size when `average`), asynchronously; the Work's wait() rethrows a PeerError.
  c10::intrusive_ptr<c10d::Work> all_reduce(const at::Tensor& tensor, bool average);
  // Comm::reduce_scatter's contract: the input's N elements read as zero-padded to size·c (c = output's numel,
  // = ceil(N / size)); output ← this rank's chunk of the sum over the ranks (÷ size when `average`), summed in rank
  // order. Input and output: same dtype, contiguous; the output may alias the input's chunk.
  c10::intrusive_ptr<c10d::Work> reduce_scatter(const at::Tensor& input, const at::Tensor& output, bool average);
  // output (size × input's numel) ← the ranks' inputs in rank order.
  c10::intrusive_ptr<c10d::Work> all_gather(const at::Tensor& input, const at::Tensor& output);

 private:
  ShmGroup(int rank, int size, std::chrono::milliseconds timeout, int64_t slot_floats, void* base, size_t bytes);
  void worker_loop();
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

  int rank_, size_;
  std::chrono::milliseconds timeout_;
  int64_t slot_floats_;
  void* base_;
  size_t bytes_;
  uint32_t generation_ = 0;
  std::vector<float> scratch_;
  bool broken_ = false;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace kolos::dist
