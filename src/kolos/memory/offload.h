// Static offload (memory.placement = "static"): the optimizer step over a flat shard whose tail lives on a tier.
//
// Placement. Of this rank's flat state range [0, N) (the optimizer's state offsets), the tail [state_begin, N)
// of every state buffer lives on the store's tier (memory.offload_optim_frac of N, rounded up so that state_begin
// is a multiple of kAlignElements — counted from the start of the chunk shard it falls in when parameters are
// offloaded too). With ZeRO-3, the master parameter shards of the last chunks (memory.offload_param_frac,
// whole chunks; ChunkManager::Options::offload_fraction) live there as well: `shards`, which cover a tail
// [shards[0].begin, N) of the same offsets (ZeRO-3 pieces have param_offset == grad_offset == state_offset), and
// with memory.offload_grads their gradient shards too (TierShard::grad_region). The optimizer was built with
// resident_state = state_begin, resident_params = shards[0].begin (or N without shards) and, with gradient
// offload, resident_grads = shards[0].begin, so its own buffers hold only the heads.
//
// The streamed step. The streamed range [min(state_begin, shards[0].begin), N) is cut into segments at
// state_begin and at the shard boundaries; each segment has its own state regions (one per state buffer, when its
// state is offloaded), its parameters in its chunk's region (when offloaded) and its gradients in the chunk's
// gradient region (when those are offloaded: read, never written). Windows of window_elements
// (a multiple of kAlignElements) run from each segment's start, so every request is 4096-aligned; the last
// window of a segment may be shorter (its request is aligned up into the region's padding). The step:
//   begin_step; reads of the first staging − 1 windows; the resident head [0, start) updated in place meanwhile;
//   then per window i: wait its reads, update it (Optimizer::update with the staging buffers), start its writes,
//   start the reads of window i + staging − 1 into the staging set of window i − 1 (after that set's writes).
// So while window i computes, the next windows are read (read-ahead) and the previous one written (write-behind),
// with `staging` sets of buffers (each state buffer, the parameters and the gradients: window_elements floats
// apiece). Every
// element is updated by the same kernel as without offload: the step is bit-identical (optim/optimizer.h). All
// writes are waited before step() returns (the next gathers read the parameters back).
//
// A parameter cache (set_param_cache; ChunkManager's shard cache under memory.placement = "auto"): at the start of
// the step it asks, shard by shard in order, where each shard's values are resident — then its windows are copied
// from there instead of read from the tier — and where its updated values should go besides the tier (either
// may be null). The tier is written either way (it stays the shard's home), so the values are the same.
//
// The overlapped step (Options::overlap, where overlappable(): every streamed element is in an offloaded shard
// whose gradient is on the tier too, so the step reads nothing the training thread writes before the next
// backward). step() updates the resident head, asks the parameter cache, and returns; a worker thread streams the
// windows as above, and after the writes of a shard's last window have completed it marks that shard settled.
// The training thread goes on with the next step's forward, and whatever touches an offloaded shard (its region,
// its gradient region, a cached copy) first calls settle(shard), which blocks until the worker is done with it —
// ChunkManager's update fence. So the next forward's compute runs behind the step's IO, and its gathers follow the
// step shard by shard; the values are the same as the step without overlap, bit for bit. finish() waits for the
// whole step (step(), read_state, write_state and the destructor call it); the worker's error (a full disk) is
// rethrown by whichever of settle() and finish() sees it first.
//
// Thread-safety: the methods from one thread (the training thread); the worker uses only the optimizer's update,
// the store's read/write/wait and the staging buffers while a step is in flight.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/memory/aio.h"
#include "kolos/memory/tiers.h"
#include "kolos/optim/optimizer.h"

namespace kolos::memory {

// Elements of alignment of the streamed ranges: 4096 bytes of fp32.
constexpr int64_t kAlignElements = kIoAlignment / 4;

// The first offloaded state offset for `fraction` of n elements (n when fraction is 0): n − ceil(fraction·n)
// rounded down to a multiple of kAlignElements counted from `origin` (0, or the shard start it falls in).
int64_t offload_begin(int64_t n, double fraction, const std::vector<TierShard>& shards = {});

class StreamedStep {
 public:
  struct Options {
    // 4 MiB of fp32 per buffer; a multiple of kAlignElements. Capped at the longest segment (aligned up).
    int64_t window_elements = int64_t{1} << 20;
    int staging = 3;                             // staging sets (>= 2): read-ahead of staging − 2 windows
    bool overlap = false;                        // step() leaves the streamed windows to a worker (overlappable())
  };

