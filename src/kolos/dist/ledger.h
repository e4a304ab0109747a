// Ledger: what the collectives of a rank cost — calls and bytes per (axis, op, phase), and one timed event per call.
//
// Byte convention (reference/yardsticks.md §5): `bytes` is what THIS rank SENDS under the ring / bandwidth-optimal
// algorithm of the op, on a buffer of M bytes, whatever the backend really does. Integer division rounds down.
//   all_reduce      2(n−1)·M/n    M = the tensor
//   reduce_scatter  (n−1)·M/n     M = the full input (padded to a multiple of n, see Comm::reduce_scatter)
//   all_gather      (n−1)·M/n     M = the full output (n × the local input)
//   all_to_all      (n−1)·M/n     M = this rank's input buffer
//   broadcast       M             on every rank, root or not (pipelined chain; nccl-tests' busbw factor 1). Gloo's
//   reduce          M             flat tree sends more from the root; the ledger counts the algorithmic volume.
//   send            M             recv: 0 (the call is counted, the bytes go to the sender's row)
// A group of one (n = 1) moves 0 bytes; its calls are still counted.
//
// Phases: "forward", "backward", "optimizer", "other" (the default). The phase is a property of the ledger, set with
// Ledger::PhaseScope, and applies to every call recorded while the scope lives, from any thread.
//
// Thread-safety: every member function may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kolos::dist {

enum class Phase { kForward, kBackward, kOptimizer, kOther };

// "forward", "backward", "optimizer", "other".
const char* phase_name(Phase phase);

class Ledger {
 public:
  using Clock = std::chrono::steady_clock;

  // One recorded call. `end` is the moment completion was first observed (the backend's completion callback, or
  // the first wait() that returned); it stays Clock::time_point{} while the call is in flight or if it failed.
  struct Event {
    std::string axis;
    std::string op;
    Phase phase;
    int64_t bytes;
    Clock::time_point start;
    Clock::time_point end;
  };

  // Sets the ledger's phase for its lifetime and restores the previous phase when destroyed.
  class PhaseScope {
   public:
    PhaseScope(Ledger& ledger, Phase phase);
    ~PhaseScope();
    PhaseScope(const PhaseScope&) = delete;
    PhaseScope& operator=(const PhaseScope&) = delete;

   private:
    Ledger& ledger_;
    Phase previous_;
  };

  Phase phase() const { return phase_.load(); }

  // Counts one call of `op` on `axis` moving `bytes` in the current phase, opens its event (start = now) and
  // returns the event's id for finish().
  int64_t record(const std::string& axis, const std::string& op, int64_t bytes);
  // Sets the event's end to now unless it is already set; ids from before a reset() are ignored.
  void finish(int64_t event_id);

  // {axis: {op: {phase: {"calls": int, "bytes": int}}}} — only the entries with at least one call.
  nlohmann::json to_json() const;
  std::vector<Event> events() const;  // a copy, in the order of record()
  int64_t calls(const std::string& axis, const std::string& op, Phase phase) const;
  int64_t bytes(const std::string& axis, const std::string& op, Phase phase) const;
  // Sum over every axis, op and phase.
  int64_t total_bytes() const;

  // Forgets every count and event (the phase is kept). Call between logged steps.
  void reset();

 private:
  struct Count {
    std::string axis, op;
    Phase phase;
    int64_t calls = 0, bytes = 0;
  };
  const Count* find(const std::string& axis, const std::string& op, Phase phase) const;

  std::atomic<Phase> phase_{Phase::kOther};
  mutable std::mutex mutex_;
  std::vector<Count> counts_;  // few entries (axes × ops × phases): a linear scan is cheapest
  std::vector<Event> events_;
  int64_t first_event_id_ = 0;  // id of events_[0]; grows on reset() so stale ids are recognised
};

// The bytes a rank sends for `op` on a buffer of `buffer_bytes` in a group of `group_size` (the table above).
// `op` is one of all_reduce, reduce_scatter, all_gather, all_to_all, broadcast, reduce, send, recv.
int64_t algorithmic_bytes(const std::string& op, int64_t buffer_bytes, int group_size);

}  // namespace kolos::dist
