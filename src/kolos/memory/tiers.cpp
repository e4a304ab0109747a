#include "kolos/memory/tiers.h"

#include <cstring>

#include "kolos/core/error.h"
#include "kolos/core/timer.h"

namespace kolos::memory {

namespace {

// Adds the time from construction to destruction (a throw included) to `total` (nanoseconds), when `counted`.
class WaitClock {
 public:
  WaitClock(std::atomic<int64_t>& total, bool counted) : total_(total), counted_(counted) {}
  ~WaitClock() {
    if (counted_) total_ += static_cast<int64_t>(timer_.ms() * 1e6);
  }
  WaitClock(const WaitClock&) = delete;
  WaitClock& operator=(const WaitClock&) = delete;

 private:
  std::atomic<int64_t>& total_;
  bool counted_;
  Timer timer_;
};

}  // namespace

const char* tier_name(Tier tier) {
  switch (tier) {
    case Tier::kCompute: return "compute";
    case Tier::kHost: return "host";
    case Tier::kNvme: return "nvme";
  }
  return "?";
}

TierStore::TierStore(Options options) : options_(std::move(options)) {
  KOLOS_ASSERT(options_.tier == Tier::kHost || options_.tier == Tier::kNvme, "a TierStore is on host or nvme");
  if (options_.tier == Tier::kNvme) {
    SwapSpace::Options so;
    so.rank = options_.rank;
    so.direct = options_.direct;
    so.grow_step = options_.grow_step;
    swap_ = std::make_unique<SwapSpace>(options_.nvme_path, so);
    engine_ = std::make_unique<AioEngine>(options_.aio);
  }
}

TierStore::~TierStore() {
  if (!engine_) return;
  try {
    engine_->wait_all();
  } catch (...) {
    // Reported by whoever waited the request; the swap file goes anyway.
  }
}

std::unique_ptr<TierStore> TierStore::from_config(const MemoryConfig& config, int rank) {
  Options o;
  o.tier = config.offload_tier == "nvme" ? Tier::kNvme : Tier::kHost;
  o.nvme_path = config.nvme_path;
  o.rank = rank;
  KOLOS_CHECK(o.tier == Tier::kHost || !o.nvme_path.empty(),
              "memory.offload_tier = \"nvme\" needs memory.nvme_path (a directory for the swap files)");
  return std::make_unique<TierStore>(o);
}

std::string TierStore::where() const { return swap_ ? swap_->path() : std::string("host memory"); }

TierRegion TierStore::allocate(int64_t bytes) {
  KOLOS_ASSERT(bytes > 0, "TierStore::allocate({})", bytes);
  TierRegion r;
  r.bytes = align_up(bytes);
  if (swap_) {
    r.id = swap_->allocate(r.bytes).offset;
  } else {
    r.id = static_cast<int64_t>(host_.size());
    host_.emplace_back(r.bytes);
  }
  allocated_bytes_ += r.bytes;
  return r;
}

void TierStore::check(const TierRegion& region, int64_t offset, const void* buffer, int64_t bytes) const {
  KOLOS_ASSERT(region.id >= 0 && offset >= 0 && bytes > 0 && offset + bytes <= region.bytes && is_aligned(offset) &&
                   is_aligned(bytes) && is_aligned(reinterpret_cast<intptr_t>(buffer)),
               "tier move of {} bytes at {} of a region of {}: not aligned or outside", bytes, offset, region.bytes);
}

AioTicket TierStore::read(const TierRegion& region, int64_t offset, void* buffer, int64_t bytes) {
  check(region, offset, buffer, bytes);
  ++moves_;
  if (engine_) return engine_->read(swap_->file(), region.id + offset, buffer, bytes);
  std::memcpy(buffer, host_[region.id].data() + offset, static_cast<size_t>(bytes));
  host_bytes_ += bytes;
  return 0;
}

AioTicket TierStore::write(const TierRegion& region, int64_t offset, const void* buffer, int64_t bytes) {
  check(region, offset, buffer, bytes);
  ++moves_;
  if (engine_) return engine_->write(swap_->file(), region.id + offset, buffer, bytes);
  std::memcpy(host_[region.id].data() + offset, buffer, static_cast<size_t>(bytes));
  host_bytes_ += bytes;
  return 0;
}

void TierStore::wait(AioTicket ticket) {
  if (ticket == 0 || !engine_) return;
  if (engine_->done(ticket)) {  // arrived already: nothing waited
    engine_->wait(ticket);
    return;
  }
  WaitClock clock(wait_ns_, std::this_thread::get_id() == owner_);
  engine_->wait(ticket);
}

void TierStore::wait_all() {
  if (!engine_) return;
  WaitClock clock(wait_ns_, std::this_thread::get_id() == owner_);
  engine_->wait_all();
}

int64_t TierStore::bytes_moved() const {
  return engine_ ? engine_->bytes_read() + engine_->bytes_written() : host_bytes_.load();
}

}  // namespace kolos::memory
