// ChunkManager: ZeRO-3 over chunks (DESIGN "Chunks") — the parameters of one dp rank packed into chunks
// (memory/chunk.h, layout by memory/chunk_search.h), each rank owning a contiguous shard of every chunk, gathered
// block by block with the next block prefetched, gradients reduce-scattered per chunk as soon as they are complete.
//
// Blocks. Every parameter belongs to a block: an index in forward execution order (0, 1, ..., B−1), the unit that
// is gathered and released together. Chunks never span blocks (chunk_search.h), so a block owns whole chunks.
// For a transformer: block 0 = the embeddings (token, position), blocks 1..L = the transformer blocks, block L+1 =
// the final norm and an untied head. A parameter used in two places (a tied embedding, used first by the look-up and
// last by the head) belongs to the block of its first use, and that block should be in Options::keep_gathered: it
// then stays gathered from its before_forward until its gradient is reduced at the end of backward (one gather per
// micro-step instead of two; the memory of that block is resident for the step).
//
// The step protocol (one thread; the CPU autograd engine runs the hooks and the pre-backward node on the thread
// that calls backward()):
//   begin_step()                     zero the gradient shards
//   per micro-step:
//     per block b, in order:         before_forward(b); y = block(x); after_forward(b); y = pre_backward(b, y)
//     loss.backward()                the pre-backward node of block b runs before any of b's backward:
//                                    before_backward(b); each parameter's AccumulateGrad post-hook marks it ready;
//                                    a chunk whose tensors are all ready releases its parameters and launches its
//                                    gradient reduce-scatter
//     finish_backward()              zero gradients for parameters that got none, launch what is left, wait for
//                                    every reduction, release every chunk
//   optimizer over shard_params() / shard_grads() (flat fp32, pieces from optimizer_pieces())
//
//   before_forward(b)   starts the gather of b's chunks unless prefetched, starts the gather of b+1's (prefetch),
//                       waits for b's; b's tensors -> kCompute. Phase "forward".
//   after_forward(b)    b's tensors -> kHold; releases b's chunks unless b keeps gathered (then finish_backward,
//                       or release_all after an evaluation forward, releases them).
//   before_backward(b)  starts the gather of b's chunks (unless gathered or in flight) and of b−1's (prefetch), waits
//                       for b's, allocates b's gradient buffers (each .grad a slice of them); b's tensors ->
//                       kCompute. Phase "backward".
// Without grad mode (evaluation): before_forward/after_forward per block, then release_all(); pre_backward returns
// its input.
//
// Contract with the model: a block reads its parameters only between its before_forward and after_forward (a
// keep-gathered block: until the end of forward), and in backward only through autograd. A chunk's parameters are
// released in backward as soon as every gradient of its tensors has arrived: every node that saved a parameter (or
// a view of it) has a graph edge to it, so by then none is left to run. A parameter read in backward outside
// autograd (detached, under no-grad) is not tracked. Recomputed blocks (nn::recompute) work: the pre-backward node
// sits above the recomputation and gathers the block before it runs again.
//
// Gradients are averaged over the dp group (reduce-scatter, average) and added into shard_grads(): with gradient
// accumulation every micro-step reduces (that is what keeps gradients sharded) and the shards sum the micro-steps,
// so a loss scaled by 1/grad_accum gives the gradient of the global batch. Reductions are launched in descending
// chunk order — chunk c only after every chunk above it — so every rank issues them in the same order whatever
// order its hooks fired in (a chunk done early waits; blocks in forward order finish backward in that order anyway).
// Gathers and reductions share the Comm: every rank must also interleave them identically, which holds because
// they are issued from the same points of the same autograd graph, run by the engine in a deterministic order
// (the assumption FSDP makes too). Collective calls per micro-step: one all-gather per chunk in forward and one in
// backward (one in all for keep-gathered blocks), one reduce-scatter per chunk — 3Ψ (padded) in the ledger.
//
// Memory: at most the chunks of two adjacent blocks (plus keep-gathered ones) are gathered at a time, plus the
// gradient buffers (chunk-sized, allocated in before_backward) of the block in backward and of the chunks whose
// reduction is in flight or waits its turn (at most Options::max_pending_reductions in flight before the oldest is
// waited for). Released buffers are cached for reuse (BufferCache, Options::buffer_cache_bytes); those of 32 MiB
// and more are mapped and unmapped on their own, outside the heap.
//
// Parameter offload (Options::offload_fraction > 0; memory.offload_param_frac): the master shards of the last
// chunks — the fewest trailing chunks whose shards hold at least that fraction of the shard elements — live on a tier (memory/tiers.h) instead of in shard_params(), which then holds the resident chunks' shards
// only. Such a chunk's shard is a storage of its own, empty (nbytes 0) between uses: before each gather of the chunk
// it is read back from the tier (prefetched: before_forward(b) starts the reads of block b+2's offloaded shards,
// before_backward(b) those of block b−2, ahead of their gathers), and freed as soon as the gather has completed.
// The optimizer updates these shards on the tier (memory/offload.h: offloaded_shards()); the manager never writes
// them back except in set_param. Per step this reads each offloaded shard twice (forward and backward gathers;
// once for a keep-gathered block).
//
// Gradient offload (Options::offload_grads, with parameter offload; memory.offload_grads): the gradient shards of
// the offloaded chunks live on the tier too (TierShard::grad_region), and shard_grads() holds the resident chunks'
// only. When such a chunk's reduction is waited for, its gradient shard gets a buffer of its own (zeros, or on a
// later micro-step of the step the partial sum read back), the reduced gradient is added into it, its sum of
// squares is kept for grad_sum_of_squares(), and it is written to the tier (write-behind: at most
// max_pending_reductions writes in flight) and freed. finish_backward waits for every write. The optimizer reads
// these gradients from the tier (memory/offload.h). So at one rank, resident gradient memory is the chunk buffers
// of the blocks in backward, not the model's.
//
// The shard cache (memory.placement = "auto"; set_cache_capacity). Every offloaded shard's home stays the tier,
// written through (by the optimizer and set_param), but after a use up to `capacity` bytes of them stay resident
// instead of being freed, so the next use reads no bytes. Uses are the gathers of a chunk (forward, backward) and the
// optimizer's visit of its shard (StreamedStep's ParamCache). From the first begin_step until the next (the first
// step and its optimizer step), the order of the uses is recorded: the trace. When a used shard would overflow the
// capacity, the cached shards are ranked by their next use in the trace (the step repeats it) and those needed
// furthest in the future are freed (Belady's rule) — or the used shard itself, when it is needed last. A shard whose
// chunk is gathered or gathering is never freed for another (its gather may still read it); the optimizer admits a
// shard only into free room (the step's windows point into the cached shards). The cache changes no value: a cached
// shard equals its tier copy.
//
// The update fence (set_update_fence; memory/offload.h's overlapped step): the optimizer may still be updating the
// offloaded shards on a worker thread while the next step's forward runs. Before the manager reads or frees an
// offloaded shard (its region, its resident or cached copy) or writes its gradient region, it calls the fence with
// the shard's index, which returns once the optimizer is done with that shard.
//
// Lifetime: the manager must outlive every autograd graph built with its parameters (its hooks and nodes point at
// it); the Comm outlives the manager. Not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/dist/comm.h"
#include "kolos/memory/chunk.h"
#include "kolos/memory/chunk_search.h"
#include "kolos/memory/tiers.h"
#include "kolos/optim/optimizer.h"

