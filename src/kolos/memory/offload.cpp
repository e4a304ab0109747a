#include "kolos/memory/offload.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kolos/core/error.h"
#include "kolos/core/timer.h"

namespace kolos::memory {

int64_t offload_begin(int64_t n, double fraction, const std::vector<TierShard>& shards) {
  if (fraction <= 0 || n <= 0) return n;
  const int64_t want = std::min<int64_t>(n, static_cast<int64_t>(std::ceil(fraction * static_cast<double>(n))));
  const int64_t begin = n - want;
  int64_t origin = 0;
  for (const auto& s : shards)
    if (begin >= s.begin && begin < s.begin + s.numel) origin = s.begin;
  return origin + (begin - origin) / kAlignElements * kAlignElements;
}

StreamedStep::StreamedStep(optim::Optimizer& optimizer, TierStore& store, int64_t state_begin,
                           std::vector<TierShard> shards, Options options)
    : optimizer_(optimizer),
      store_(store),
      state_begin_(state_begin),
      numel_(optimizer.buffer_numel()),
      shards_(std::move(shards)),
      options_(options) {
  KOLOS_ASSERT(optimizer_.elementwise(), "{}: only element-wise rules can be streamed", optimizer_.name());
  KOLOS_ASSERT(options_.window_elements > 0 && options_.window_elements % kAlignElements == 0 && options_.staging >= 2,
               "streamed step: window of {} elements, {} staging sets", options_.window_elements, options_.staging);
  KOLOS_ASSERT(state_begin_ >= 0 && state_begin_ <= numel_ && optimizer_.resident_state_numel() == state_begin_,
               "streamed step: state offloaded from {} of {}, the optimizer holds {}", state_begin_, numel_,
               optimizer_.resident_state_numel());
  for (size_t i = 0; i < shards_.size(); ++i)
    KOLOS_ASSERT(shards_[i].begin + shards_[i].numel == (i + 1 < shards_.size() ? shards_[i + 1].begin : numel_),
                 "offloaded shards must be contiguous up to the end of the range");
  start_ = shards_.empty() ? state_begin_ : std::min(state_begin_, shards_.front().begin);
  // No window larger than the longest segment (aligned up): the staging buffers need no more.
  int64_t longest = 0;
  for (const auto& s : shards_) longest = std::max(longest, s.numel);
  longest = std::max(longest, numel_ - state_begin_);
  options_.window_elements =
      std::max(kAlignElements, std::min(options_.window_elements, (longest + kAlignElements - 1) / kAlignElements * kAlignElements));

  // Segments: cut at state_begin and at the shard boundaries.
  std::vector<int64_t> cuts = {start_, numel_};
  if (state_begin_ > start_ && state_begin_ < numel_) cuts.push_back(state_begin_);
  for (const auto& s : shards_) cuts.push_back(s.begin);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  const int states = static_cast<int>(optimizer_.state().size());
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    Segment seg;
    seg.begin = cuts[i];
    seg.end = cuts[i + 1];
    for (size_t s = 0; s < shards_.size(); ++s)
      if (seg.begin >= shards_[s].begin && seg.begin < shards_[s].begin + shards_[s].numel) seg.shard = static_cast<int>(s);
    KOLOS_ASSERT(seg.shard < 0 || (seg.begin - shards_[seg.shard].begin) % kAlignElements == 0,
                 "segment at {} is not aligned in its shard", seg.begin);
    if (seg.begin >= state_begin_)
      for (int k = 0; k < states; ++k) seg.state.push_back(store_.allocate((seg.end - seg.begin) * 4));
    for (int64_t w = seg.begin; w < seg.end; w += options_.window_elements)
      windows_.push_back({static_cast<int>(segments_.size()), w, std::min(seg.end, w + options_.window_elements)});
    segments_.push_back(std::move(seg));
  }
  std::vector<int> last(shards_.size(), -1);
  for (size_t i = 0; i < windows_.size(); ++i)
    if (segments_[windows_[i].segment].shard >= 0) last[segments_[windows_[i].segment].shard] = static_cast<int>(i);
  last_of_shard_.assign(windows_.size(), -1);
  for (size_t s = 0; s < shards_.size(); ++s)
    if (last[s] >= 0) last_of_shard_[last[s]] = static_cast<int>(s);
  settled_ = static_cast<int>(shards_.size());
  const bool any_state = std::any_of(segments_.begin(), segments_.end(), [](const Segment& s) { return !s.state.empty(); });
  staging_.resize(options_.staging);
  cached_.assign(shards_.size(), {nullptr, nullptr});
  for (auto& st : staging_) {
    if (any_state)
      for (int k = 0; k < states; ++k) st.state.emplace_back(options_.window_elements * 4);
    if (!shards_.empty()) st.params = AlignedBuffer(options_.window_elements * 4);
    if (!shards_.empty() && shards_.back().grad_region.id >= 0) st.grads = AlignedBuffer(options_.window_elements * 4);
  }
  // A fresh optimizer's state is zero: written a window at a time (a whole buffer of zeros would be the model's size).
  if (any_state) {
    AlignedBuffer zeros(options_.window_elements * 4);
    std::memset(zeros.data(), 0, static_cast<size_t>(zeros.bytes()));
    for (const auto& seg : segments_)
      for (const auto& region : seg.state)
        for (int64_t at = 0; at < region.bytes; at += zeros.bytes())
          store_.wait(store_.write(region, at, zeros.data(), std::min(zeros.bytes(), region.bytes - at)));
  }
}

