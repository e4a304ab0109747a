// Comm: the collectives of one process group (one mesh axis, or a set of axes), over c10d's ProcessGroupGloo.
//
// Every rank of the group calls the same collectives in the same order; a collective is a rendezvous. Each op has a
// blocking form and an `_async` form returning a Handle; the blocking form is the `_async` one followed by wait().
// Tensors are in-place buffers shared with the caller: they must stay alive and untouched from the call until
// wait() has returned. All tensors must be contiguous; ranks must pass the same shapes and dtypes.
//
// Every call is recorded in the ledger (kolos/dist/ledger.h, which states the byte convention) under this Comm's
// axis name, at the moment of the call, in the ledger's current phase. barrier() is not recorded.
//
// Failures: a peer that does not answer within `timeout` (or whose connection breaks) makes wait() — or create() —
// throw kolos::PeerError naming the op, the axis and this rank; nothing hangs longer than about one timeout per
// pending op. After a PeerError the group is broken: destroy the Comm. Bad arguments throw kolos::InputError
// at the call.
//
// Thread-safety: one thread issues the calls of a Comm (ops are queued in call order); Handles may be waited on
// from any thread. Distinct Comms (one per rank, as in the tests) are independent.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kolos/dist/ledger.h"

namespace kolos::dist {

class ShmGroup;

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// The pending result of an `_async` op.
class Handle {
 public:
  struct State;
  Handle() = default;  // an empty handle: wait() returns at once
  explicit Handle(std::shared_ptr<State> state) : state_(std::move(state)) {}

  // Blocks until the op is complete and its output tensors hold the result (including the local part of ops that
  // c10d lacks: the division of kAvg, the sum of reduce_scatter). Throws PeerError as described above.
  // Idempotent: a second wait() returns at once, or rethrows the same PeerError.
  void wait();
  // True once wait() has returned. Never blocks.
  bool done() const;

 private:
  std::shared_ptr<State> state_;
};

class Comm {
 public:
  struct Options {
    // How long a peer may stay silent in any op (and in the rendezvous of create()) before PeerError. > 0.
    std::chrono::milliseconds timeout{std::chrono::minutes(5)};
    // Network interface Gloo binds ("eth0"); when empty, `hostname` (an address or name of this host); when both
    // are empty, the address this host's name resolves to (127.0.0.1 on many hosts: fine for one machine only).
    std::string iface;
    std::string hostname;
    // When every rank of the group runs on this machine, fp32/fp64 all-reduce and reduce-scatter (sum, average) and
    // all-gather go through shared memory (kolos/dist/shm.h) instead of Gloo's TCP; everything else stays on Gloo.
    // `shm_slot_bytes`: the piece each rank stages at a time.
    bool shm = false;
    int64_t shm_slot_bytes = 8 << 20;
    // Shared with the other Comms of a mesh; a fresh ledger when null.
    std::shared_ptr<Ledger> ledger;
  };

  // Collective over the `size` ranks: each must call create() with the same store (or stores sharing one
  // namespace) at about the same time. A group needs a store namespace of its own (wrap a shared store in a
  // c10d::PrefixStore). `axis` names the group in the ledger and in errors ("dp", "tp", "world" ...).
  static std::shared_ptr<Comm> create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                      const std::string& axis, Options options);
  static std::shared_ptr<Comm> create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                      const std::string& axis, std::chrono::milliseconds timeout);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const { return rank_; }
  // Whether fp32/fp64 all-reduce, reduce-scatter and all-gather use shared memory (Options::shm and every rank on this machine).
  bool uses_shm() const { return shm_ != nullptr; }
  int size() const { return size_; }
  const std::string& axis() const { return axis_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  Ledger& ledger() const { return *ledger_; }
  const std::shared_ptr<Ledger>& shared_ledger() const { return ledger_; }

  // A zero-filled fp32/fp64 buffer of `numel` elements for collectives in place (collective: every rank calls it
  // with the same arguments). When the group uses shared memory the buffer lies in memory the peers map, and
  // all_reduce (sum, average) — reduce_scatter whose output is the input's own chunk, all_gather whose input is
  // the output's own chunk — on a range of it skip the staging copies (kolos/dist/shm.h); every rank must then pass the same range of its buffer. Otherwise, or
  // when the shared memory cannot be had, a plain at::zeros.
  at::Tensor shared_zeros(int64_t numel, at::ScalarType dtype);

  // tensor ← op over the ranks' tensors, on every rank.
  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  Handle all_reduce_async(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);

  // Reduce the ranks' `input`s (any shape, read as flat, N elements) and keep this rank's chunk in `output`.
  // Contract: chunks have c = ceil(N / n) elements; the flat input is zero-padded to n·c, and rank r receives
  // elements [r·c, (r+1)·c) of the reduction — so on the last rank(s) the tail past N is the reduction of the
  // padding (0 for kSum/kAvg/kMax/kMin of zeros). `output` must have c elements (use chunk_numel()), the dtype of
  // `input`. Gloo has no reduce-scatter: this is an all-to-all of the n chunks plus a local reduction, which sends
  // the same (n−1)·c elements as a ring reduce-scatter; the ledger counts it as one reduce_scatter of n·c elements.
  void reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op = ReduceOp::kSum);
  Handle reduce_scatter_async(const at::Tensor& input, const at::Tensor& output, ReduceOp op = ReduceOp::kSum);
  // c = ceil(numel / size()): the per-rank chunk of reduce_scatter.
  int64_t chunk_numel(int64_t numel) const { return (numel + size_ - 1) / size_; }

  // `output` (n × input.numel() elements, any shape, read as flat) ← the ranks' inputs concatenated in rank order.
  // The input may be this rank's chunk of the output (the in-place form; no copy at all on a shared_zeros buffer).
  void all_gather(const at::Tensor& input, const at::Tensor& output);
  Handle all_gather_async(const at::Tensor& input, const at::Tensor& output);

  // tensor ← root's tensor, on every rank.
  void broadcast(const at::Tensor& tensor, int root);
  Handle broadcast_async(const at::Tensor& tensor, int root);

  // On `root`: tensor ← op over the ranks' tensors. On other ranks the tensor's content afterwards is unspecified.
  void reduce(const at::Tensor& tensor, int root, ReduceOp op = ReduceOp::kSum);
  Handle reduce_async(const at::Tensor& tensor, int root, ReduceOp op = ReduceOp::kSum);

  // input and output: same shape, dim 0 divisible by n. Chunk j of dim 0 of `input` goes to rank j; chunk j of
  // `output` comes from rank j.
  void all_to_all(const at::Tensor& input, const at::Tensor& output);
  Handle all_to_all_async(const at::Tensor& input, const at::Tensor& output);

  // Point to point; the receiver's tensor has the sender's shape and dtype; (peer, tag) pairs calls up.
  void send(const at::Tensor& tensor, int dst, int tag = 0);
  Handle send_async(const at::Tensor& tensor, int dst, int tag = 0);
  void recv(const at::Tensor& tensor, int src, int tag = 0);
  Handle recv_async(const at::Tensor& tensor, int src, int tag = 0);

  // Returns once every rank has called barrier(). Not recorded in the ledger.
  void barrier();

 private:
  Comm(int rank, int size, std::string axis, std::chrono::milliseconds timeout, std::shared_ptr<Ledger> ledger);
  struct Launch;
  Handle launch(Launch launch);
  std::string describe(const std::string& op) const;
  void check_peer(int peer, const char* what) const;

  int rank_;
  int size_;
  std::string axis_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<Ledger> ledger_;
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  std::unique_ptr<ShmGroup> shm_;
};

}  // namespace kolos::dist
