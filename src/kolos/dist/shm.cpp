#include "kolos/dist/shm.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <fstream>
#include <random>

#include <ATen/Dispatch.h>
#include <fmt/format.h>

#include "kolos/core/error.h"

namespace kolos::dist {

namespace {

constexpr size_t kLine = 64;     // one cache line per barrier counter
constexpr int64_t kBlock = 2048;  // elements summed at a time: a block of each rank's data stays in L1

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
std::string string_of(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }

long futex(uint32_t* addr, int op, uint32_t value, const timespec* timeout) {
  return ::syscall(SYS_futex, addr, op, value, timeout, nullptr, 0);
}

// A Work completed by the group's worker thread.
class ShmWork : public c10d::Work {
 public:
  void complete(std::exception_ptr error) { finish(std::move(error)); }
};

// acc[i] += x[i], then (when `divisor` != 0) acc[i] /= divisor, for i < len: in 32-byte vectors through GCC's
// vector extension (pairs of SSE2 registers on any x86-64), as -O2 does not vectorize loops. Element by element,
// so the results equal the scalar loop's bit for bit.
template <typename T>
void add_into(T* acc, const T* x, int64_t len) {
  typedef T V __attribute__((vector_size(32)));
  constexpr int64_t k = sizeof(V) / sizeof(T);
  int64_t i = 0;
  for (; i + k <= len; i += k) {
    V a, b;
    std::memcpy(&a, acc + i, sizeof(V));
    std::memcpy(&b, x + i, sizeof(V));
    a += b;
    std::memcpy(acc + i, &a, sizeof(V));
  }
  for (; i < len; ++i) acc[i] += x[i];
}

template <typename T>
void divide(T* acc, T divisor, int64_t len) {
  typedef T V __attribute__((vector_size(32)));
  constexpr int64_t k = sizeof(V) / sizeof(T);
  int64_t i = 0;
  for (; i + k <= len; i += k) {
    V a;
    std::memcpy(&a, acc + i, sizeof(V));
    a /= divisor;
    std::memcpy(acc + i, &a, sizeof(V));
  }
  for (; i < len; ++i) acc[i] /= divisor;
}

// acc[0, len) ← Σ_q source(q)[0, len) over the n ranks in rank order (so every rank that sums a block gets the
// same bits), ÷ n when averaging (as Tensor::div_ would).
template <typename T, typename Source>
void sum_ranks(T* acc, Source source, int n, int64_t len, bool average) {
  std::memcpy(acc, source(0), static_cast<size_t>(len) * sizeof(T));
  for (int q = 1; q < n; ++q) add_into(acc, source(q), len);
  if (average) divide(acc, static_cast<T>(n), len);
}

// Maps a fresh shared segment of `bytes` (zero-filled) on every rank of a group, its name passed through `store`
// under `key`. Rank 0 creates it with its memory reserved (so a full /dev/shm fails here, not as a SIGBUS on a later
// touch); every rank reports whether it mapped it, and all agree: null on every rank if any failed.
void* map_segment(c10d::Store& store, const std::string& key, int rank, int size, size_t bytes, std::string* why_not) {
  std::string name;
  if (rank == 0) {
    std::random_device rd;
    name = fmt::format("/kolos-{}-{:x}", ::getpid(), (static_cast<uint64_t>(rd()) << 32) | rd());
    const int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    const bool ok = fd >= 0 && ::ftruncate(fd, static_cast<off_t>(bytes)) == 0 &&
                    ::posix_fallocate(fd, 0, static_cast<off_t>(bytes)) == 0;
    if (fd >= 0) ::close(fd);
    if (!ok && fd >= 0) ::shm_unlink(name.c_str());
    store.set(key + "/name", bytes_of(ok ? name : std::string()));
  }
  name = string_of(store.get(key + "/name"));
  void* base = MAP_FAILED;
  if (!name.empty()) {
    const int fd = ::shm_open(name.c_str(), O_RDWR, 0600);
    if (fd >= 0) {
      base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      ::close(fd);
    }
  }
  store.set(fmt::format("{}/mapped/{}", key, rank), bytes_of(base != MAP_FAILED ? "1" : "0"));
  bool all_mapped = true;
  for (int r = 0; r < size; ++r)
    if (string_of(store.get(fmt::format("{}/mapped/{}", key, r))) != "1") all_mapped = false;
  if (rank == 0 && !name.empty()) ::shm_unlink(name.c_str());  // every rank has opened it (or given up)
  if (all_mapped) return base;
  if (base != MAP_FAILED) ::munmap(base, bytes);
  if (why_not)
    *why_not = name.empty() ? fmt::format("rank 0 could not create a shared-memory segment of {} bytes", bytes)
                            : "a rank could not map the shared-memory segment";
  return nullptr;
}

}  // namespace

// A segment of shared_zeros(): one region per rank, each page-aligned.
struct ShmGroup::Buffer {
  char* base = nullptr;
  size_t bytes = 0, region = 0;
  ~Buffer() { ::munmap(base, bytes); }
  char* region_of(int rank) const { return base + region * static_cast<size_t>(rank); }
};

std::string local_host_id() {
  char ns[64] = {};
  const ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof(ns) - 1);
  return read_line("/proc/sys/kernel/random/boot_id") + "/" + (n > 0 ? std::string(ns, static_cast<size_t>(n)) : "");
}