StreamedStep::~StreamedStep() {
  try {
    finish();
  } catch (...) {
    // The step's error: whoever waited first reported it, or the run is already failing.
  }
}

bool StreamedStep::overlappable() const {
  if (shards_.empty() || start_ != shards_.front().begin) return false;  // parameters of a window resident
  return std::all_of(shards_.begin(), shards_.end(), [](const TierShard& s) { return s.grad_region.id >= 0; });
}

void StreamedStep::mark_settled(int shards) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    settled_ = std::max(settled_, shards);
  }
  settled_cv_.notify_all();
}

void StreamedStep::written(size_t w) {
  if (last_of_shard_[w] >= 0) mark_settled(last_of_shard_[w] + 1);
}

void StreamedStep::settle(int shard) {
  if (!worker_.joinable()) return;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (settled_ <= shard && !worker_done_) {
      Timer waited;
      settled_cv_.wait(lock, [&] { return settled_ > shard || worker_done_; });
      settle_wait_ms_ += waited.ms();
    }
    if (!worker_done_) return;
  }
  finish();  // done (or failed): joined here, the error rethrown
}

void StreamedStep::finish() {
  if (!worker_.joinable()) return;
  Timer waited;
  worker_.join();
  settle_wait_ms_ += waited.ms();
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::swap(error, error_);
  }
  if (error) std::rethrow_exception(error);
}

int64_t StreamedStep::staging_bytes() const {
  int64_t bytes = 0;
  for (const auto& st : staging_) {
    for (const auto& b : st.state) bytes += b.bytes();
    bytes += st.params.bytes() + st.grads.bytes();
  }
  return bytes;
}

void StreamedStep::wait_all(TierStore& store, std::vector<AioTicket>& tickets) {
  for (AioTicket t : tickets) store.wait(t);
  tickets.clear();
}

void StreamedStep::start_reads(size_t i) {
  const Window& w = windows_[i];
  const Segment& seg = segments_[w.segment];
  Staging& st = staging_[i % staging_.size()];
  wait_all(store_, st.writes);  // the set's previous window is on the tier
  if (i >= staging_.size()) written(i - staging_.size());
  const int64_t bytes = align_up((w.end - w.begin) * 4);
  for (size_t k = 0; k < seg.state.size(); ++k)
    st.reads.push_back(store_.read(seg.state[k], (w.begin - seg.begin) * 4, st.state[k].data(), bytes));
  if (seg.shard >= 0) {
    const TierShard& sh = shards_[seg.shard];
    if (const float* src = cached_[seg.shard].first) {  // resident: copied, not read
      std::memcpy(st.params.data(), src + (w.begin - sh.begin), static_cast<size_t>((w.end - w.begin) * 4));
      std::memset(st.params.data() + (w.end - w.begin) * 4, 0,
                  static_cast<size_t>(bytes - (w.end - w.begin) * 4));
    } else {
      st.reads.push_back(store_.read(sh.region, (w.begin - sh.begin) * 4, st.params.data(), bytes));
    }
    if (sh.grad_region.id >= 0)
      st.reads.push_back(store_.read(sh.grad_region, (w.begin - sh.begin) * 4, st.grads.data(), bytes));
  }
}

void StreamedStep::start_writes(size_t i) {
  const Window& w = windows_[i];
  const Segment& seg = segments_[w.segment];
  Staging& st = staging_[i % staging_.size()];
  const int64_t bytes = align_up((w.end - w.begin) * 4);
  for (size_t k = 0; k < seg.state.size(); ++k)
    st.writes.push_back(store_.write(seg.state[k], (w.begin - seg.begin) * 4, st.state[k].data(), bytes));
  if (seg.shard >= 0) {
    const TierShard& sh = shards_[seg.shard];
    st.writes.push_back(store_.write(sh.region, (w.begin - sh.begin) * 4, st.params.data(), bytes));
  }
}

