// Simulator: the timeline of any pipeline schedule (schedule.h) from the cost of each computation, and a text
// drawing of it (`kolos train --print-schedule`).
//
// Model: time starts at 0 on every stage. A stage runs its list in order; Forward and Backward of chunk c on
// stage s take costs.forward[s][c] and costs.backward[s][c]; a send takes no stage time and its message arrives
// costs.p2p_latency later; a receive waits (the stage idles) until its message has arrived; Reduce takes no time.
// So each computation starts when its stage is free and its input has arrived. The makespan is the time the last
// stage finishes; a stage's idle time is makespan − its busy (compute) time, the wait before its first
// computation and after its last included. The bubble is idle ÷ makespan per stage, and
// Σ idle ÷ (stages × makespan) overall.
//
// Costs are in any unit (seconds of a measured run, or integers in tests: with integer costs every time is exact).
#pragma once

#include <string>
#include <vector>

#include "kolos/parallel/pipeline/schedule.h"

namespace kolos::parallel::pipeline {

struct Costs {
  std::vector<std::vector<double>> forward;   // [stage][chunk], ≥ 0
  std::vector<std::vector<double>> backward;  // [stage][chunk], ≥ 0
  double p2p_latency = 0;                     // from a send to its message's arrival, ≥ 0

  // Every (stage, chunk) costs `forward` and `backward`.
  static Costs equal(int stages, int chunks, double forward, double backward, double p2p_latency = 0);
  // Measured per-stage costs, each stage's split evenly over its `chunks` chunks.
  static Costs per_stage(const std::vector<double>& forward, const std::vector<double>& backward, int chunks,
                         double p2p_latency = 0);
};

struct Span {
  double start = 0;
  double end = 0;
};

struct Timeline {
  // [stage][i] for schedule.instructions[stage][i]: a computation runs over [start, end]; a receive is reached at
  // `start` and its message is there at `end`; sends and Reduce have start = end.
  std::vector<std::vector<Span>> spans;
  std::vector<double> busy;  // [stage] time computing
  std::vector<double> idle;  // [stage] makespan − busy
  double makespan = 0;

  double bubble() const;           // Σ idle ÷ (stages × makespan); 0 when the makespan is 0
  double bubble(int stage) const;  // idle ÷ makespan of one stage
};

// The timeline of `schedule` under `costs` (whose sizes must be stages × chunks). The schedule must pass
// validate(); one that deadlocks throws std::logic_error naming the blocked instructions.
Timeline simulate(const Schedule& schedule, const Costs& costs);

// One row per stage, time to the right in equal cells, each computation drawn from its start cell to its end
// cell: its label ("F3", "B3"; "F3.1" for micro-batch 3 of chunk 1 when v > 1) then "-" to its end, "." where the
// stage idles. A cell is the shortest computation (or makespan / 160 if that would be wider than 160 cells);
// times are rounded to cells. Header: schedule, p, m, v, makespan, bubble; each row ends with the stage's bubble.
std::string draw(const Schedule& schedule, const Timeline& timeline);

}  // namespace kolos::parallel::pipeline
