#include "kolos/memory/aio.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/core/log.h"

namespace kolos::memory {

namespace {

// Largest piece handed to the kernel at once: io_uring's length is 32 bits and pread/pwrite stop near 2 GiB.
constexpr int64_t kMaxPiece = int64_t{1} << 30;

std::string errno_text(int err) { return std::system_category().message(err); }

bool is_disk_full(int err) { return err == ENOSPC || err == EDQUOT || err == EFBIG; }

std::exception_ptr disk_full(const std::string& path, const std::string& doing, int err) {
  return std::make_exception_ptr(InputError(fmt::format(
      "disk full: {}: {} while {}; free space there or point memory.nvme_path at a larger disk", path,
      errno_text(err), doing)));
}

void warn_buffered_once(const std::string& path) {
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true))
    log::warn("{}: the filesystem refuses O_DIRECT; the NVMe tier falls back to buffered IO and drops each range "
              "from the page cache after use (posix_fadvise DONTNEED)",
              path);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// AlignedBuffer

AlignedBuffer::AlignedBuffer(int64_t bytes) : bytes_(align_up(std::max<int64_t>(bytes, 0))) {
  if (bytes_ == 0) return;
  data_ = static_cast<char*>(std::aligned_alloc(kIoAlignment, static_cast<size_t>(bytes_)));
  if (data_ == nullptr) throw std::bad_alloc();
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

// ---------------------------------------------------------------------------------------------------------------
// DirectFile

DirectFile::DirectFile(const std::string& path, Options options) : path_(path) {
  const int flags = O_RDWR | O_CLOEXEC | (options.create ? O_CREAT | O_EXCL : 0);
  fd_ = ::open(path.c_str(), flags, 0600);
  if (fd_ < 0)
    throw InputError(fmt::format("cannot {} {}: {}", options.create ? "create" : "open", path, errno_text(errno)));
  // O_DIRECT is set after opening rather than in open(): the file then exists either way, and fcntl answers
  // EINVAL exactly when the filesystem cannot do direct IO.
  if (options.direct) {
    const int fl = ::fcntl(fd_, F_GETFL);
    if (fl >= 0 && ::fcntl(fd_, F_SETFL, fl | O_DIRECT) == 0) {
      direct_ = true;
    } else if (errno != EINVAL) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      throw std::runtime_error(fmt::format("{}: cannot set O_DIRECT: {}", path, errno_text(err)));
    }
  }
  if (options.direct && !direct_) warn_buffered_once(path);
}

DirectFile::~DirectFile() {
  if (fd_ >= 0) ::close(fd_);
}

DirectFile::DirectFile(DirectFile&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)), direct_(other.direct_) {}

DirectFile& DirectFile::operator=(DirectFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    direct_ = other.direct_;
  }
  return *this;
}

int64_t DirectFile::size() const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw std::runtime_error(fmt::format("{}: fstat: {}", path_, errno_text(errno)));
  return st.st_size;
}

void DirectFile::grow(int64_t bytes) {
  const int64_t old_size = size();
  if (bytes <= old_size) return;
  if (::fallocate(fd_, 0, old_size, bytes - old_size) == 0) return;
  int err = errno;
  if (err == EOPNOTSUPP || err == ENOSYS) {
    if (::ftruncate(fd_, bytes) == 0) return;
    err = errno;
  }
  (void)::ftruncate(fd_, old_size);  // give back what a failed fallocate may have reserved
  const std::string doing = fmt::format("growing the file from {} to {} bytes", old_size, bytes);
  if (is_disk_full(err)) std::rethrow_exception(disk_full(path_, doing, err));
  throw std::runtime_error(fmt::format("{}: {} failed: {}", path_, doing, errno_text(err)));
}

void DirectFile::truncate(int64_t bytes) {
  if (::ftruncate(fd_, bytes) != 0)
    throw std::runtime_error(fmt::format("{}: truncating to {} bytes: {}", path_, bytes, errno_text(errno)));
}

