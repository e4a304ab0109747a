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
// A parameter cache (set_param_cache; ChunkManager's shard cache under memory.placement = "auto"): at the first
// window of each offloaded shard the step asks where that shard's values are resident — then its windows are copied
// from there instead of read from the tier — and where its updated values should go besides the tier (either
// may be null). The tier is written either way (it stays the shard's home), so the values are the same.
//
// Not thread-safe (the training thread).
#pragma once

#include <cstdint>
#include <functional>
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
  };

  // `optimizer`: element-wise, built with resident_state = state_begin and resident_params = the first shard's
  // begin (see the header comment); it and `store` outlive this. Allocates the state regions (InputError when the
  // disk is full) and writes zeros into them (a fresh optimizer's state).
  StreamedStep(optim::Optimizer& optimizer, TierStore& store, int64_t state_begin, std::vector<TierShard> shards,
               Options options);

  // One optimizer step (Optimizer::step's contract) over the resident head and the streamed tail.
  void step(double lr, double grad_scale);

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
};

}  // namespace kolos::memory
