// Asynchronous file IO for the NVMe tier: O_DIRECT files read and written through io_uring, or through a pool of
// threads calling pread/pwrite where the kernel refuses io_uring.
//
// Why O_DIRECT: the tier exists to hold what does not fit in RAM; going through the page cache would keep the
// "NVMe" bytes in RAM and make both the memory figures and the bandwidth figures lie. O_DIRECT requires the
// buffer address, the file offset and the length of every request to be multiples of the logical block size;
// kolos uses kIoAlignment = 4096 everywhere, which is a multiple of every common block size (512, 4096).
//
// Filesystems without O_DIRECT (tmpfs before Linux 6.6, some FUSE and network filesystems): DirectFile falls back
// to buffered IO and, after each write, flushes the written range and drops it from the page cache
// (sync_file_range + posix_fadvise(DONTNEED)); one warning per process says so. Requests must be aligned all the
// same, so callers need not know which mode they got.
//
// Errors: a write that finds the disk full (ENOSPC, EDQUOT, or EFBIG from a file size limit), or that makes no
// progress, throws kolos::InputError naming the path and saying the disk is full (exit code 2 at the CLI).
// Any other IO error throws std::runtime_error naming the operation, path, offset and errno text (exit code 1).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

namespace kolos::memory {

// Alignment of every buffer address, file offset and request length, in bytes.
constexpr int64_t kIoAlignment = 4096;

// Rounds `bytes` up to a multiple of kIoAlignment.
constexpr int64_t align_up(int64_t bytes) { return (bytes + kIoAlignment - 1) / kIoAlignment * kIoAlignment; }
constexpr bool is_aligned(int64_t value) { return value % kIoAlignment == 0; }

// Host memory aligned to kIoAlignment, for O_DIRECT requests. Owns its memory; move-only; contents uninitialised.
// The size is rounded up to kIoAlignment, so the whole buffer can be one request.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(int64_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  char* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  char* data_ = nullptr;
  int64_t bytes_ = 0;
};

// A file opened for reading and writing with O_DIRECT (or the buffered fallback described above). Owns the file
// descriptor; move-only. Requests in flight on the file must be waited before it is destroyed.
class DirectFile {
 public:
  struct Options {
    bool create = false;     // create the file; it must not exist yet (O_CREAT | O_EXCL)
    bool direct = true;      // false: the buffered fallback, as if the filesystem refused O_DIRECT (tests)
  };

  DirectFile() = default;
  // Throws InputError when the file cannot be opened or created (naming the path and errno text).
  DirectFile(const std::string& path, Options options);
  ~DirectFile();
  DirectFile(DirectFile&& other) noexcept;
  DirectFile& operator=(DirectFile&& other) noexcept;
  DirectFile(const DirectFile&) = delete;
  DirectFile& operator=(const DirectFile&) = delete;

  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // True when requests bypass the page cache (O_DIRECT took), false in the buffered fallback.
  bool direct() const { return direct_; }

  // Current size in bytes.
  int64_t size() const;
  // Grows the file to `bytes` with its blocks reserved (fallocate; ftruncate where the filesystem cannot
  // fallocate), so that a full disk shows here rather than mid-write. Never shrinks. A full disk throws
  // InputError naming the path; the file keeps its previous size.
  void grow(int64_t bytes);
  // Sets the size to `bytes` (ftruncate), e.g. to give space back.
  void truncate(int64_t bytes);
  // fdatasync: with O_DIRECT the data is on the device already; this also commits the allocation metadata.
  void sync();

 private:
  int fd_ = -1;
  std::string path_;
  bool direct_ = false;
};

// Which implementation carries the requests.
enum class AioBackend {
  kAuto,     // the KOLOS_AIO environment variable ("uring" | "threads") if set, else io_uring, falling back to
             // threads (with one warning) when io_uring is unavailable
  kUring,    // io_uring; the engine's constructor throws InputError when the kernel refuses it
  kThreads,  // a pool of threads calling pread/pwrite
};
const char* backend_name(AioBackend backend);  // "auto", "uring", "threads"
// "auto" | "uring" | "threads" -> AioBackend; anything else throws InputError naming `what`.
AioBackend parse_backend(const std::string& text, const std::string& what);

struct AioOptions {
  AioBackend backend = AioBackend::kAuto;
  // Requests in flight at most; submitting one more blocks until one completes. Also the io_uring queue size.
  int queue_depth = 32;
  // Worker threads of the thread-pool backend (at most queue_depth are ever busy).
  int threads = 4;
};

// Identifies a submitted request until it is waited. Tickets increase from 1 in submission order.
using AioTicket = uint64_t;

// The IO engine: submits aligned reads and writes of whole buffers at file offsets and completes them in the
// background. A request larger than the kernel takes at once, or that the kernel completes only in part, is
// continued from where it stopped, so a completed request always moved exactly its `bytes`.
//
// Contract:
//  - read/write check alignment (buffer address, offset, bytes all multiples of kIoAlignment, bytes > 0) and throw
//    InputError otherwise; they return as soon as the request is queued (blocking only while queue_depth requests
//    are already in flight).
//  - The caller keeps the buffer and the DirectFile alive and untouched (for a read: unread) until the request is
//    waited. Requests on overlapping ranges are not ordered: wait for one before submitting the other.
//  - wait(t) returns when request t has completed and rethrows its error, if any (InputError for a full disk,
//    std::runtime_error otherwise). Waiting a ticket that was already waited returns at once.
//  - wait_all() waits for every request in flight and throws the error of the lowest failed ticket not yet
//    waited; the errors of other failed tickets are dropped (logged): they mostly share one cause, a full disk.
//  - All methods are thread-safe. The destructor waits for requests still in flight and logs their errors.
class AioEngine {
 public:
  explicit AioEngine(AioOptions options = {});
  ~AioEngine();
  AioEngine(const AioEngine&) = delete;
  AioEngine& operator=(const AioEngine&) = delete;

  // The backend in use (never kAuto).
  AioBackend backend() const { return backend_; }
  // Why the io_uring backend is not in use when kAuto fell back to threads ("" otherwise).
  const std::string& fallback_reason() const { return fallback_reason_; }
  int queue_depth() const { return options_.queue_depth; }

  AioTicket read(const DirectFile& file, int64_t offset, void* buffer, int64_t bytes);
  AioTicket write(const DirectFile& file, int64_t offset, const void* buffer, int64_t bytes);
  void wait(AioTicket ticket);
  void wait_all();
  // True when request `ticket` has completed (or was already waited); does not throw its error.
  bool done(AioTicket ticket) const;
  // Requests submitted and not yet completed.
  int in_flight() const;

  // Bytes moved by completed requests since construction (the metrics' io_bytes).
  int64_t bytes_read() const { return bytes_read_.load(); }
  int64_t bytes_written() const { return bytes_written_.load(); }

  // One request in flight; internal to the engine and its backends.
  struct Request;
  class Backend;

 private:
  AioTicket submit(bool is_write, const DirectFile& file, int64_t offset, char* buffer, int64_t bytes);
  void complete(Request* request, std::exception_ptr error);

  AioOptions options_;
  AioBackend backend_ = AioBackend::kThreads;
  std::string fallback_reason_;
  std::unique_ptr<Backend> impl_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // a request completed
  AioTicket next_ticket_ = 1;
  std::set<AioTicket> pending_;
  std::map<AioTicket, std::exception_ptr> failed_;
  std::atomic<int64_t> bytes_read_{0};
  std::atomic<int64_t> bytes_written_{0};
};

}  // namespace kolos::memory
