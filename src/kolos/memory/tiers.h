// Memory tiers (DESIGN "Chunks"): where a byte of parameters, gradients or optimizer state lives.
//
//   compute  the memory the model computes in (RAM on a CPU-only machine): ordinary tensors.
//   host     a separate RAM buffer, accounted as host: what an accelerator would see as pinned host memory. Moves
//            are memcpy on the calling thread (synchronous; the ticket is complete when returned).
//   nvme     extents of a SwapSpace (one O_DIRECT swap file per process under memory.nvme_path), moved with an
//            AioEngine (io_uring, or its thread fallback) asynchronously.
//
// A TierStore is one rank's store on the host or nvme tier: it hands out regions (memory.offload_tier decides
// which) and moves bytes between a region and an aligned buffer. Every buffer address, region offset and length
// is a multiple of kIoAlignment (4096 bytes), on both tiers, so callers need not know which tier they got.
// Regions live as long as the store (no free: static placement allocates once).
//
// Figures: moves() counts requests (each read or write of a region range: the metrics' chunk_moves),
// bytes_moved() the bytes of completed requests (the metrics' io_bytes; for nvme the AioEngine's counters),
// allocated_bytes() the bytes of the regions (the metrics' mem_bytes of the tier), wait_ms() the time callers
// spent blocked in wait/wait_all (what the moves did not hide behind compute; host moves never wait).
//
// Errors: a full disk (at allocate, where the swap file grows with fallocate, or at a write) throws InputError
// naming the swap file (exit code 2). Thread-safety: allocate from one thread at a time (the training thread);
// read, write and wait from any threads at once (the training thread and an overlapped optimizer step's worker,
// memory/offload.h); wait_ms() counts only the waits of the thread that built the store (the training thread:
// a worker's waits hide behind the training thread's compute). The nvme engine completes requests on its own
// threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kolos/config/config.h"
#include "kolos/memory/aio.h"
#include "kolos/memory/swap_space.h"

namespace kolos::memory {

enum class Tier { kCompute, kHost, kNvme };

// "compute", "host", "nvme".
const char* tier_name(Tier tier);

// A byte range of a store: `id` indexes the host buffers, or is the swap file offset on nvme.
struct TierRegion {
  int64_t id = -1;
  int64_t bytes = 0;  // a multiple of kIoAlignment
};

// One ZeRO-3 chunk's master shard kept on a tier (ChunkManager::Options::offload_fraction): the shard offsets
// [begin, begin + numel) of the flat shard layout, and its region (numel·4 bytes, aligned up); with gradient
// offload (ChunkManager::Options::offload_grads) also the region of its gradient shard (id -1: none, resident).
struct TierShard {
  int64_t begin = 0, numel = 0;
  TierRegion region;
  TierRegion grad_region;
};

class TierStore {
 public:
  struct Options {
    Tier tier = Tier::kHost;    // kHost or kNvme
    std::string nvme_path;      // the swap file's directory (kNvme)
    int rank = 0;               // in the swap file's name
    bool direct = true;         // false: buffered IO even where O_DIRECT works (tests)
    int64_t grow_step = int64_t{16} << 20;  // the swap file grows by at least this much (SwapSpace)
    AioOptions aio;
  };

  explicit TierStore(Options options);
  ~TierStore();
  TierStore(const TierStore&) = delete;
  TierStore& operator=(const TierStore&) = delete;

  // The store of memory.offload_tier for this rank. InputError naming memory.nvme_path when it cannot be used.
  static std::unique_ptr<TierStore> from_config(const MemoryConfig& config, int rank);

  Tier tier() const { return options_.tier; }
  // Where the bytes go, for messages: "host memory" or the swap file's path.
  std::string where() const;

  // A region of align_up(bytes) bytes (bytes > 0), contents unspecified. InputError when the disk is full.
  TierRegion allocate(int64_t bytes);
  // Asynchronous moves of `bytes` between region bytes [offset, offset + bytes) and `buffer` (all aligned; inside
  // the region). The buffer stays untouched until the ticket is waited. Host: done on return (ticket 0).
  AioTicket read(const TierRegion& region, int64_t offset, void* buffer, int64_t bytes);
  AioTicket write(const TierRegion& region, int64_t offset, const void* buffer, int64_t bytes);
  // Waits request `ticket` (0: nothing) and rethrows its error (InputError for a full disk).
  void wait(AioTicket ticket);
  void wait_all();

  int64_t moves() const { return moves_; }
  int64_t bytes_moved() const;
  int64_t allocated_bytes() const { return allocated_bytes_; }
  double wait_ms() const { return static_cast<double>(wait_ns_.load()) / 1e6; }

 private:
  void check(const TierRegion& region, int64_t offset, const void* buffer, int64_t bytes) const;

  Options options_;
  std::vector<AlignedBuffer> host_;   // kHost: one buffer per region
  std::unique_ptr<SwapSpace> swap_;   // kNvme
  std::unique_ptr<AioEngine> engine_;
  std::atomic<int64_t> moves_{0}, host_bytes_{0}, wait_ns_{0};
  int64_t allocated_bytes_ = 0;
  std::thread::id owner_ = std::this_thread::get_id();  // whose waits wait_ms() counts
};

}  // namespace kolos::memory