std::unique_ptr<ShmGroup> ShmGroup::create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                           std::chrono::milliseconds timeout, int64_t slot_bytes,
                                           std::string* why_not) {
  auto fail = [&](const std::string& reason) -> std::unique_ptr<ShmGroup> {
    if (why_not) *why_not = reason;
    return nullptr;
  };
  if (size < 2) return fail("a group of one");
  // Every rank must agree, so each publishes its host id and whether it could map the segment.
  const std::string host = local_host_id();
  store->set(fmt::format("shm/host/{}", rank), bytes_of(host));
  bool local = true;
  for (int r = 0; r < size; ++r)
    if (string_of(store->get(fmt::format("shm/host/{}", r))) != host) local = false;
  if (!local) return fail("the ranks are on different machines");

  const int64_t slot_floats = std::max<int64_t>(kLine / 4, slot_bytes / 4 / static_cast<int64_t>(kLine / 4) *
                                                              static_cast<int64_t>(kLine / 4));
  const size_t bytes = kLine * static_cast<size_t>(size) + static_cast<size_t>(slot_floats) * 4 * size;
  void* base = map_segment(*store, "shm/slots", rank, size, bytes, why_not);
  if (!base) return nullptr;
  return std::unique_ptr<ShmGroup>(new ShmGroup(store, rank, size, timeout, slot_floats, base, bytes));
}

ShmGroup::ShmGroup(c10::intrusive_ptr<c10d::Store> store, int rank, int size, std::chrono::milliseconds timeout,
                   int64_t slot_floats, void* base, size_t bytes)
    : store_(std::move(store)),
      rank_(rank),
      size_(size),
      timeout_(timeout),
      slot_floats_(slot_floats),
      base_(base),
      bytes_(bytes) {
  // Next to this rank's barrier counter: its pid, so a waiting peer can tell a dead rank from a slow one.
  __atomic_store_n(counter(rank_) + 1, static_cast<uint32_t>(::getpid()), __ATOMIC_RELEASE);
  // Room for a block of doubles, or a slot segment of doubles.
  scratch_.resize(static_cast<size_t>(std::max<int64_t>(2 * kBlock, (slot_floats_ + size_ - 1) / size_ + 2)));
  worker_ = std::thread([this] { worker_loop(); });
}

ShmGroup::~ShmGroup() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  ::munmap(base_, bytes_);
}

bool ShmGroup::supports(const at::Tensor& tensor) {
  return tensor.defined() && tensor.device().is_cpu() && tensor.is_contiguous() &&
         (tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble);
}

at::Tensor ShmGroup::shared_zeros(int64_t numel, at::ScalarType dtype, std::string* why_not) {
  KOLOS_ASSERT(numel >= 0 && (dtype == at::kFloat || dtype == at::kDouble), "ShmGroup::shared_zeros: {} of {}",
               numel, c10::toString(dtype));
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t region = std::max<size_t>(page, (static_cast<size_t>(numel) * at::elementSize(dtype) + page - 1) /
                                                   page * page);
  const size_t bytes = region * static_cast<size_t>(size_);
  void* base = map_segment(*store_, fmt::format("shm/buffer/{}", buffers_made_++), rank_, size_, bytes, why_not);
  if (!base) return {};
  auto buffer = std::make_shared<Buffer>();
  buffer->base = static_cast<char*>(base);
  buffer->bytes = bytes;
  buffer->region = region;
  {
    std::lock_guard<std::mutex> lock(buffers_mutex_);
    buffers_.erase(std::remove_if(buffers_.begin(), buffers_.end(), [](const auto& b) { return b.expired(); }),
                   buffers_.end());
    buffers_.push_back(buffer);
  }
  // The tensor's deleter holds the segment: it is unmapped when the last view of the tensor goes.
  return at::from_blob(
      buffer->region_of(rank_), {numel}, [buffer](void*) {}, at::TensorOptions().dtype(dtype));
}

