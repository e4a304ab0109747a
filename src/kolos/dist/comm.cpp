#include "kolos/dist/comm.h"

#include <atomic>
#include <functional>
#include <mutex>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "kolos/core/error.h"
#include "kolos/dist/shm.h"

namespace kolos::dist {

struct Handle::State {
  c10::intrusive_ptr<c10d::Work> work;
  std::function<void()> finish_local;  // the part c10d lacks (kAvg's division, reduce_scatter's sum)
  std::shared_ptr<Ledger> ledger;      // null for barrier()
  int64_t event_id = -1;
  std::string what;  // "all_reduce on axis 'dp' (rank 0 of 2)"
  std::chrono::milliseconds timeout;

  std::mutex mutex;                // serialises wait()
  std::atomic<bool> done{false};   // read by done() without the mutex
  std::exception_ptr error;
};

void Handle::wait() {
  if (!state_) return;
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.done) {
    try {
      s.work->wait();
      if (s.finish_local) s.finish_local();
      if (s.ledger) s.ledger->finish(s.event_id);
    } catch (const std::exception& e) {
      s.error = std::make_exception_ptr(PeerError(fmt::format(
          "{} failed: a peer did not answer within {} ms or its connection broke ({}). Every rank of the group "
          "must call the same collectives in the same order; if a rank is only slow, raise dist.timeout_s",
          s.what, s.timeout.count(), e.what())));
    }
    s.work.reset();  // releases the tensors the op kept alive
    s.finish_local = nullptr;
    s.done = true;
  }
  if (s.error) std::rethrow_exception(s.error);
}

bool Handle::done() const { return !state_ || state_->done.load(); }

struct Comm::Launch {
  std::string op;   // the ledger's name of the op
  int64_t bytes;    // already by the ledger's convention
  std::function<c10::intrusive_ptr<c10d::Work>()> issue;
  std::function<void()> finish_local;
  bool has_future = true;  // c10d's send/recv works have no future
  std::string peer;        // ", peer rank 3" where one is known
};

namespace {

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return c10d::ReduceOp::SUM;  // Gloo has no AVG: sum, then divide locally
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

int64_t nbytes(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

void check_tensor(const at::Tensor& t, const char* op, const char* name) {
  KOLOS_CHECK(t.defined(), "{}: the {} tensor is undefined", op, name);
  KOLOS_CHECK(t.is_contiguous(), "{}: the {} tensor (shape {}) must be contiguous; call .contiguous() first", op,
              name, c10::str(t.sizes()));
}

void check_avg(const at::Tensor& t, ReduceOp op, const char* name) {
  KOLOS_CHECK(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()),
              "{}: ReduceOp::kAvg needs a floating-point tensor, got {}", name, c10::toString(t.scalar_type()));
}

}  // namespace

Comm::Comm(int rank, int size, std::string axis, std::chrono::milliseconds timeout, std::shared_ptr<Ledger> ledger)
    : rank_(rank), size_(size), axis_(std::move(axis)), timeout_(timeout), ledger_(std::move(ledger)) {}

Comm::~Comm() = default;

std::shared_ptr<Comm> Comm::create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                   const std::string& axis, std::chrono::milliseconds timeout) {
  Options options;
  options.timeout = timeout;
  return create(store, rank, size, axis, std::move(options));
}

