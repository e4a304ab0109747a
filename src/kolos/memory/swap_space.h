// The NVMe tier's space: one swap file per process under `memory.nvme_path`, handing out aligned extents.
//
// The file is named kolos-swap-pid<PID>-rank<RANK>-<N>.bin (N counts the SwapSpaces this process opened), created
// exclusively and opened with O_DIRECT (see aio.h for the buffered fallback). Extents are given out first-fit from
// a free list that coalesces neighbours on free; when nothing fits, the file grows (fallocate, so that a full disk
// shows at allocation, not in the middle of an optimizer step) by at least `grow_step`, or by exactly what is
// needed when the disk has no room for a whole step. A full disk throws InputError naming the file (exit code 2).
// The file is never shrunk.
//
// The file is removed by the destructor and, should the destructor not run (exit() with the object alive), by an
// atexit handler; SIGTERM, SIGINT and SIGHUP, where nothing else handles them (the signal's disposition is the
// default when the first SwapSpace is made: `kolos bench train`, not `kolos train`, which stops at a step), remove
// every live swap file before the signal takes its default course. Only SIGKILL (or a crash) leaves a file behind;
// the name says whose it was.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kolos/memory/aio.h"

namespace kolos::memory {

// A byte range of the swap file; offset and bytes are multiples of kIoAlignment.
struct SwapExtent {
  int64_t offset = 0;
  int64_t bytes = 0;
};

class SwapSpace {
 public:
  struct Options {
    int rank = 0;                           // in the file's name
    int64_t grow_step = int64_t{64} << 20;  // the file grows by at least this many bytes at a time
    bool direct = true;                     // false: buffered IO, as on a filesystem without O_DIRECT (tests)
  };

  // Creates the directory `dir` if needed, then the swap file in it (empty). Throws InputError naming `dir` when
  // either cannot be created.
  SwapSpace(const std::string& dir, Options options);
  ~SwapSpace();
  SwapSpace(const SwapSpace&) = delete;
  SwapSpace& operator=(const SwapSpace&) = delete;

  // An extent of align_up(bytes) bytes (bytes > 0), growing the file when no free extent is large enough.
  // Thread-safe. Throws InputError when the disk is full.
  SwapExtent allocate(int64_t bytes);
  // Returns an extent given by allocate (exactly as it was given; anything else is an internal error).
  void free(const SwapExtent& extent);

  // The file to read and write extents of with an AioEngine.
  const DirectFile& file() const { return file_; }
  DirectFile& file() { return file_; }
  const std::string& path() const { return file_.path(); }
  int64_t file_bytes() const;      // size of the file
  int64_t used_bytes() const;      // sum of the extents allocated and not freed
  int free_extent_count() const;   // free ranges after coalescing (for tests)

 private:
  void add_free(int64_t offset, int64_t bytes);  // inserts and coalesces; mutex_ held

  Options options_;
  DirectFile file_;
  int signal_slot_ = -1;  // where a fatal signal's handler finds the path (-1: none)
  mutable std::mutex mutex_;
  int64_t file_bytes_ = 0;
  int64_t used_bytes_ = 0;
  std::map<int64_t, int64_t> free_;       // offset -> bytes, no two adjacent
  std::map<int64_t, int64_t> allocated_;  // offset -> bytes
};

}  // namespace kolos::memory