void DirectFile::sync() {
  if (::fdatasync(fd_) != 0) {
    const int err = errno;
    if (is_disk_full(err)) std::rethrow_exception(disk_full(path_, "syncing", err));
    throw std::runtime_error(fmt::format("{}: fdatasync: {}", path_, errno_text(err)));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Requests and backends

struct AioEngine::Request {
  AioTicket ticket = 0;
  bool is_write = false;
  int fd = -1;
  bool direct = true;
  std::string path;
  char* buffer = nullptr;
  int64_t offset = 0;  // of the whole request in the file
  int64_t bytes = 0;   // of the whole request
  int64_t done = 0;    // moved so far

  int64_t piece() const { return std::min(bytes - done, kMaxPiece); }

  // Accounts for the kernel's answer `result` (bytes moved, or -errno) to the last piece. Returns true when the
  // request has finished (completely, or with `error` set), false when the rest must be submitted.
  bool advance(int64_t result, std::exception_ptr& error) {
    auto what = [&] {
      return fmt::format("{} {} bytes at offset {}", is_write ? "writing" : "reading", bytes, offset);
    };
    if (result == -EINTR || result == -EAGAIN) return false;  // nothing moved; submit the same piece again
    if (result < 0) {
      const int err = static_cast<int>(-result);
      if (is_write && is_disk_full(err)) error = disk_full(path, what(), err);
      else error = std::make_exception_ptr(
               std::runtime_error(fmt::format("{}: {} failed: {}", path, what(), errno_text(err))));
      return true;
    }
    done += result;
    if (done == bytes) {
      if (!direct) {
        // Buffered fallback: write the range out and drop it, so that the tier's bytes do not stay in RAM.
        if (is_write) ::sync_file_range(fd, offset, bytes, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                                                 SYNC_FILE_RANGE_WAIT_AFTER);
        ::posix_fadvise(fd, offset, bytes, POSIX_FADV_DONTNEED);
      }
      return true;
    }
    // A short transfer. A write that moves nothing, or stops off a block boundary (O_DIRECT cannot continue
    // there), ran out of space; a read that does either ran past the end of the file.
    if (result == 0 || (direct && !is_aligned(done))) {
      if (is_write) error = disk_full(path, fmt::format("{} (only {} written)", what(), done), ENOSPC);
      else error = std::make_exception_ptr(std::runtime_error(
               fmt::format("{}: {}: the file ends after {} of them", path, what(), done)));
      return true;
    }
    return false;
  }
};

class AioEngine::Backend {
 public:
  explicit Backend(AioEngine* engine) : engine_(engine) {}
  virtual ~Backend() = default;
  // Starts `request` (owned by the engine until finish()); eventually calls finish() exactly once for it.
  virtual void start(Request* request) = 0;

 protected:
  void finish(Request* request, std::exception_ptr error) { engine_->complete(request, std::move(error)); }

 private:
  AioEngine* engine_;
};

namespace {

using Request = AioEngine::Request;

// pread/pwrite on a pool of threads; each worker carries one request from start to end.
class ThreadBackend final : public AioEngine::Backend {
 public:
  ThreadBackend(AioEngine* engine, int threads) : Backend(engine) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~ThreadBackend() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& w : workers_) w.join();
  }
  void start(Request* request) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(request);
    }
    ready_.notify_one();
  }

 private:
  void work() {
    for (;;) {
      Request* r = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        r = queue_.front();
        queue_.pop_front();
      }
      std::exception_ptr error;
      for (;;) {
        char* at = r->buffer + r->done;
        const int64_t n = r->piece();
        const int64_t at_offset = r->offset + r->done;
        const ssize_t got = r->is_write ? ::pwrite(r->fd, at, n, at_offset) : ::pread(r->fd, at, n, at_offset);
        if (r->advance(got < 0 ? -errno : got, error)) break;
      }
      finish(r, std::move(error));
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Request*> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// io_uring: submissions from the callers' threads (under a lock), completions reaped by one thread, which also
// resubmits the rest of a request the kernel completed only in part.
class UringBackend final : public AioEngine::Backend {
 public:
  // Returns nullptr and sets `why` when the kernel refuses io_uring or lacks IORING_OP_READ/WRITE (< 5.6).
  static std::unique_ptr<UringBackend> create(AioEngine* engine, int depth, std::string* why) {
    std::unique_ptr<UringBackend> b(new UringBackend(engine));
    const int rc = io_uring_queue_init(static_cast<unsigned>(depth), &b->ring_, 0);
    if (rc < 0) {
      *why = fmt::format("io_uring_queue_init: {}", errno_text(-rc));
      return nullptr;
    }
    b->ring_ready_ = true;
    io_uring_probe* probe = io_uring_get_probe_ring(&b->ring_);
    const bool ok = probe != nullptr && io_uring_opcode_supported(probe, IORING_OP_READ) &&
                    io_uring_opcode_supported(probe, IORING_OP_WRITE);
    if (probe != nullptr) io_uring_free_probe(probe);
    if (!ok) {
      *why = "the kernel's io_uring lacks IORING_OP_READ/WRITE (Linux < 5.6)";
      return nullptr;
    }
    b->reaper_ = std::thread([p = b.get()] { p->reap(); });
    return b;
  }

  ~UringBackend() override {
    if (reaper_.joinable()) {
      {
        // A no-op with no request attached tells the reaper to stop; the engine has waited every request.
        std::lock_guard<std::mutex> lock(sq_mutex_);
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, nullptr);
        submit_locked();
      }
      reaper_.join();
    }
    if (ring_ready_) io_uring_queue_exit(&ring_);
  }

  void start(Request* request) override {
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(sq_mutex_);
      error = submit_piece(request);
    }
    if (error) finish(request, std::move(error));
  }

 private:
  explicit UringBackend(AioEngine* engine) : Backend(engine) {}

  io_uring_sqe* get_sqe() {
    // The engine keeps at most `depth` requests in flight, each with at most one piece queued, so a slot frees up
    // as soon as the queued entries are handed to the kernel.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    while (sqe == nullptr) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;
  }

  int submit_locked() {
    for (;;) {
      const int rc = io_uring_submit(&ring_);
      if (rc >= 0) return 0;
      if (rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return -rc;
      std::this_thread::yield();
    }
  }

  // Queues the next piece of `r`; returns the error when the kernel would not take it.
  std::exception_ptr submit_piece(Request* r) {
    io_uring_sqe* sqe = get_sqe();
    char* at = r->buffer + r->done;
    const auto n = static_cast<unsigned>(r->piece());
    const auto off = static_cast<uint64_t>(r->offset + r->done);
    if (r->is_write) io_uring_prep_write(sqe, r->fd, at, n, off);
    else io_uring_prep_read(sqe, r->fd, at, n, off);
    io_uring_sqe_set_data(sqe, r);
    const int err = submit_locked();
    if (err == 0) return nullptr;
    return std::make_exception_ptr(
        std::runtime_error(fmt::format("{}: io_uring_submit: {}", r->path, errno_text(err))));
  }

  void reap() {
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe(&ring_, &cqe);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      if (rc < 0) {
        log::warn("io_uring_wait_cqe: {}", errno_text(-rc));
        continue;
      }
      auto* r = static_cast<Request*>(io_uring_cqe_get_data(cqe));
      const int64_t result = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      if (r == nullptr) return;
      // The request was handed over through the kernel's ring, which thread sanitizers cannot see; taking the
      // lock its submission held makes the hand-over an ordinary happens-before edge (and costs nothing here).
      { std::lock_guard<std::mutex> handed_over(sq_mutex_); }
      std::exception_ptr error;
      if (!r->advance(result, error)) {
        std::lock_guard<std::mutex> lock(sq_mutex_);
        error = submit_piece(r);
        if (!error) continue;
      }
      finish(r, std::move(error));
    }
  }

  io_uring ring_{};
  bool ring_ready_ = false;
  std::mutex sq_mutex_;
  std::thread reaper_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// AioEngine

