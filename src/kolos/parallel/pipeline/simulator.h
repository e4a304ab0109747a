// Simulator: the timeline of any pipeline schedule (schedule.h) from the cost of each computation, and a text
// drawing of it (`kolos train --print-schedule`).
//
// Model: time starts at 0 on every stage. A stage runs its list in order; Forward and Backward of chunk c on
// stage s take costs.forward[s][c] and costs.backward[s][c]; a send occupies its stage for costs.send (issuing it)
// and its message arrives costs.p2p_latency after the send began; a receive occupies its stage for costs.receive
// (taking the message in) and, if its message has not arrived by then, until it has: it ends at
// max(start + receive, arrival); Reduce takes no time. So each computation starts when its stage is free and its
// input has arrived. The makespan is the time the last stage finishes; a stage's idle time is makespan − its busy
// (compute) time — waits, sends and receives, before its first computation and after its last included. The
// bubble is idle ÷ makespan per stage, and Σ idle ÷ (stages × makespan) overall.
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
  double p2p_latency = 0;                     // from a send's start to its message's arrival, ≥ 0
  double send = 0;                            // stage time a send takes (issuing it), ≥ 0
  double receive = 0;                         // stage time a receive takes beyond waiting, ≥ 0

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

// What one run of a schedule measured (Executor::Stats of every stage, on one clock — the steady clock is one for
// every process of a machine): per stage, per instruction of its list, when it began and ended. A computation's
// span is its compute alone; a send's span its issuing (it starts when the message leaves); a receive's span its
// wait and taking the message in (Executor::Stats).
struct Measured {
  std::vector<std::vector<double>> begin_at, end_at;  // [stage][instruction]
};

// The simulator's costs from a measured run, all means: each (stage, chunk)'s forward and backward time; `send`
// over every send; p2p_latency over the messages whose receiver was already waiting when the message was sent
// (its receive began no later than the send), of arrival (the receive's end) − the send's start — receivers that
// came later say nothing about the latency (their message may have been there long before); `receive` over the
// receives that began at least p2p_latency after their message's send (the message was there), of their length.
// Each 0 when it has no sample.
Costs measured_costs(const Schedule& schedule, const Measured& measured);

// Each stage's idle fraction in a measured run: 1 − its compute time ÷ the span from the first computation's
// start on any stage to the last computation's end on any stage (the simulator's makespan: its time 0 is the
// first stage's first forward). Time before the first computation — stages entering the step at different moments
// after the previous step — is not the schedule's bubble and is left out.
std::vector<double> measured_idle(const Schedule& schedule, const Measured& measured);

}  // namespace kolos::parallel::pipeline