std::shared_ptr<Comm> Comm::create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                   const std::string& axis, Options options) {
  KOLOS_CHECK(store, "Comm::create(axis '{}'): the store is null", axis);
  KOLOS_CHECK(size >= 1 && rank >= 0 && rank < size, "Comm::create(axis '{}'): rank {} is not in [0, {})", axis,
              rank, size);
  KOLOS_CHECK(options.timeout.count() > 0, "dist.timeout_s must be > 0, got {} ms", options.timeout.count());
  KOLOS_CHECK(options.iface.empty() || options.hostname.empty(),
              "Comm::create(axis '{}'): give a network interface ('{}') or a host name ('{}'), not both", axis,
              options.iface, options.hostname);
  auto ledger = options.ledger ? options.ledger : std::make_shared<Ledger>();
  std::shared_ptr<Comm> comm(new Comm(rank, size, axis, options.timeout, std::move(ledger)));

  auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
  try {
    if (!options.iface.empty())
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(options.iface));
    else if (!options.hostname.empty())
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(options.hostname));
    else
      gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  } catch (const std::exception& e) {
    throw InputError(fmt::format("cannot bind Gloo to {} (set dist.iface to an interface that reaches the "
                                 "master): {}",
                                 options.iface.empty() ? fmt::format("host '{}'", options.hostname)
                                                       : fmt::format("interface '{}'", options.iface),
                                 e.what()));
  }
  try {
    comm->group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, gloo_options);
    if (options.shm) comm->shm_ = ShmGroup::create(store, rank, size, options.timeout, options.shm_slot_bytes);
  } catch (const std::exception& e) {
    throw PeerError(fmt::format("rendezvous of axis '{}' (rank {} of {}) failed: not every rank joined within {} ms "
                                "({})",
                                axis, rank, size, options.timeout.count(), e.what()));
  }
  return comm;
}

std::string Comm::describe(const std::string& op) const {
  return fmt::format("{} on axis '{}' (rank {} of {})", op, axis_, rank_, size_);
}

void Comm::check_peer(int peer, const char* what) const {
  KOLOS_CHECK(peer >= 0 && peer < size_, "axis '{}' (rank {} of {}): {} rank {} is not in [0, {})", axis_, rank_,
              size_, what, peer, size_);
}

Handle Comm::launch(Launch launch) {
  auto state = std::make_shared<Handle::State>();
  state->work = launch.issue();  // only enqueues; an op that cannot be issued is not counted
  state->ledger = ledger_;
  state->event_id = ledger_->record(axis_, launch.op, launch.bytes);
  state->what = describe(launch.op) + launch.peer;
  state->timeout = timeout_;
  state->finish_local = std::move(launch.finish_local);
  if (launch.has_future) {
    // Marks the event's end when the backend finishes, which may be long before the caller's wait().
    state->work->getFuture()->addCallback([ledger = ledger_, id = state->event_id](c10::ivalue::Future& future) {
      if (!future.hasError()) ledger->finish(id);
    });
  }
  return Handle(std::move(state));
}

at::Tensor Comm::shared_zeros(int64_t numel, at::ScalarType dtype) {
  KOLOS_CHECK(numel >= 0 && (dtype == at::kFloat || dtype == at::kDouble),
              "{}: {} elements of {} (expected fp32 or fp64)", describe("shared_zeros"), numel, c10::toString(dtype));
  if (shm_) {
    at::Tensor shared = shm_->shared_zeros(numel, dtype);
    if (shared.defined()) return shared;
  }
  return at::zeros({numel}, dtype);
}

Handle Comm::all_reduce_async(const at::Tensor& tensor, ReduceOp op) {
  check_tensor(tensor, "all_reduce", "input");
  check_avg(tensor, op, "all_reduce");
  Launch l{"all_reduce", algorithmic_bytes("all_reduce", nbytes(tensor), size_)};
  if (shm_ && ShmGroup::supports(tensor) && (op == ReduceOp::kSum || op == ReduceOp::kAvg)) {
    l.issue = [this, tensor, op] { return shm_->all_reduce(tensor, op == ReduceOp::kAvg); };
    l.has_future = false;
    return launch(std::move(l));
  }
  l.issue = [this, tensor, op] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    return group_->allreduce(tensors, opts);
  };
  if (op == ReduceOp::kAvg) l.finish_local = [tensor, n = size_] { tensor.div_(n); };
  return launch(std::move(l));
}