const char* backend_name(AioBackend backend) {
  switch (backend) {
    case AioBackend::kAuto: return "auto";
    case AioBackend::kUring: return "uring";
    case AioBackend::kThreads: return "threads";
  }
  return "?";
}

AioBackend parse_backend(const std::string& text, const std::string& what) {
  if (text == "auto") return AioBackend::kAuto;
  if (text == "uring") return AioBackend::kUring;
  if (text == "threads") return AioBackend::kThreads;
  throw InputError(fmt::format("{}: expected auto, uring or threads, got \"{}\"", what, text));
}

AioEngine::AioEngine(AioOptions options) : options_(options) {
  KOLOS_CHECK(options_.queue_depth >= 1 && options_.queue_depth <= 4096,
              "async IO queue depth: expected 1 to 4096, got {}", options_.queue_depth);
  KOLOS_CHECK(options_.threads >= 1, "async IO threads: expected at least 1, got {}", options_.threads);
  AioBackend want = options_.backend;
  if (want == AioBackend::kAuto) {
    const char* env = std::getenv("KOLOS_AIO");
    if (env != nullptr && *env != '\0') want = parse_backend(env, "environment variable KOLOS_AIO");
  }
  if (want != AioBackend::kThreads) {
    std::string why;
    impl_ = UringBackend::create(this, options_.queue_depth, &why);
    if (impl_ != nullptr) {
      backend_ = AioBackend::kUring;
    } else {
      KOLOS_CHECK(want != AioBackend::kUring, "io_uring is unavailable here ({}); use the threads backend", why);
      fallback_reason_ = why;
      log::warn("async IO: io_uring unavailable ({}); using a pool of {} pread/pwrite threads", why,
                std::min(options_.threads, options_.queue_depth));
    }
  }
  if (impl_ == nullptr) {
    backend_ = AioBackend::kThreads;
    impl_ = std::make_unique<ThreadBackend>(this, std::min(options_.threads, options_.queue_depth));
  }
}

