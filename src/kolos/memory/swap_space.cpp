#include "kolos/memory/swap_space.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <system_error>

#include "kolos/core/error.h"

namespace kolos::memory {

namespace {

// Paths of the swap files alive in this process, removed by an atexit handler when exit() skips destructors.
// Leaked on purpose so that it outlives every static destructor that might still run after the handler.
struct LiveFiles {
  std::mutex mutex;
  std::set<std::string> paths;
};

LiveFiles& live_files() {
  static LiveFiles* live = [] {
    auto* l = new LiveFiles;
    std::atexit([] {
      LiveFiles& files = live_files();
      std::lock_guard<std::mutex> lock(files.mutex);
      for (const auto& p : files.paths) ::unlink(p.c_str());
      files.paths.clear();
    });
    return l;
  }();
  return *live;
}

// The same paths for a fatal signal's handler, which may only call async-signal-safe functions: fixed slots, each
// claimed with an atomic flag and its path written before the flag says it is complete.
constexpr int kSignalSlots = 16;
constexpr size_t kSignalPathBytes = 4096;
char g_signal_paths[kSignalSlots][kSignalPathBytes];
std::atomic<int> g_signal_state[kSignalSlots];  // 0 free, 1 being written or cleared, 2 holds a path

void remove_on_signal(int sig) {
  for (int i = 0; i < kSignalSlots; ++i)
    if (g_signal_state[i].load() == 2) ::unlink(g_signal_paths[i]);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Installs remove_on_signal for the fatal signals still at their default disposition (once per process).
void install_signal_removal() {
  static const bool installed = [] {
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) std::signal(sig, remove_on_signal);
    }
    return true;
  }();
  (void)installed;
}

int claim_signal_slot(const std::string& path) {
  if (path.size() >= kSignalPathBytes) return -1;
  for (int i = 0; i < kSignalSlots; ++i) {
    int expected = 0;
    if (g_signal_state[i].compare_exchange_strong(expected, 1)) {
      std::memcpy(g_signal_paths[i], path.c_str(), path.size() + 1);
      g_signal_state[i].store(2);
      return i;
    }
  }
  return -1;  // more live swap files than slots: the others are removed at exit only
}

void release_signal_slot(int slot) {
  if (slot < 0) return;
  g_signal_state[slot].store(1);
  g_signal_paths[slot][0] = '\0';
  g_signal_state[slot].store(0);
}

std::string swap_file_path(const std::string& dir, int rank) {
  static std::atomic<int> opened{0};
  return fmt::format("{}/kolos-swap-pid{}-rank{}-{}.bin", dir, ::getpid(), rank, opened++);
}

std::string prepare_dir(const std::string& dir) {
  KOLOS_CHECK(!dir.empty(), "memory.nvme_path is empty: expected a directory for the NVMe tier's swap files");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KOLOS_CHECK(!ec && std::filesystem::is_directory(dir), "memory.nvme_path = \"{}\": cannot create the directory{}",
              dir, ec ? ": " + ec.message() : " (a file of that name exists)");
  return dir;
}

SwapSpace::Options checked(const SwapSpace::Options& options) {
  KOLOS_CHECK(options.grow_step > 0 && is_aligned(options.grow_step),
              "swap space grow step: expected a positive multiple of {} bytes, got {}", kIoAlignment,
              options.grow_step);
  return options;
}

}  // namespace

SwapSpace::SwapSpace(const std::string& dir, Options options)
    : options_(checked(options)),
      file_(swap_file_path(prepare_dir(dir), options.rank), DirectFile::Options{true, options.direct}) {
  LiveFiles& live = live_files();
  std::lock_guard<std::mutex> lock(live.mutex);
  live.paths.insert(file_.path());
  install_signal_removal();
  signal_slot_ = claim_signal_slot(file_.path());
}

SwapSpace::~SwapSpace() {
  const std::string path = file_.path();
  release_signal_slot(signal_slot_);
  file_ = DirectFile();  // close before removing
  ::unlink(path.c_str());
  LiveFiles& live = live_files();
  std::lock_guard<std::mutex> lock(live.mutex);
  live.paths.erase(path);
}

SwapExtent SwapSpace::allocate(int64_t bytes) {
  KOLOS_ASSERT(bytes > 0, "SwapSpace::allocate({})", bytes);
  const int64_t need = align_up(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto first_fit = [&] {
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= need) return it;
    return free_.end();
  };
  auto it = first_fit();
  if (it == free_.end()) {
    // Grow: a free range at the end of the file counts towards the extent.
    int64_t tail = 0;
    if (!free_.empty() && free_.rbegin()->first + free_.rbegin()->second == file_bytes_) tail = free_.rbegin()->second;
    const int64_t exact = file_bytes_ + need - tail;
    const int64_t stepped = std::max(exact, file_bytes_ + options_.grow_step);
    int64_t target = stepped;
    try {
      file_.grow(stepped);
    } catch (const InputError&) {
      if (stepped == exact) throw;
      file_.grow(exact);  // the disk has room for what is needed, just not for a whole step
      target = exact;
    }
    add_free(file_bytes_, target - file_bytes_);
    file_bytes_ = target;
    it = first_fit();
    KOLOS_ASSERT(it != free_.end(), "swap file grew to {} bytes but has no free extent of {}", target, need);
  }
  const SwapExtent extent{it->first, need};
  const int64_t rest = it->second - need;
  free_.erase(it);
  if (rest > 0) free_.emplace(extent.offset + need, rest);
  allocated_.emplace(extent.offset, need);
  used_bytes_ += need;
  return extent;
}

void SwapSpace::free(const SwapExtent& extent) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = allocated_.find(extent.offset);
  KOLOS_ASSERT(it != allocated_.end() && it->second == extent.bytes,
               "{}: freeing extent [{}, +{}) that was not allocated as such", file_.path(), extent.offset,
               extent.bytes);
  allocated_.erase(it);
  used_bytes_ -= extent.bytes;
  add_free(extent.offset, extent.bytes);
}

void SwapSpace::add_free(int64_t offset, int64_t bytes) {
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + bytes == next->first) {  // merge with the range after
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {  // merge into the range before
      prev->second += bytes;
      return;
    }
  }
  free_.emplace_hint(next, offset, bytes);
}

int64_t SwapSpace::file_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return file_bytes_;
}

int64_t SwapSpace::used_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return used_bytes_;
}

int SwapSpace::free_extent_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(free_.size());
}

}  // namespace kolos::memory