Handle Comm::reduce_scatter_async(const at::Tensor& input, const at::Tensor& output, ReduceOp op) {
  check_tensor(input, "reduce_scatter", "input");
  check_tensor(output, "reduce_scatter", "output");
  check_avg(input, op, "reduce_scatter");
  const int64_t n = size_, numel = input.numel(), chunk = chunk_numel(numel);
  KOLOS_CHECK(output.numel() == chunk && output.scalar_type() == input.scalar_type(),
              "{}: the output must have ceil({} / {}) = {} elements of {}, got {} of {}", describe("reduce_scatter"),
              numel, n, chunk, c10::toString(input.scalar_type()), output.numel(),
              c10::toString(output.scalar_type()));
  if (shm_ && ShmGroup::supports(input) && ShmGroup::supports(output) &&
      (op == ReduceOp::kSum || op == ReduceOp::kAvg)) {
    Launch l{"reduce_scatter", algorithmic_bytes("reduce_scatter", n * chunk * input.element_size(), size_)};
    l.issue = [this, input, output, op] { return shm_->reduce_scatter(input, output, op == ReduceOp::kAvg); };
    l.has_future = false;
    return launch(std::move(l));
  }
  at::Tensor send = input.view(-1);
  if (numel != n * chunk) {
    send = at::zeros({n * chunk}, input.options());
    send.narrow(0, 0, numel).copy_(input.view(-1));
  }
  at::Tensor recv = at::empty({n * chunk}, input.options());
  Launch l{"reduce_scatter", algorithmic_bytes("reduce_scatter", n * chunk * input.element_size(), size_)};
  l.issue = [this, send, recv]() mutable {
    std::vector<int64_t> even_splits;
    return group_->alltoall_base(recv, send, even_splits, even_splits);
  };
  l.finish_local = [recv, output, op, n, chunk] {
    at::Tensor parts = recv.view({n, chunk});  // row j: rank j's contribution to this rank's chunk
    at::Tensor out = output.view(-1);
    switch (op) {
      case ReduceOp::kSum: out.copy_(parts.sum(0)); break;
      case ReduceOp::kAvg: out.copy_(parts.sum(0)).div_(n); break;
      case ReduceOp::kMax: out.copy_(parts.amax(0)); break;
      case ReduceOp::kMin: out.copy_(parts.amin(0)); break;
    }
  };
  return launch(std::move(l));
}

Handle Comm::all_gather_async(const at::Tensor& input, const at::Tensor& output) {
  check_tensor(input, "all_gather", "input");
  check_tensor(output, "all_gather", "output");
  const int64_t m = input.numel();
  KOLOS_CHECK(output.numel() == size_ * m && output.scalar_type() == input.scalar_type(),
              "{}: the output must have {} × {} = {} elements of {}, got {} of {}", describe("all_gather"), size_, m,
              size_ * m, c10::toString(input.scalar_type()), output.numel(), c10::toString(output.scalar_type()));
  Launch l{"all_gather", algorithmic_bytes("all_gather", nbytes(output), size_)};
  if (shm_ && ShmGroup::supports(input) && ShmGroup::supports(output)) {
    l.issue = [this, input, output] { return shm_->all_gather(input, output); };
    l.has_future = false;
    return launch(std::move(l));
  }
  // Gloo writes every output chunk, this rank's too, while it may still read the input: an input that is this
  // rank's chunk of the output is sent from a copy.
  const char* in = static_cast<const char*>(input.data_ptr());
  const char* out = static_cast<const char*>(output.data_ptr());
  const at::Tensor send = in < out + nbytes(output) && out < in + nbytes(input) ? input.clone() : input;
  l.issue = [this, input = send, output, m] {
    std::vector<std::vector<at::Tensor>> outputs(1);
    at::Tensor flat = output.view(-1);
    for (int r = 0; r < size_; ++r) outputs[0].push_back(flat.narrow(0, r * m, m).view(input.sizes()));
    std::vector<at::Tensor> inputs{input};
    return group_->allgather(outputs, inputs);
  };
  return launch(std::move(l));
}

Handle Comm::broadcast_async(const at::Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast", "input");
  check_peer(root, "root");
  Launch l{"broadcast", algorithmic_bytes("broadcast", nbytes(tensor), size_)};
  l.issue = [this, tensor, root] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    return group_->broadcast(tensors, opts);
  };
  return launch(std::move(l));
}

