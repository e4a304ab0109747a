#include "kolos/parallel/pipeline/simulator.h"

#include <algorithm>
#include <cmath>
#include <map>
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
  KOLOS_ASSERT(costs.p2p_latency >= 0, "negative p2p latency {}", costs.p2p_latency);

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
        } else if (is_recv(in.op)) {
          auto it = arrivals.find({in.op == Op::kRecvGrad, in.micro, boundary(schedule, s, in), in.peer, s});
          if (it == arrivals.end()) break;
          clock[s] = std::max(clock[s], it->second);
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
