#include "kolos/parallel/pipeline/simulator.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <tuple>

#include <fmt/format.h>

#include "kolos/core/error.h"

namespace kolos::parallel::pipeline {

Costs Costs::equal(int stages, int chunks, double forward, double backward, double p2p_latency) {
  Costs costs;
  costs.forward.assign(stages, std::vector<double>(chunks, forward));
  costs.backward.assign(stages, std::vector<double>(chunks, backward));
  costs.p2p_latency = p2p_latency;
  return costs;
}

Costs Costs::per_stage(const std::vector<double>& forward, const std::vector<double>& backward, int chunks,
                       double p2p_latency) {
  KOLOS_ASSERT(forward.size() == backward.size() && chunks >= 1, "{} forward and {} backward costs, {} chunks",
               forward.size(), backward.size(), chunks);
  Costs costs;
  costs.p2p_latency = p2p_latency;
  for (size_t s = 0; s < forward.size(); ++s) {
    costs.forward.emplace_back(chunks, forward[s] / chunks);
    costs.backward.emplace_back(chunks, backward[s] / chunks);
  }
  return costs;
}

double Timeline::bubble() const {
  if (makespan <= 0 || idle.empty()) return 0;
  double total = 0;
  for (double t : idle) total += t;
  return total / (static_cast<double>(idle.size()) * makespan);
}

double Timeline::bubble(int stage) const { return makespan <= 0 ? 0 : idle.at(stage) / makespan; }

Timeline simulate(const Schedule& schedule, const Costs& costs) {
  const int p = schedule.stages, v = schedule.chunks;
  KOLOS_ASSERT(static_cast<int>(schedule.instructions.size()) == p, "{} instruction lists for {} stages",
               schedule.instructions.size(), p);
  KOLOS_ASSERT(static_cast<int>(costs.forward.size()) == p && static_cast<int>(costs.backward.size()) == p,
               "costs for {} and {} stages, the schedule has {}", costs.forward.size(), costs.backward.size(), p);
  for (int s = 0; s < p; ++s) {
    KOLOS_ASSERT(static_cast<int>(costs.forward[s].size()) == v && static_cast<int>(costs.backward[s].size()) == v,
                 "stage {} has costs for {} and {} chunks, the schedule has {}", s, costs.forward[s].size(),
                 costs.backward[s].size(), v);
    for (int c = 0; c < v; ++c) {
      KOLOS_ASSERT(costs.forward[s][c] >= 0 && costs.backward[s][c] >= 0, "negative cost on stage {} chunk {}", s,
                   c);
    }
  }
  KOLOS_ASSERT(costs.p2p_latency >= 0 && costs.send >= 0 && costs.receive >= 0,
               "negative message costs: latency {}, send {}, receive {}", costs.p2p_latency, costs.send,
               costs.receive);

  Timeline timeline;
  timeline.spans.resize(p);
  timeline.busy.assign(p, 0);
  timeline.idle.assign(p, 0);
  for (int s = 0; s < p; ++s) timeline.spans[s].resize(schedule.instructions[s].size());

  // Messages sent and not yet received: (gradient?, micro, boundary, from, to) → arrival time.
  std::multimap<std::tuple<bool, int, int, int, int>, double> arrivals;
  std::vector<double> clock(p, 0);
  std::vector<size_t> pc(p, 0);
  // Stages run as far as they can, round after round; only a receive whose message is not sent yet stops one.
  // Times do not depend on this order: a receive ends at max(its stage's clock, the message's arrival).
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      const auto& list = schedule.instructions[s];
      for (; pc[s] < list.size(); ++pc[s], progress = true) {
        const Instruction& in = list[pc[s]];
        Span& span = timeline.spans[s][pc[s]];
        span.start = clock[s];
        if (is_compute(in.op)) {
          const double cost = (in.op == Op::kForward ? costs.forward : costs.backward)[s][in.chunk];
          clock[s] += cost;
          timeline.busy[s] += cost;
        } else if (is_send(in.op)) {
          arrivals.insert({{in.op == Op::kSendGrad, in.micro, boundary(schedule, s, in), s, in.peer},
                           clock[s] + costs.p2p_latency});
          clock[s] += costs.send;
        } else if (is_recv(in.op)) {
          auto it = arrivals.find({in.op == Op::kRecvGrad, in.micro, boundary(schedule, s, in), in.peer, s});
          if (it == arrivals.end()) break;
          clock[s] = std::max(clock[s] + costs.receive, it->second);
          arrivals.erase(it);
        }
        span.end = clock[s];
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    KOLOS_ASSERT(pc[s] == schedule.instructions[s].size(), "the {} schedule deadlocks: stage {} waits at #{} {}",
                 schedule.name, s, pc[s], to_string(schedule.instructions[s][pc[s]]));
    timeline.makespan = std::max(timeline.makespan, clock[s]);
  }
  for (int s = 0; s < p; ++s) timeline.idle[s] = timeline.makespan - timeline.busy[s];
  return timeline;
}

namespace {

void check_measured(const Schedule& schedule, const Measured& measured) {
  const int p = schedule.stages;
  KOLOS_ASSERT(static_cast<int>(measured.begin_at.size()) == p && static_cast<int>(measured.end_at.size()) == p,
               "measurements of {} stages for a schedule of {}", measured.begin_at.size(), p);
  for (int s = 0; s < p; ++s) {
    KOLOS_ASSERT(measured.begin_at[s].size() == schedule.instructions[s].size() &&
                     measured.end_at[s].size() == schedule.instructions[s].size(),
                 "stage {}: {} measured instructions, the schedule has {}", s, measured.begin_at[s].size(),
                 schedule.instructions[s].size());
  }
}

}  // namespace

Costs measured_costs(const Schedule& schedule, const Measured& measured) {
  check_measured(schedule, measured);
  const int p = schedule.stages, v = schedule.chunks;
  Costs costs = Costs::equal(p, v, 0, 0);
  std::vector<std::vector<int>> forwards(p, std::vector<int>(v, 0)), backwards = forwards;
  int sends = 0;
  // Sends by (gradient?, micro, boundary, from, to): the moment each was issued.
  std::map<std::tuple<bool, int, int, int, int>, double> sent;
  for (int s = 0; s < p; ++s) {
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      const Instruction& in = schedule.instructions[s][i];
      const double length = measured.end_at[s][i] - measured.begin_at[s][i];
      if (in.op == Op::kForward) {
        costs.forward[s][in.chunk] += length;
        ++forwards[s][in.chunk];
      } else if (in.op == Op::kBackward) {
        costs.backward[s][in.chunk] += length;
        ++backwards[s][in.chunk];
      } else if (is_send(in.op)) {
        sent[{in.op == Op::kSendGrad, in.micro, boundary(schedule, s, in), s, in.peer}] = measured.begin_at[s][i];
        costs.send += length;
        ++sends;
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    for (int c = 0; c < v; ++c) {
      if (forwards[s][c] > 0) costs.forward[s][c] /= forwards[s][c];
      if (backwards[s][c] > 0) costs.backward[s][c] /= backwards[s][c];
    }
  }
  if (sends > 0) costs.send /= sends;
  // Each receive with the start of its message's send.
  std::vector<std::tuple<double, double, double>> receives;  // (send start, receive begin, receive end)
  for (int s = 0; s < p; ++s) {
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      const Instruction& in = schedule.instructions[s][i];
      if (!is_recv(in.op)) continue;
      const auto it = sent.find({in.op == Op::kRecvGrad, in.micro, boundary(schedule, s, in), in.peer, s});
      if (it != sent.end()) receives.emplace_back(it->second, measured.begin_at[s][i], measured.end_at[s][i]);
    }
  }
  auto mean_of = [&](auto&& sample) {
    double sum = 0;
    int n = 0;
    for (const auto& [send, begin, end] : receives) {
      if (const auto x = sample(send, begin, end)) {
        sum += *x;
        ++n;
      }
    }
    return n > 0 ? sum / n : 0.0;
  };
  costs.p2p_latency = mean_of([](double send, double begin, double end) -> std::optional<double> {
    if (begin > send) return std::nullopt;
    return std::max(0.0, end - send);
  });
  costs.receive = mean_of([&](double send, double begin, double end) -> std::optional<double> {
    if (begin < send + costs.p2p_latency) return std::nullopt;
    return std::max(0.0, end - begin);
  });
  return costs;
}

std::vector<double> measured_idle(const Schedule& schedule, const Measured& measured) {
  check_measured(schedule, measured);
  const int p = schedule.stages;
  double first = INFINITY, last = -INFINITY;
  std::vector<double> busy(p, 0);
  for (int s = 0; s < p; ++s) {
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      if (!is_compute(schedule.instructions[s][i].op)) continue;
      first = std::min(first, measured.begin_at[s][i]);
      last = std::max(last, measured.end_at[s][i]);
      busy[s] += measured.end_at[s][i] - measured.begin_at[s][i];
    }
  }
  std::vector<double> idle(p, 0);
  if (!(last > first)) return idle;
  for (int s = 0; s < p; ++s) idle[s] = 1 - busy[s] / (last - first);
  return idle;
}