  // `optimizer`: element-wise, built with resident_state = state_begin and resident_params = the first shard's
  // begin (see the header comment); it and `store` outlive this. Allocates the state regions (InputError when the
  // disk is full) and writes zeros into them (a fresh optimizer's state).
  StreamedStep(optim::Optimizer& optimizer, TierStore& store, int64_t state_begin, std::vector<TierShard> shards,
               Options options);

  ~StreamedStep();  // finishes a step in flight (its error is dropped: logged by nobody, the run is failing)
  StreamedStep(const StreamedStep&) = delete;
  StreamedStep& operator=(const StreamedStep&) = delete;

  // One optimizer step (Optimizer::step's contract) over the resident head and the streamed tail; with
  // Options::overlap and overlappable(), the tail is still in flight when it returns (see the header comment).
  void step(double lr, double grad_scale);

  // Every streamed element is in an offloaded shard with its gradient on the tier.
  bool overlappable() const;
  // Blocks until the step in flight (if any) is done with shard `shard` (index into `shards`); rethrows its error.
  void settle(int shard);
  // Blocks until the step in flight (if any) is done; rethrows its error.
  void finish();
  bool in_flight() const { return worker_.joinable(); }
  // The training thread's time blocked in settle() and finish() (what the step's IO did not hide), milliseconds.
  double settle_wait_ms() const { return settle_wait_ms_; }

  // Shard index (into `shards`) -> (resident values to read, or null; where to copy the updated values, or null).
  // Both stay valid until step() returns.
  using ParamCache = std::function<std::pair<float*, float*>(int shard)>;
  void set_param_cache(ParamCache cache) { param_cache_ = std::move(cache); }

  // Checkpoints: state buffer k as a whole (N elements: the resident head and the tier's tail, read back), and
  // the other way (the head copied in, the tail written out). Synchronous.
  at::Tensor read_state(int k);
  void write_state(int k, const at::Tensor& values);

  int64_t state_begin() const { return state_begin_; }
  // Bytes of the staging buffers (resident, counted as compute).
  int64_t staging_bytes() const;
  // Windows per step (for tests).
  int64_t windows() const { return static_cast<int64_t>(windows_.size()); }

 private:
  struct Segment {
    int64_t begin = 0, end = 0;
    std::vector<TierRegion> state;  // empty: the state of this segment is resident
    int shard = -1;                 // the chunk shard holding its parameters, -1: resident
  };
  struct Window {
    int segment = 0;
    int64_t begin = 0, end = 0;
  };
  struct Staging {
    std::vector<AlignedBuffer> state;
    AlignedBuffer params, grads;
    std::vector<AioTicket> reads, writes;
  };
  void start_reads(size_t window);
  void start_writes(size_t window);
  // The streamed windows of one step (after begin_step, the head and the cache's answers).
  void stream(double lr, double grad_scale, bool head);
  // Window `w`'s writes have completed: the shard whose last window it is, if any, is settled.
  void written(size_t w);
  void mark_settled(int shards);
  static void wait_all(TierStore& store, std::vector<AioTicket>& tickets);

  optim::Optimizer& optimizer_;
  TierStore& store_;
  int64_t state_begin_ = 0, start_ = 0, numel_ = 0;
  std::vector<TierShard> shards_;
  Options options_;
  std::vector<Segment> segments_;
  std::vector<Window> windows_;
  std::vector<Staging> staging_;
  ParamCache param_cache_;
  std::vector<std::pair<float*, float*>> cached_;  // per shard, this step: param_cache_'s answer
  std::vector<int> last_of_shard_;                  // per window: the shard whose last window it is, or -1

  // The overlapped step: the worker, and the shards it has settled (all of them when none is in flight).
  std::thread worker_;
  std::mutex mutex_;
  std::condition_variable settled_cv_;
  int settled_ = 0;
  bool worker_done_ = true;
  std::exception_ptr error_;
  double settle_wait_ms_ = 0;
};

}  // namespace kolos::memory