void StreamedStep::step(double lr, double grad_scale) {
  finish();
  optimizer_.begin_step();
  // The cache's answers for every shard, in the order the windows come: nothing else changes the cache during the
  // step, so asking up front is asking at each shard's first window.
  if (param_cache_)
    for (size_t s = 0; s < shards_.size(); ++s) cached_[s] = param_cache_(static_cast<int>(s));
  if (options_.overlap && overlappable() && !windows_.empty()) {
    if (start_ > 0) optimizer_.update(lr, grad_scale, optimizer_.resident_window(0, start_));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      settled_ = 0;
      worker_done_ = false;
      error_ = nullptr;
    }
    worker_ = std::thread([this, lr, grad_scale] {
      std::exception_ptr error;
      try {
        stream(lr, grad_scale, false);
      } catch (...) {
        error = std::current_exception();
        // Requests still in flight write into the staging buffers: waited (their errors are this one's echo).
        for (auto& st : staging_)
          for (auto* tickets : {&st.reads, &st.writes}) {
            for (AioTicket t : *tickets) {
              try {
                store_.wait(t);
              } catch (...) {
              }
            }
            tickets->clear();
          }
        cached_.assign(shards_.size(), {nullptr, nullptr});
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = error;
        settled_ = static_cast<int>(shards_.size());
        worker_done_ = true;
      }
      settled_cv_.notify_all();
    });
    return;
  }
  stream(lr, grad_scale, true);
}

void StreamedStep::stream(double lr, double grad_scale, bool head) {
  const size_t n = windows_.size(), depth = staging_.size() - 1;
  for (size_t i = 0; i < std::min(depth, n); ++i) start_reads(i);
  // The resident head while the first windows are read.
  if (head && start_ > 0) optimizer_.update(lr, grad_scale, optimizer_.resident_window(0, start_));
  for (size_t i = 0; i < n; ++i) {
    const Window& w = windows_[i];
    const Segment& seg = segments_[w.segment];
    Staging& st = staging_[i % staging_.size()];
    wait_all(store_, st.reads);
    optim::StepWindow sw;
    if (seg.state.empty()) {
      sw = optimizer_.resident_window(w.begin, w.end);
    } else {
      sw.begin = w.begin;
      sw.end = w.end;
      for (auto& b : st.state) sw.state.push_back(reinterpret_cast<float*>(b.data()));
    }
    if (seg.shard >= 0) sw.params = reinterpret_cast<float*>(st.params.data());
    if (seg.shard >= 0 && shards_[seg.shard].grad_region.id >= 0) sw.grads = reinterpret_cast<const float*>(st.grads.data());
    optimizer_.update(lr, grad_scale, sw);
    if (seg.shard >= 0)
      if (float* dst = cached_[seg.shard].second)
        std::memcpy(dst + (w.begin - shards_[seg.shard].begin), st.params.data(), static_cast<size_t>((w.end - w.begin) * 4));
    start_writes(i);
    if (i + depth < n) start_reads(i + depth);
  }
  for (auto& st : staging_) {
    wait_all(store_, st.reads);
    wait_all(store_, st.writes);
  }
  cached_.assign(shards_.size(), {nullptr, nullptr});
  mark_settled(static_cast<int>(shards_.size()));
}

at::Tensor StreamedStep::read_state(int k) {
  finish();
  at::Tensor out = at::empty({numel_}, at::kFloat);
  const at::Tensor& head = optimizer_.state().at(k).second;
  out.narrow(0, 0, state_begin_).copy_(head);
  for (const auto& seg : segments_) {
    if (seg.state.empty()) continue;
    AlignedBuffer buf(seg.state[k].bytes);
    store_.wait(store_.read(seg.state[k], 0, buf.data(), buf.bytes()));
    std::memcpy(out.data_ptr<float>() + seg.begin, buf.data(), static_cast<size_t>((seg.end - seg.begin) * 4));
  }
  return out;
}

void StreamedStep::write_state(int k, const at::Tensor& values) {
  KOLOS_ASSERT(values.numel() == numel_ && values.scalar_type() == at::kFloat, "state buffer {}: {} elements expected",
               k, numel_);
  finish();
  const at::Tensor v = values.contiguous();
  at::Tensor head = optimizer_.state().at(k).second;  // shares the optimizer's buffer
  head.copy_(v.narrow(0, 0, state_begin_));
  for (const auto& seg : segments_) {
    if (seg.state.empty()) continue;
    AlignedBuffer buf(seg.state[k].bytes);
    std::memset(buf.data(), 0, static_cast<size_t>(buf.bytes()));
    std::memcpy(buf.data(), v.data_ptr<float>() + seg.begin, static_cast<size_t>((seg.end - seg.begin) * 4));
    store_.wait(store_.write(seg.state[k], 0, buf.data(), buf.bytes()));
  }
}

}  // namespace kolos::memory