std::string draw(const Schedule& schedule, const Timeline& timeline) {
  const int p = schedule.stages;
  KOLOS_ASSERT(static_cast<int>(timeline.spans.size()) == p, "a timeline of {} stages for {} stages",
               timeline.spans.size(), p);
  auto label = [&](const Instruction& in) {
    const char* kind = in.op == Op::kForward ? "F" : "B";
    return schedule.chunks > 1 ? fmt::format("{}{}.{}", kind, in.micro, in.chunk) : fmt::format("{}{}", kind, in.micro);
  };

  // The cell: the shortest computation, unless the row would get wider than kMaxCells.
  constexpr double kMaxCells = 160;
  size_t width = 1;
  double cell = 0;
  for (int s = 0; s < p; ++s) {
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      const Instruction& in = schedule.instructions[s][i];
      if (!is_compute(in.op)) continue;
      width = std::max(width, label(in).size());
      const double length = timeline.spans[s][i].end - timeline.spans[s][i].start;
      if (length > 0 && (cell == 0 || length < cell)) cell = length;
    }
  }
  if (cell == 0) cell = 1;
  cell = std::max(cell, timeline.makespan / kMaxCells);

  // Cells of each stage: its text (`width` characters), idle by default.
  const std::string idle = "." + std::string(width - 1, ' ');
  const std::string busy(width, '-');
  std::vector<std::vector<std::string>> rows(p);
  size_t columns = static_cast<size_t>(std::llround(timeline.makespan / cell));
  for (int s = 0; s < p; ++s) {
    size_t free_from = 0;  // rounding never lets two computations share a cell
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      const Instruction& in = schedule.instructions[s][i];
      if (!is_compute(in.op)) continue;
      const size_t first = std::max(free_from, static_cast<size_t>(std::llround(timeline.spans[s][i].start / cell)));
      const size_t end = std::max(first + 1, static_cast<size_t>(std::llround(timeline.spans[s][i].end / cell)));
      if (rows[s].size() < end) rows[s].resize(end, idle);
      rows[s][first] = fmt::format("{:<{}}", label(in), width);
      for (size_t k = first + 1; k < end; ++k) rows[s][k] = busy;
      free_from = end;
    }
    columns = std::max(columns, rows[s].size());
  }

  std::string out = fmt::format("{} schedule: p = {}, m = {}, v = {}; makespan {:g}, bubble {:.1f}%\n",
                                schedule.name, p, schedule.micro_batches, schedule.chunks, timeline.makespan,
                                100 * timeline.bubble());
  const std::string last_name = fmt::format("stage {}", p - 1);
  for (int s = 0; s < p; ++s) {
    rows[s].resize(columns, idle);
    out += fmt::format("{:<{}} |", fmt::format("stage {}", s), last_name.size());
    for (const auto& text : rows[s]) out += " " + text;
    out += fmt::format(" | idle {:.1f}%\n", 100 * timeline.bubble(s));
  }
  return out;
}

}  // namespace kolos::parallel::pipeline