std::shared_ptr<ShmGroup::Buffer> ShmGroup::find_buffer(const at::Tensor& tensor, size_t* offset) const {
  const char* p = static_cast<const char*>(tensor.data_ptr());
  const size_t n = static_cast<size_t>(tensor.numel()) * tensor.element_size();
  std::lock_guard<std::mutex> lock(buffers_mutex_);
  for (const auto& weak : buffers_) {
    auto buffer = weak.lock();
    if (!buffer) continue;
    const char* own = buffer->region_of(rank_);
    if (p >= own && p + n <= own + buffer->region) {
      *offset = static_cast<size_t>(p - own);
      return buffer;
    }
  }
  return nullptr;
}

uint32_t* ShmGroup::counter(int rank) const {
  return reinterpret_cast<uint32_t*>(static_cast<char*>(base_) + kLine * static_cast<size_t>(rank));
}

float* ShmGroup::slot(int rank) const {
  return reinterpret_cast<float*>(static_cast<char*>(base_) + kLine * static_cast<size_t>(size_)) +
         slot_floats_ * rank;
}

c10::intrusive_ptr<c10d::Work> ShmGroup::enqueue(std::function<void()> body) {
  auto work = c10::make_intrusive<ShmWork>();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back([this, body = std::move(body), work] {
      std::exception_ptr error;
      try {
        KOLOS_CHECK(!broken_, "an earlier shared-memory collective of this group failed");
        body();
      } catch (...) {
        broken_ = true;
        error = std::current_exception();
      }
      work->complete(error);
    });
  }
  cv_.notify_one();
  return work;
}

c10::intrusive_ptr<c10d::Work> ShmGroup::all_reduce(const at::Tensor& tensor, bool average) {
  KOLOS_ASSERT(supports(tensor), "ShmGroup::all_reduce needs a contiguous fp32 or fp64 CPU tensor");
  size_t offset = 0;
  if (auto buffer = find_buffer(tensor, &offset)) {
    return enqueue([this, buffer, offset, numel = tensor.numel(), dtype = tensor.scalar_type(), average] {
      AT_DISPATCH_FLOATING_TYPES(dtype, "shm all_reduce in place",
                                 [&] { run_in_place<scalar_t>(*buffer, offset, numel, average, false); });
    });
  }
  return enqueue([this, tensor, average] {
    AT_DISPATCH_FLOATING_TYPES(tensor.scalar_type(), "shm all_reduce",
                               [&] { run_all_reduce(tensor.data_ptr<scalar_t>(), tensor.numel(), average); });
  });
}

c10::intrusive_ptr<c10d::Work> ShmGroup::reduce_scatter(const at::Tensor& input, const at::Tensor& output,
                                                        bool average) {
  KOLOS_ASSERT(supports(input) && supports(output) && input.scalar_type() == output.scalar_type() &&
                   output.numel() * size_ >= input.numel(),
               "ShmGroup::reduce_scatter: bad tensors");
  size_t offset = 0;
  const int64_t chunk = output.numel();
  if (input.numel() == chunk * size_ &&
      output.data_ptr() == static_cast<char*>(input.data_ptr()) + chunk * rank_ * input.element_size()) {
    if (auto buffer = find_buffer(input, &offset)) {
      return enqueue([this, buffer, offset, numel = input.numel(), dtype = input.scalar_type(), average] {
        AT_DISPATCH_FLOATING_TYPES(dtype, "shm reduce_scatter in place",
                                   [&] { run_in_place<scalar_t>(*buffer, offset, numel, average, true); });
      });
    }
  }
  return enqueue([this, input, output, average] {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "shm reduce_scatter", [&] {
      run_reduce_scatter(input.data_ptr<scalar_t>(), input.numel(), output.data_ptr<scalar_t>(), output.numel(),
                         average);
    });
  });
}