Handle Comm::reduce_async(const at::Tensor& tensor, int root, ReduceOp op) {
  check_tensor(tensor, "reduce", "input");
  check_peer(root, "root");
  check_avg(tensor, op, "reduce");
  Launch l{"reduce", algorithmic_bytes("reduce", nbytes(tensor), size_)};
  l.issue = [this, tensor, root, op] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::ReduceOptions opts;
    opts.rootRank = root;
    opts.reduceOp = to_c10d(op);
    return group_->reduce(tensors, opts);
  };
  if (op == ReduceOp::kAvg && rank_ == root) l.finish_local = [tensor, n = size_] { tensor.div_(n); };
  return launch(std::move(l));
}

Handle Comm::all_to_all_async(const at::Tensor& input, const at::Tensor& output) {
  check_tensor(input, "all_to_all", "input");
  check_tensor(output, "all_to_all", "output");
  KOLOS_CHECK(input.dim() >= 1 && input.size(0) % size_ == 0,
              "{}: dim 0 of the input (shape {}) must be divisible by the group size {}", describe("all_to_all"),
              c10::str(input.sizes()), size_);
  KOLOS_CHECK(output.sizes() == input.sizes() && output.scalar_type() == input.scalar_type(),
              "{}: the output (shape {}, {}) must have the input's shape {} and dtype {}", describe("all_to_all"),
              c10::str(output.sizes()), c10::toString(output.scalar_type()),
              c10::str(input.sizes()), c10::toString(input.scalar_type()));
  Launch l{"all_to_all", algorithmic_bytes("all_to_all", nbytes(input), size_)};
  l.issue = [this, in = input, out = output]() mutable {
    std::vector<int64_t> even_splits;
    return group_->alltoall_base(out, in, even_splits, even_splits);
  };
  return launch(std::move(l));
}

Handle Comm::send_async(const at::Tensor& tensor, int dst, int tag) {
  check_tensor(tensor, "send", "input");
  check_peer(dst, "destination");
  KOLOS_CHECK(dst != rank_, "{}: a rank cannot send to itself", describe("send"));
  Launch l{"send", algorithmic_bytes("send", nbytes(tensor), size_)};
  l.issue = [this, tensor, dst, tag] {
    std::vector<at::Tensor> tensors{tensor};
    return group_->send(tensors, dst, tag);
  };
  l.has_future = false;
  l.peer = fmt::format(", peer rank {}", dst);
  return launch(std::move(l));
}

Handle Comm::recv_async(const at::Tensor& tensor, int src, int tag) {
  check_tensor(tensor, "recv", "output");
  check_peer(src, "source");
  KOLOS_CHECK(src != rank_, "{}: a rank cannot receive from itself", describe("recv"));
  Launch l{"recv", algorithmic_bytes("recv", nbytes(tensor), size_)};
  l.issue = [this, tensor, src, tag] {
    std::vector<at::Tensor> tensors{tensor};
    return group_->recv(tensors, src, tag);
  };
  l.has_future = false;
  l.peer = fmt::format(", peer rank {}", src);
  return launch(std::move(l));
}

void Comm::all_reduce(const at::Tensor& tensor, ReduceOp op) { all_reduce_async(tensor, op).wait(); }
void Comm::reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op) {
  reduce_scatter_async(input, output, op).wait();
}
void Comm::all_gather(const at::Tensor& input, const at::Tensor& output) { all_gather_async(input, output).wait(); }
void Comm::broadcast(const at::Tensor& tensor, int root) { broadcast_async(tensor, root).wait(); }
void Comm::reduce(const at::Tensor& tensor, int root, ReduceOp op) { reduce_async(tensor, root, op).wait(); }
void Comm::all_to_all(const at::Tensor& input, const at::Tensor& output) { all_to_all_async(input, output).wait(); }
void Comm::send(const at::Tensor& tensor, int dst, int tag) { send_async(tensor, dst, tag).wait(); }
void Comm::recv(const at::Tensor& tensor, int src, int tag) { recv_async(tensor, src, tag).wait(); }

void Comm::barrier() {
  auto state = std::make_shared<Handle::State>();
  state->what = describe("barrier");
  state->timeout = timeout_;
  state->work = group_->barrier();
  Handle(std::move(state)).wait();
}

}  // namespace kolos::dist