AioEngine::~AioEngine() {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return pending_.empty(); });
    for (auto& [ticket, error] : failed_) {
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        log::warn("async IO request {} failed and was never waited: {}", ticket, e.what());
      }
    }
  }
  impl_.reset();
}

AioTicket AioEngine::read(const DirectFile& file, int64_t offset, void* buffer, int64_t bytes) {
  return submit(false, file, offset, static_cast<char*>(buffer), bytes);
}

AioTicket AioEngine::write(const DirectFile& file, int64_t offset, const void* buffer, int64_t bytes) {
  // The kernel only reads the buffer of a write; the cast lets one Request type carry both directions.
  return submit(true, file, offset, const_cast<char*>(static_cast<const char*>(buffer)), bytes);
}

AioTicket AioEngine::submit(bool is_write, const DirectFile& file, int64_t offset, char* buffer, int64_t bytes) {
  KOLOS_CHECK(file.is_open(), "async IO: {} on a file that is not open", is_write ? "write" : "read");
  const auto address = reinterpret_cast<uintptr_t>(buffer);
  KOLOS_CHECK(bytes > 0 && offset >= 0 && is_aligned(bytes) && is_aligned(offset) && address % kIoAlignment == 0,
              "{}: {} of {} bytes at offset {} from address {:#x}: direct IO needs the length, the offset and the "
              "buffer address to be positive multiples of {} bytes (use memory::AlignedBuffer and align_up)",
              file.path(), is_write ? "write" : "read", bytes, offset, address, kIoAlignment);
  auto request = std::make_unique<Request>();
  request->is_write = is_write;
  request->fd = file.fd();
  request->direct = file.direct();
  request->path = file.path();
  request->buffer = buffer;
  request->offset = offset;
  request->bytes = bytes;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return static_cast<int>(pending_.size()) < options_.queue_depth; });
    request->ticket = next_ticket_++;
    pending_.insert(request->ticket);
  }
  const AioTicket ticket = request->ticket;
  impl_->start(request.release());
  return ticket;
}

void AioEngine::complete(Request* request, std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_.erase(request->ticket);
    if (error) failed_[request->ticket] = std::move(error);
    else (request->is_write ? bytes_written_ : bytes_read_) += request->bytes;
  }
  changed_.notify_all();
  delete request;
}

void AioEngine::wait(AioTicket ticket) {
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return pending_.count(ticket) == 0; });
    auto it = failed_.find(ticket);
    if (it == failed_.end()) return;
    error = std::move(it->second);
    failed_.erase(it);
  }
  std::rethrow_exception(error);
}

void AioEngine::wait_all() {
  std::map<AioTicket, std::exception_ptr> failed;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return pending_.empty(); });
    failed.swap(failed_);
  }
  if (failed.empty()) return;
  for (auto it = std::next(failed.begin()); it != failed.end(); ++it) {
    try {
      std::rethrow_exception(it->second);
    } catch (const std::exception& e) {
      log::debug("async IO request {} also failed: {}", it->first, e.what());
    }
  }
  std::rethrow_exception(failed.begin()->second);
}

bool AioEngine::done(AioTicket ticket) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.count(ticket) == 0;
}

int AioEngine::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(pending_.size());
}

}  // namespace kolos::memory