namespace torch::autograd {
struct Node;
}

namespace kolos::memory {

// One parameter to manage: this rank's (tensor-parallel) piece shape, and its block.
struct ChunkParam {
  std::string name;
  std::vector<int64_t> shape;
  int block = 0;
};

class ChunkManager {
 public:
  struct Options {
    // Elements per regular chunk (> 0): e.g. search_chunk_size(...).chunk_size. Rounded up to a multiple of the
    // group size; a larger parameter gets a chunk of its own.
    int64_t chunk_size = 0;
    // Blocks that stay gathered from before_forward until their gradient is reduced (see "Blocks" above).
    std::vector<int> keep_gathered;
    // Released buffers kept for reuse; < 0: the bytes of the two largest adjacent blocks' chunks, twice (parameters
    // and gradients), which prefetching needs anyway.
    int64_t buffer_cache_bytes = -1;
    // Reductions in flight before the oldest is waited for (bounds gradient-buffer memory). >= 1.
    int max_pending_reductions = 4;
    // Parameter offload (see above): at least this fraction (in [0, 1]) of the shard elements, as whole trailing
    // chunks, lives on `tier` (not owned; outlives the manager). 0: none.
    double offload_fraction = 0;
    TierStore* tier = nullptr;
    // Gradient offload (see above); needs offload_fraction > 0.
    bool offload_grads = false;
  };

  // Packs `params` (blocks non-decreasing, in registration = forward order) into chunks, allocates this rank's
  // shards (zeros) and builds the parameter tensors (requires_grad, on their chunks' storage), all released.
  // `comm`: the dp group (null or size 1: one rank; gathers and reductions are local copies). Bad options:
  // InputError.
  ChunkManager(std::vector<ChunkParam> params, Options options, dist::Comm* comm);
  ~ChunkManager();
  ChunkManager(const ChunkManager&) = delete;
  ChunkManager& operator=(const ChunkManager&) = delete;