c10::intrusive_ptr<c10d::Work> ShmGroup::all_gather(const at::Tensor& input, const at::Tensor& output) {
  KOLOS_ASSERT(supports(input) && supports(output) && input.scalar_type() == output.scalar_type() &&
                   output.numel() == input.numel() * size_,
               "ShmGroup::all_gather: bad tensors");
  size_t offset = 0;
  if (input.data_ptr() == static_cast<char*>(output.data_ptr()) + input.numel() * rank_ * input.element_size()) {
    if (auto buffer = find_buffer(output, &offset)) {
      return enqueue([this, buffer, offset, numel = output.numel(), dtype = output.scalar_type()] {
        AT_DISPATCH_FLOATING_TYPES(dtype, "shm all_gather in place",
                                   [&] { run_gather_in_place<scalar_t>(*buffer, offset, numel); });
      });
    }
  }
  return enqueue([this, input, output] {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "shm all_gather",
                               [&] { run_all_gather(input.data_ptr<scalar_t>(), input.numel(), output.data_ptr<scalar_t>()); });
  });
}

void ShmGroup::worker_loop() {
  // The worker copies and sums while the compute threads run; a barrier waits on the slowest rank's worker, so a
  // worker that has to queue behind a compute thread for a time slice stalls every rank. Ask for a higher priority
  // (allowed with CAP_SYS_NICE, else silently kept at the default).
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), -10);
  for (;;) {
    std::function<void()> op;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left
      op = std::move(queue_.front());
      queue_.pop_front();
    }
    op();
  }
}

void ShmGroup::barrier() {
  ++generation_;
  const uint32_t g = generation_;
  __atomic_store_n(counter(rank_), g, __ATOMIC_RELEASE);
  futex(counter(rank_), FUTEX_WAKE, INT_MAX, nullptr);
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (int q = 0; q < size_; ++q) {
    if (q == rank_) continue;
    uint32_t* c = counter(q);
    for (int spin = 0;; ++spin) {
      const uint32_t seen = __atomic_load_n(c, __ATOMIC_ACQUIRE);
      if (static_cast<int32_t>(seen - g) >= 0) break;
      if (spin < 256) {
        __builtin_ia32_pause();
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      const auto pid = static_cast<pid_t>(__atomic_load_n(c + 1, __ATOMIC_ACQUIRE));
      if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH)
        throw PeerError(fmt::format("rank {} (pid {}) died before the shared-memory barrier", q, pid));
      if (now >= deadline)
        throw PeerError(fmt::format("rank {} did not reach the shared-memory barrier within {} ms", q,
                                    timeout_.count()));
      const timespec wait = {0, 2'000'000};  // re-check the deadline every 2 ms
      futex(c, FUTEX_WAIT, seen, &wait);
    }
  }
}

template <typename T>
void ShmGroup::run_all_reduce(T* data, int64_t numel, bool average) {
  // A slot holds slot_floats_ floats, or half as many doubles.
  const int64_t n = size_, capacity = slot_floats_ * 4 / static_cast<int64_t>(sizeof(T));
  auto slot = [this](int r) { return reinterpret_cast<T*>(this->slot(r)); };
  for (int64_t off = 0; off < numel; off += capacity) {
    const int64_t piece = std::min(capacity, numel - off);
    const int64_t seg = (piece + n - 1) / n;
    std::memcpy(slot(rank_), data + off, static_cast<size_t>(piece) * sizeof(T));
    barrier();
    // This rank's segment, summed over the slots in rank order (the same order whichever rank sums it), in blocks
    // that stay in L1; each block goes both into this rank's slot (for the others) and straight into `data`.
    const int64_t s0 = std::min(piece, rank_ * seg), s1 = std::min(piece, s0 + seg);
    T* acc = reinterpret_cast<T*>(scratch_.data());
    for (int64_t b0 = s0; b0 < s1; b0 += kBlock) {
      const int64_t len = std::min(kBlock, s1 - b0);
      sum_ranks(acc, [&](int q) { return slot(q) + b0; }, size_, len, average);
      // Only this rank reads its own slot's segment: it may be overwritten while the others still read theirs.
      std::memcpy(slot(rank_) + b0, acc, static_cast<size_t>(len) * sizeof(T));
      std::memcpy(data + off + b0, acc, static_cast<size_t>(len) * sizeof(T));
    }
    barrier();  // every segment is summed
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      const int64_t q0 = std::min(piece, q * seg), q1 = std::min(piece, q0 + seg);
      if (q1 > q0) std::memcpy(data + off + q0, slot(q) + q0, static_cast<size_t>(q1 - q0) * sizeof(T));
    }
    barrier();  // every rank has copied out before the slots take the next piece
  }
}

}  // namespace kolos::dist

