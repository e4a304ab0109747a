#include "kolos/dist/ledger.h"

#include "kolos/core/error.h"

namespace kolos::dist {

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::kForward: return "forward";
    case Phase::kBackward: return "backward";
    case Phase::kOptimizer: return "optimizer";
    case Phase::kOther: return "other";
  }
  return "other";
}

Ledger::PhaseScope::PhaseScope(Ledger& ledger, Phase phase) : ledger_(ledger), previous_(ledger.phase_.exchange(phase)) {}

Ledger::PhaseScope::~PhaseScope() { ledger_.phase_.store(previous_); }

int64_t Ledger::record(const std::string& axis, const std::string& op, int64_t bytes) {
  const Phase phase = phase_.load();
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  Count* count = const_cast<Count*>(find(axis, op, phase));
  if (!count) {
    counts_.push_back(Count{axis, op, phase});
    count = &counts_.back();
  }
  count->calls += 1;
  count->bytes += bytes;
  events_.push_back(Event{axis, op, phase, bytes, now, Clock::time_point{}});
  return first_event_id_ + static_cast<int64_t>(events_.size()) - 1;
}

void Ledger::finish(int64_t event_id) {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t index = event_id - first_event_id_;
  if (index < 0 || index >= static_cast<int64_t>(events_.size())) return;
  Event& event = events_[index];
  if (event.end == Clock::time_point{}) event.end = now;
}

const Ledger::Count* Ledger::find(const std::string& axis, const std::string& op, Phase phase) const {
  for (const Count& count : counts_)
    if (count.phase == phase && count.op == op && count.axis == axis) return &count;
  return nullptr;
}

nlohmann::json Ledger::to_json() const {
  std::lock_guard<std::mutex> lock(mutex_);
  nlohmann::json out = nlohmann::json::object();
  for (const Count& count : counts_)
    out[count.axis][count.op][phase_name(count.phase)] = {{"calls", count.calls}, {"bytes", count.bytes}};
  return out;
}

std::vector<Ledger::Event> Ledger::events() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return events_;
}

int64_t Ledger::calls(const std::string& axis, const std::string& op, Phase phase) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Count* count = find(axis, op, phase);
  return count ? count->calls : 0;
}

int64_t Ledger::bytes(const std::string& axis, const std::string& op, Phase phase) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Count* count = find(axis, op, phase);
  return count ? count->bytes : 0;
}

int64_t Ledger::total_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t total = 0;
  for (const Count& count : counts_) total += count.bytes;
  return total;
}

void Ledger::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  first_event_id_ += static_cast<int64_t>(events_.size());
  counts_.clear();
  events_.clear();
}

int64_t algorithmic_bytes(const std::string& op, int64_t buffer_bytes, int group_size) {
  KOLOS_ASSERT(group_size >= 1, "group size {} < 1", group_size);
  const int64_t n = group_size, m = buffer_bytes;
  if (n == 1) return 0;
  if (op == "all_reduce") return 2 * (n - 1) * m / n;
  if (op == "reduce_scatter" || op == "all_gather" || op == "all_to_all") return (n - 1) * m / n;
  if (op == "broadcast" || op == "reduce" || op == "send") return m;
  if (op == "recv") return 0;
  KOLOS_ASSERT(false, "unknown collective '{}'", op);
  return 0;
}

}  // namespace kolos::dist