  // --- Layout ---
  int num_params() const { return static_cast<int>(params_.size()); }
  int num_blocks() const { return num_blocks_; }
  const ChunkLayout& layout() const { return layout_; }
  int num_chunks() const { return static_cast<int>(chunks_.size()); }
  Chunk& chunk(int c) { return *chunks_[c]; }
  const Chunk& chunk(int c) const { return *chunks_[c]; }
  // The chunks [first, end) of block b.
  std::pair<int, int> block_chunks(int b) const { return block_chunks_[b]; }
  // Parameter i (registration order): a tensor on its chunk's storage. Its values are readable only while its chunk
  // is gathered (between before_forward/before_backward of its block and the release). Bind these to the model.
  const at::Tensor& param(int i) const;
  std::vector<at::Tensor> params() const;
  const std::string& param_name(int i) const { return params_[i].name; }

  // --- Shards (what the optimizer updates) ---
  // This rank's shard of every chunk, concatenated in chunk order: fp32, contiguous, Σ capacity / n elements
  // (shard_numel()) — with parameter offload, shard_params() holds only the resident head of that layout (the
  // offloaded chunks' shards are offloaded_shards()); shard_grads() holds all of it unless gradients are offloaded
  // too (then the same head).
  const at::Tensor& shard_params() const { return shard_params_; }
  int64_t shard_numel() const { return shard_grads_.numel(); }
  const std::vector<TierShard>& offloaded_shards() const { return offloaded_; }
  // Bytes of offloaded shards read back and resident now (waiting for or done with their gathers).
  int64_t fetched_shard_bytes() const;
  const at::Tensor& shard_grads() const { return shard_grads_; }
  // Σ g² over this rank's whole gradient shard: optim::sum_of_squares of each chunk's gradient shard (resident, or
  // as last written to the tier), summed in chunk order. After finish_backward.
  double grad_sum_of_squares() const;
  // One optimizer piece per (parameter ∩ this rank's shard), tensor = parameter index, offsets into
  // shard_params/shard_grads (equal); `weight_decay` and `adapt` per parameter (empty: 0 and true). Padding is not
  // covered (it stays zero).
  std::vector<optim::Piece> optimizer_pieces(const std::vector<double>& weight_decay = {},
                                             const std::vector<bool>& adapt = {}) const;
  // Sets parameter i from its whole value (this rank keeps the part in its shard). Not while a step is running.
  void set_param(int i, const at::Tensor& value);
  // Sets every parameter, value_of(i) giving parameter i's whole value, chunk by chunk: an offloaded shard is read
  // back and written out once per chunk (set_param does it per parameter), and one value is alive at a time.
  void set_params(const std::function<at::Tensor(int)>& value_of);
  // Every parameter's whole value (fresh tensors): gathers each chunk in turn and releases it. Collective over the
  // dp group; phase "other". Between steps only (checkpoints, parity checks).
  std::vector<at::Tensor> whole_params();

  // --- The step (see the header comment) ---
  void begin_step();
  void before_forward(int block);
  void after_forward(int block);
  // The identity on a block's output whose backward calls before_backward(block) first. With grad mode off, or an
  // output that does not require grad, returns `output` itself.
  at::Tensor pre_backward(int block, const at::Tensor& output);
  void before_backward(int block);
  void finish_backward();
  // Releases every chunk (waiting for gathers in flight). After an evaluation forward, where keep-gathered blocks
  // stay gathered until the end of forward (the tied head reads them); finish_backward calls it.
  void release_all();

  // --- Figures ---
  int64_t gathered_bytes() const;  // parameter chunks resident (gathered or gathering) now
  int64_t peak_gathered_bytes() const { return peak_gathered_bytes_; }  // the most at any gather by the manager
  void reset_peak() { peak_gathered_bytes_ = gathered_bytes(); }
  int64_t gathers() const { return gathers_; }                      // all-gathers started since construction
  int64_t cached_bytes() const { return cache_->cached_bytes(); }

  // --- The shard cache (see above) ---
  // Turns the cache on (bytes > 0) or off (0: every cached shard freed). Ends the trace if it is still recording.
  void set_cache_capacity(int64_t bytes);
  int64_t cache_capacity() const { return cache_capacity_; }
  int64_t shard_cache_bytes() const { return cached_shards(-1, nullptr); }  // offloaded shards cached now
  bool shard_cached(int c) const { return tier_index(c) >= 0 && cached_[tier_index(c)]; }
  int64_t cache_hits() const { return cache_hits_; }  // uses that found their shard cached
  const std::vector<int>& trace() const { return trace_; }  // the recorded uses (tier indices of offloaded_)
  // The optimizer's visit of offloaded shard i (a use; StreamedStep::ParamCache): where its values are resident
  // (read them from there, not from the tier; null: read the tier), and where to copy the updated values (null:
  // nowhere; the tier is written either way).
  std::pair<float*, float*> optimizer_visit(int i);
  // See "The update fence" above (empty: none).
  void set_update_fence(std::function<void(int)> fence) { fence_ = std::move(fence); }