namespace kolos::dist {

template <typename T>
void ShmGroup::run_reduce_scatter(const T* input, int64_t numel, T* output, int64_t chunk, bool average) {
  // Round j: every rank stages, for each destination q, elements [q·c + j, q·c + j + len) of its input (zeros past
  // N) at sub-slot q; then rank r sums sub-slot r over the ranks in rank order into output[j, j + len).
  const int64_t n = size_, sub = slot_floats_ * 4 / static_cast<int64_t>(sizeof(T)) / n;
  KOLOS_ASSERT(sub > 0, "shared-memory slot too small for {} ranks", n);
  for (int64_t j = 0; j < chunk; j += sub) {
    const int64_t len = std::min(sub, chunk - j);
    T* mine = reinterpret_cast<T*>(slot(rank_));
    for (int64_t q = 0; q < n; ++q) {
      const int64_t from = q * chunk + j;
      const int64_t have = std::clamp<int64_t>(numel - from, 0, len);
      if (have > 0) std::memcpy(mine + q * sub, input + from, static_cast<size_t>(have) * sizeof(T));
      if (have < len) std::memset(mine + q * sub + have, 0, static_cast<size_t>(len - have) * sizeof(T));
    }
    barrier();
    T* acc = reinterpret_cast<T*>(scratch_.data());
    T* out = output + j;
    const int64_t at = rank_ * sub;
    sum_ranks(acc, [&](int q) { return reinterpret_cast<const T*>(slot(q)) + at; }, size_, len, average);
    barrier();  // every rank has read its sub-slot of every slot: the output may alias the input, and the slots
                // take the next round
    std::memcpy(out, acc, static_cast<size_t>(len) * sizeof(T));
  }
}

template <typename T>
void ShmGroup::run_all_gather(const T* input, int64_t numel, T* output) {
  const int64_t capacity = slot_floats_ * 4 / static_cast<int64_t>(sizeof(T));
  for (int64_t j = 0; j < numel; j += capacity) {
    const int64_t len = std::min(capacity, numel - j);
    std::memcpy(slot(rank_), input + j, static_cast<size_t>(len) * sizeof(T));
    barrier();
    for (int q = 0; q < size_; ++q)
      std::memcpy(output + q * numel + j, reinterpret_cast<T*>(slot(q)), static_cast<size_t>(len) * sizeof(T));
    barrier();
  }
}

template <typename T>
void ShmGroup::run_in_place(const Buffer& buffer, size_t offset, int64_t numel, bool average, bool scatter_only) {
  auto data = [&](int q) { return reinterpret_cast<T*>(buffer.region_of(q) + offset); };
  const int64_t seg = (numel + size_ - 1) / size_;
  auto segment = [&](int q) { return std::make_pair(std::min(numel, q * seg), std::min(numel, (q + 1) * seg)); };
  barrier();  // every rank's data is final
  // Segment `rank_` over the regions in rank order, block by block, into this rank's region: no other rank reads
  // that segment of this region until the next barrier.
  const auto [s0, s1] = segment(rank_);
  T* acc = reinterpret_cast<T*>(scratch_.data());
  for (int64_t b0 = s0; b0 < s1; b0 += kBlock) {
    const int64_t len = std::min(kBlock, s1 - b0);
    sum_ranks(acc, [&](int q) { return data(q) + b0; }, size_, len, average);
    std::memcpy(data(rank_) + b0, acc, static_cast<size_t>(len) * sizeof(T));
  }
  if (!scatter_only) {
    barrier();  // every segment is summed
    for (int q = 0; q < size_; ++q) {
      const auto [q0, q1] = segment(q);
      if (q != rank_ && q1 > q0)
        std::memcpy(data(rank_) + q0, data(q) + q0, static_cast<size_t>(q1 - q0) * sizeof(T));
    }
  }
  barrier();  // no rank reads this rank's region any more: the caller may change it
}

template <typename T>
void ShmGroup::run_gather_in_place(const Buffer& buffer, size_t offset, int64_t numel) {
  const int64_t chunk = numel / size_;
  auto data = [&](int q) { return reinterpret_cast<T*>(buffer.region_of(q) + offset); };
  barrier();  // every rank's chunk is final
  for (int q = 0; q < size_; ++q)
    if (q != rank_) std::memcpy(data(rank_) + q * chunk, data(q) + q * chunk, static_cast<size_t>(chunk) * sizeof(T));
  barrier();  // no rank reads this rank's region any more
}

}  // namespace kolos::dist