 private:
  class ReadyHook;
  void check_block(int block, const char* what) const;
  // set_param's part in chunk c's shard (and its gathered copy); the caller writes an offloaded shard out.
  void copy_param(int i, const at::Tensor& value);
  void write_shard(int c);
  void gather_block(int block, dist::Phase phase);
  void release_chunk(Chunk& c);
  // Parameter offload: chunk c's shard (index into offloaded_ via tier_index): start reading it back, wait for it,
  // free it. No-ops for resident chunks and as the state requires.
  int tier_index(int c) const { return c - first_offloaded_; }
  void settle(int i) const {
    if (fence_) fence_(i);
  }
  std::function<void(int)> fence_;
  void fetch_shard(int c);
  void wait_shard(int c);
  void evict_shard(int c);
  void fetch_block(int block);
  // The shard cache: a use of offloaded shard i; the next use of shard j after the uses so far this step (in
  // trace positions; INT64_MAX: never); whether shard i (resident) may stay, freeing those needed later if `evict`.
  void note_use(int i);
  int64_t next_use(int j) const;
  bool admit(int i, bool evict);
  // Offloaded shard i's bytes; freeing its resident copy (cached or read back); the bytes of the cached shards but
  // `except`, with (next use, shard) of each, furthest first, into `furthest_first` unless null.
  int64_t shard_bytes(int i) const { return offloaded_[i].numel * 4; }
  void drop_shard(int i);
  int64_t cached_shards(int except, std::vector<std::pair<int64_t, int>>* furthest_first) const;
  void on_grad_ready(int param);
  void launch_ready_reductions();
  void wait_oldest_reduction();
  // Gradient offload: the write of chunk c's gradient shard after its reduction (from `buffer`, else its gradient
  // storage); waiting for the oldest write.
  void write_grad_shard(int c, at::Tensor buffer = {});
  void wait_oldest_grad_write();

  std::vector<ChunkParam> params_;
  Options options_;
  dist::Comm* comm_;
  int group_size_ = 1, rank_ = 0, num_blocks_ = 0;
  ChunkLayout layout_;
  std::vector<std::pair<int, int>> block_chunks_;
  std::vector<bool> keep_gathered_;
  std::unique_ptr<BufferCache> cache_;
  std::vector<std::unique_ptr<Chunk>> chunks_;
  std::vector<std::pair<int, int>> param_place_;  // per parameter: (chunk, tensor index in the chunk)
  at::Tensor shard_params_, shard_grads_;
  std::vector<int64_t> shard_offset_;  // per chunk: where its shard lies in the flat shard buffers
  // Parameter offload: chunks [first_offloaded_, num_chunks()) have their shard on options_.tier.
  int first_offloaded_ = 0;
  std::vector<TierShard> offloaded_;
  std::vector<c10::Storage> tier_storage_;   // per offloaded chunk: its shard's storage (nbytes 0 when evicted)
  std::vector<AioTicket> tier_reads_;        // per offloaded chunk: the read in flight (0: none)
  std::vector<bool> tier_resident_;          // per offloaded chunk: its storage holds (or is receiving) the shard
  // The shard cache: per offloaded chunk, whether it stays resident after its use (only while tier_resident_); the
  // capacity; the trace (0: not
  // begun, 1: recording, 2: done) with each shard's positions in it; uses so far this step; hits.
  std::vector<bool> cached_;
  int64_t cache_capacity_ = 0, uses_ = 0, cache_hits_ = 0;
  int trace_state_ = 0;
  std::vector<int> trace_;
  std::vector<std::vector<int64_t>> trace_positions_;
  // Gradient offload, per offloaded chunk: its gradient shard's storage (nbytes 0 between uses), whether this step
  // wrote it already, its sum of squares as written; and the writes in flight, oldest first (one rank writes a
  // chunk's first gradient of the step straight from the chunk's gradient buffer, `buffer`).
  struct GradWrite {
    int index = 0;
    AioTicket ticket = 0;
    at::Tensor buffer;
  };
  std::vector<c10::Storage> grad_storage_;
  std::vector<bool> grad_written_;
  std::vector<double> grad_sq_;
  std::vector<GradWrite> grad_writes_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // keep the hooked AccumulateGrad nodes alive

  std::vector<bool> done_;         // per chunk: every gradient of this backward arrived (reduction due)
  int next_reduction_ = -1;        // the next chunk (descending) whose reduction may be launched
  std::vector<int> pending_;       // chunks with a reduction in flight, oldest first
  int64_t peak_gathered_bytes_ = 0, gathers_ = 0;
};

}  // namespace kolos::memory
