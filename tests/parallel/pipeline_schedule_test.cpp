// Pipeline schedules (GPipe, 1F1B, interleaved) as instruction lists, checked structurally, and the simulator's
// bubble against the closed forms (p − 1)/(m + p − 1) and (p − 1)/(v·m + p − 1) (Narayanan et al. 2021 §2.2).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "kolos/core/error.h"
#include "kolos/parallel/pipeline/schedule.h"
#include "kolos/parallel/pipeline/simulator.h"
#include "kolos/parallel/pipeline/stages.h"
#include "tests/support.h"

namespace kolos::parallel::pipeline {
namespace {

std::string join(const std::vector<Instruction>& list) {
  std::string out;
  for (const auto& in : list) out += (out.empty() ? "" : " ") + to_string(in);
  return out;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) out += line + "\n";
  return out;
}

// Checks written apart from validate(): forward before backward per (micro, chunk) on every stage, each exactly
// once; and as many sends of each (kind, micro) from stage a to stage b as receives of it on b from a.
void expect_structure(const Schedule& schedule) {
  SCOPED_TRACE(fmt::format("{} p={} m={} v={}", schedule.name, schedule.stages, schedule.micro_batches,
                           schedule.chunks));
  ASSERT_EQ(static_cast<int>(schedule.instructions.size()), schedule.stages);
  std::map<std::tuple<bool, int, int, int>, int> balance;  // (gradient?, micro, from, to) → sends − receives
  for (int s = 0; s < schedule.stages; ++s) {
    std::map<std::pair<int, int>, int> forward_at, backward_at;
    const auto& list = schedule.instructions[s];
    for (int i = 0; i < static_cast<int>(list.size()); ++i) {
      const Instruction& in = list[i];
      if (in.op == Op::kForward) {
        EXPECT_TRUE(forward_at.emplace(std::make_pair(in.micro, in.chunk), i).second);
      }
      if (in.op == Op::kBackward) {
        EXPECT_TRUE(backward_at.emplace(std::make_pair(in.micro, in.chunk), i).second);
      }
      const bool grad = in.op == Op::kSendGrad || in.op == Op::kRecvGrad;
      if (is_send(in.op)) ++balance[{grad, in.micro, s, in.peer}];
      if (is_recv(in.op)) --balance[{grad, in.micro, in.peer, s}];
    }
    EXPECT_EQ(static_cast<int>(forward_at.size()), schedule.micro_batches * schedule.chunks) << "stage " << s;
    EXPECT_EQ(forward_at.size(), backward_at.size()) << "stage " << s;
    for (const auto& [key, f] : forward_at) {
      ASSERT_TRUE(backward_at.count(key));
      EXPECT_LT(f, backward_at[key]) << "stage " << s << " micro " << key.first << " chunk " << key.second;
    }
    EXPECT_EQ(list.back().op, Op::kReduce) << "stage " << s;
  }
  for (const auto& [key, count] : balance) EXPECT_EQ(count, 0);
  EXPECT_EQ(join(validate(schedule)), "");  // also: no deadlock, peers, order per channel
}

const int kStages[] = {2, 4, 8};

TEST(PipelineSchedule, GpipeIsWellFormedAndHoldsEveryMicroBatch) {
  for (int p : {1, 2, 4, 8}) {
    for (int m : {1, 2, 3, 5, 8, 16}) {
      const Schedule schedule = gpipe(p, m);
      expect_structure(schedule);
      for (int s = 0; s < p; ++s) EXPECT_EQ(max_in_flight(schedule, s), m);
    }
  }
}

TEST(PipelineSchedule, OneFOneBIsWellFormedAndHoldsAtMostStagesMinusStage) {
  for (int p : {1, 2, 4, 8}) {
    for (int m : {1, 2, 3, 5, 8, 16, 17}) {
      const Schedule schedule = one_f_one_b(p, m);
      expect_structure(schedule);
      for (int s = 0; s < p; ++s) {
        EXPECT_LE(max_in_flight(schedule, s), p - s) << "p " << p << " m " << m << " stage " << s;
        EXPECT_EQ(max_in_flight(schedule, s), std::min(p - s, m)) << "p " << p << " m " << m << " stage " << s;
      }
    }
  }
}

TEST(PipelineSchedule, InterleavedIsWellFormed) {
  for (int p : kStages) {
    for (int v : {2, 3, 4}) {
      for (int m : {p, 2 * p, 3 * p}) {
        const Schedule schedule = interleaved(p, m, v);
        expect_structure(schedule);
        for (int s = 0; s < p; ++s) {
          // Megatron's warm-up forwards plus the one of the first steady step, never more than all of them.
          const int held = std::min(2 * (p - s - 1) + (v - 1) * p + 1, v * m);
          EXPECT_EQ(max_in_flight(schedule, s), held) << "p " << p << " v " << v << " m " << m << " stage " << s;
        }
      }
    }
  }
  // v = 1 is 1F1B.
  const Schedule one = interleaved(4, 8, 1), reference = one_f_one_b(4, 8);
  for (int s = 0; s < 4; ++s) EXPECT_EQ(join(one.instructions[s]), join(reference.instructions[s]));
}

// Lists worked out by hand from the rules in schedule.h.
TEST(PipelineSchedule, ListsSpelledOut) {
  // 1F1B, p = 2, m = 3: stage 0 warms up with one forward; stage 1 (last) has no warm-up and sends no activation.
  const Schedule a = one_f_one_b(2, 3);
  EXPECT_EQ(join(a.instructions[0]),
            "F0.0 send_act0.0->1 F1.0 send_act1.0->1 recv_grad0.0<-1 B0.0 F2.0 send_act2.0->1 recv_grad1.0<-1 "
            "B1.0 recv_grad2.0<-1 B2.0 reduce");
  EXPECT_EQ(join(a.instructions[1]),
            "recv_act0.0<-0 F0.0 B0.0 send_grad0.0->0 recv_act1.0<-0 F1.0 B1.0 send_grad1.0->0 recv_act2.0<-0 F2.0 "
            "B2.0 send_grad2.0->0 reduce");
  // Interleaved, p = 2, m = 2, v = 2: stage 0 warms up with all 4 forwards, stage 1 with 2. Virtual stages:
  // 0 = stage 0 chunk 0, 1 = stage 1 chunk 0, 2 = stage 0 chunk 1, 3 = stage 1 chunk 1 (the loss).
  const Schedule b = interleaved(2, 2, 2);
  EXPECT_EQ(join(b.instructions[0]),
            "F0.0 send_act0.0->1 F1.0 send_act1.0->1 recv_act0.1<-1 F0.1 send_act0.1->1 recv_act1.1<-1 F1.1 "
            "send_act1.1->1 recv_grad0.1<-1 B0.1 send_grad0.1->1 recv_grad1.1<-1 B1.1 send_grad1.1->1 "
            "recv_grad0.0<-1 B0.0 recv_grad1.0<-1 B1.0 reduce");
  EXPECT_EQ(join(b.instructions[1]),
            "recv_act0.0<-0 F0.0 send_act0.0->0 recv_act1.0<-0 F1.0 send_act1.0->0 recv_act0.1<-0 F0.1 B0.1 "
            "send_grad0.1->0 recv_act1.1<-0 F1.1 B1.1 send_grad1.1->0 recv_grad0.0<-0 B0.0 send_grad0.0->0 "
            "recv_grad1.0<-0 B1.0 send_grad1.0->0 reduce");
  // The wrap boundary: stage 1 chunk 0 (virtual 1) → stage 0 chunk 1 (virtual 2) is boundary 1 at both ends.
  EXPECT_EQ(boundary(b, 1, {Op::kSendActivation, 0, 0, 0}), 1);
  EXPECT_EQ(boundary(b, 0, {Op::kRecvActivation, 0, 1, 1}), 1);
  EXPECT_EQ(boundary(b, 0, {Op::kSendGrad, 0, 1, 1}), 1);
  EXPECT_EQ(boundary(b, 1, {Op::kRecvGrad, 0, 0, 0}), 1);
}

TEST(PipelineSchedule, ValidateFindsBrokenLists) {
  const Schedule good = one_f_one_b(2, 2);
  auto find = [](const std::vector<std::string>& problems, const std::string& text) {
    return std::any_of(problems.begin(), problems.end(),
                       [&](const std::string& line) { return line.find(text) != std::string::npos; });
  };
  {  // backward before forward on the last stage
    Schedule s = good;
    auto& list = s.instructions[1];  // recv_act0 F0 B0 send_grad0 ...
    std::swap(list[1], list[2]);
    EXPECT_TRUE(find(validate(s), "before its forward")) << join(validate(s));
  }
  {  // a receive dropped: the send is never received
    Schedule s = good;
    auto& list = s.instructions[1];
    list.erase(list.begin());  // recv_act0.0<-0
    const auto problems = validate(s);
    EXPECT_TRUE(find(problems, "0 recv_activation of micro-batch 0")) << join(problems);
    EXPECT_TRUE(find(problems, "never received")) << join(problems);
  }
  {  // stage 0 waits for a gradient before sending the activation that produces it
    Schedule s = good;
    auto& list = s.instructions[0];  // F0 send_act0 F1 send_act1 recv_grad0 B0 ...
    const Instruction recv = list[4];
    list.erase(list.begin() + 4);
    list.insert(list.begin() + 1, recv);
    EXPECT_TRUE(find(validate(s), "deadlock")) << join(validate(s));
    EXPECT_THROW(simulate(s, Costs::equal(2, 1, 1, 1)), std::logic_error);
  }
  {  // wrong peer
    Schedule s = gpipe(4, 2);
    s.instructions[2][0].peer = 3;  // recv_act0.0 should come from stage 1
    EXPECT_TRUE(find(validate(s), "names peer 3, but virtual stage 1 is on stage 1")) << join(validate(s));
  }
  {  // two activations received out of the order they were sent on the channel
    Schedule s = gpipe(2, 2);
    auto& list = s.instructions[1];  // recv_act0 F0 recv_act1 F1 ...
    std::swap(list[0], list[2]);
    std::swap(list[1], list[3]);
    EXPECT_TRUE(find(validate(s), "received before")) << join(validate(s));
  }
  {  // no reduce
    Schedule s = good;
    s.instructions[0].pop_back();
    EXPECT_TRUE(find(validate(s), "0 reduce instructions")) << join(validate(s));
  }
}

// Equal costs: every stage busy m·(f + b) (v·m·(f + b) for chunks), the pipeline full after p − 1 steps.
TEST(PipelineSimulator, BubbleOfGpipeAndOneFOneBIsExact) {
  for (int p : kStages) {
    for (int m : {1, 2, 3, 4, 8, 16, 32}) {
      for (auto [f, b] : {std::pair{1.0, 1.0}, {1.0, 2.0}, {2.0, 3.0}}) {
        for (const Schedule& schedule : {gpipe(p, m), one_f_one_b(p, m)}) {
          SCOPED_TRACE(fmt::format("{} p={} m={} f={} b={}", schedule.name, p, m, f, b));
          const Timeline t = simulate(schedule, Costs::equal(p, 1, f, b));
          const double expected = double(p - 1) / double(m + p - 1);
          EXPECT_EQ(t.makespan, (m + p - 1) * (f + b));
          EXPECT_NEAR(t.bubble(), expected, 1e-12);
          for (int s = 0; s < p; ++s) {
            EXPECT_EQ(t.busy[s], m * (f + b));
            EXPECT_NEAR(t.bubble(s), expected, 1e-12);
          }
        }
      }
    }
  }
}

TEST(PipelineSimulator, BubbleOfInterleavedIsExact) {
  for (int p : kStages) {
    for (int v : {2, 3, 4}) {
      for (int m : {p, 2 * p, 4 * p}) {
        // A stage's forward costs v·f and its backward v·b, so each chunk costs f and b.
        for (auto [f, b] : {std::pair{1.0, 1.0}, {1.0, 2.0}}) {
          SCOPED_TRACE(fmt::format("interleaved p={} v={} m={} f={} b={}", p, v, m, f, b));
          const Schedule schedule = interleaved(p, m, v);
          const Timeline t = simulate(schedule, Costs::per_stage(std::vector<double>(p, v * f),
                                                                 std::vector<double>(p, v * b), v));
          EXPECT_EQ(t.makespan, (v * m + p - 1) * (f + b));
          EXPECT_NEAR(t.bubble(), double(p - 1) / double(v * m + p - 1), 1e-12);
        }
      }
    }
  }
}

// A timeline worked out by hand: 1F1B, p = 2, m = 2, forward 1, backward 2.
TEST(PipelineSimulator, TimelineByHand) {
  const Schedule schedule = one_f_one_b(2, 2);
  const Timeline t = simulate(schedule, Costs::equal(2, 1, 1, 2));
  auto computes = [&](int s) {
    std::string out;
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      const Instruction& in = schedule.instructions[s][i];
      if (is_compute(in.op))
        out += fmt::format("{}[{:g},{:g}] ", to_string(in), t.spans[s][i].start, t.spans[s][i].end);
    }
    return out;
  };
  // Stage 1 gets micro-batch 0 at 1, runs its backward at once, and micro-batch 1 (sent at 2) after it; stage 0
  // waits for each gradient.
  EXPECT_EQ(computes(0), "F0.0[0,1] F1.0[1,2] B0.0[4,6] B1.0[7,9] ");
  EXPECT_EQ(computes(1), "F0.0[1,2] B0.0[2,4] F1.0[4,5] B1.0[5,7] ");
  EXPECT_EQ(t.makespan, 9);
  EXPECT_EQ(t.idle[0], 3);
  EXPECT_EQ(t.idle[1], 3);
}

// With a latency L each of the p − 1 boundaries is crossed twice on the critical path of GPipe.
TEST(PipelineSimulator, LatencyAddsTwiceTheBoundaries) {
  for (int p : kStages) {
    for (int m : {1, 4, 8}) {
      const Timeline t = simulate(gpipe(p, m), Costs::equal(p, 1, 1, 2, 0.5));
      EXPECT_EQ(t.makespan, (m + p - 1) * 3 + 2 * (p - 1) * 0.5) << "p " << p << " m " << m;
    }
  }
}

TEST(PipelineSimulator, UnequalStagesMakeTheSlowOneTheBottleneck) {
  // GPipe, p = 2, m = 4, stage 1 twice as slow: stage 1 computes back to back from t = 1 (forwards 2, backwards 4
  // each), so the makespan is 1 + 4·2 + 4·4 + stage 0's last backward (2) = 27; stage 1 is busy 24 of it.
  Costs costs;
  costs.forward = {{1}, {2}};
  costs.backward = {{2}, {4}};
  const Timeline t = simulate(gpipe(2, 4), costs);
  EXPECT_EQ(t.makespan, 27);
  EXPECT_EQ(t.busy[0], 12);
  EXPECT_EQ(t.busy[1], 24);
  EXPECT_NEAR(t.bubble(1), 3.0 / 27.0, 1e-12);
  EXPECT_NEAR(t.bubble(), (15.0 + 3.0) / (2 * 27.0), 1e-12);
}

// The benchmark's measured side: a run's per-instruction times give back the costs and the latency that produced
// them. A simulated timeline stands in for the measurement (its spans are what the executor records: computations
// their compute, sends their issuing, receives their wait and intake), so the answers are known exactly.
TEST(PipelineSimulator, MeasuredCostsAndIdleOfATimelineAreItsOwn) {
  for (const Schedule& schedule : {gpipe(2, 8), one_f_one_b(4, 8), interleaved(2, 8, 2)}) {
    SCOPED_TRACE(schedule.name);
    const int p = schedule.stages, v = schedule.chunks;
    Costs costs = Costs::equal(p, v, 0, 0, 0.25);
    costs.send = 0.0625;
    costs.receive = 0.125;
    for (int s = 0; s < p; ++s) {
      for (int c = 0; c < v; ++c) {
        costs.forward[s][c] = 1 + s + 0.5 * c;  // every stage and chunk its own cost
        costs.backward[s][c] = 2 * costs.forward[s][c] + 0.125;
      }
    }
    const Timeline t = simulate(schedule, costs);
    Measured m;
    for (int s = 0; s < p; ++s) {
      m.begin_at.emplace_back();
      m.end_at.emplace_back();
      for (const Span& span : t.spans[s]) {
        m.begin_at[s].push_back(100 + span.start);  // any clock origin
        m.end_at[s].push_back(100 + span.end);
      }
    }
    const Costs got = measured_costs(schedule, m);
    EXPECT_DOUBLE_EQ(got.p2p_latency, 0.25);
    EXPECT_DOUBLE_EQ(got.send, 0.0625);
    EXPECT_DOUBLE_EQ(got.receive, 0.125);
    for (int s = 0; s < p; ++s) {
      for (int c = 0; c < v; ++c) {
        EXPECT_DOUBLE_EQ(got.forward[s][c], costs.forward[s][c]) << "stage " << s << " chunk " << c;
        EXPECT_DOUBLE_EQ(got.backward[s][c], costs.backward[s][c]) << "stage " << s << " chunk " << c;
      }
    }
    const std::vector<double> idle = measured_idle(schedule, m);
    for (int s = 0; s < p; ++s) EXPECT_NEAR(idle[s], t.bubble(s), 1e-12) << "stage " << s;
  }
}

// A receiver that reached its receive after the message was sent says nothing about the latency: with no waiting
// receiver, the measured latency is 0, not the time the message lay there.
TEST(PipelineSimulator, MeasuredLatencyComesOnlyFromWaitingReceivers) {
  const Schedule schedule = gpipe(2, 1);  // stage 0: F0 send B... ; stage 1: recv F0 B0 send
  Measured m;
  m.begin_at.resize(2);
  m.end_at.resize(2);
  for (int s = 0; s < 2; ++s) {
    m.begin_at[s].assign(schedule.instructions[s].size(), 0);
    m.end_at[s].assign(schedule.instructions[s].size(), 0);
  }
  // Every receive begins 1 after its message was sent (sends at 0) and ends at once.
  for (int s = 0; s < 2; ++s) {
    for (size_t i = 0; i < schedule.instructions[s].size(); ++i) {
      if (is_recv(schedule.instructions[s][i].op)) m.begin_at[s][i] = m.end_at[s][i] = 1;
    }
  }
  EXPECT_EQ(measured_costs(schedule, m).p2p_latency, 0);
}

TEST(PipelineSimulator, DrawsOneRowPerStage) {
  const Schedule schedule = gpipe(2, 2);
  const std::string text = draw(schedule, simulate(schedule, Costs::equal(2, 1, 1, 1)));
  EXPECT_EQ(text,
            "gpipe schedule: p = 2, m = 2, v = 1; makespan 6, bubble 33.3%\n"
            "stage 0 | F0 F1 .  .  B0 B1 | idle 33.3%\n"
            "stage 1 | .  F0 F1 B0 B1 .  | idle 33.3%\n");
  // Longer computations span several cells; chunks are named when v > 1.
  const Schedule two = interleaved(2, 2, 2);
  const std::string lines = draw(two, simulate(two, Costs::equal(2, 2, 1, 2)));
  EXPECT_NE(lines.find("stage 0 | F0.0 F1.0 F0.1 F1.1 "), std::string::npos) << lines;
  // Stage 1: F0.0 [1,2], F1.0 [2,3], F0.1 [3,4], B0.1 [4,6], F1.1 [6,7], B1.1 [7,9], B0.0 [9,11], B1.0 [11,13].
  EXPECT_NE(lines.find("stage 1 | .    F0.0 F1.0 F0.1 B0.1 ---- F1.1 B1.1 ---- B0.0 ---- B1.0 ---- .    .    |"),
            std::string::npos)
      << lines;
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 3);
}

TEST(PipelineSchedule, BadInputsNameTheKey) {
  auto message = [](auto&& make) {
    try {
      make();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no InputError");
  };
  auto has = [](const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; };

  const std::string not_multiple = message([] { interleaved(4, 6, 2); });
  EXPECT_TRUE(has(not_multiple, "train.grad_accum = 6")) << not_multiple;
  EXPECT_TRUE(has(not_multiple, "parallel.pp = 4")) << not_multiple;
  EXPECT_TRUE(has(not_multiple, "parallel.pp_virtual = 2")) << not_multiple;
  EXPECT_TRUE(has(not_multiple, "use 4 or 8")) << not_multiple;
  EXPECT_TRUE(has(message([] { interleaved(4, 2, 2); }), "use 4")) << message([] { interleaved(4, 2, 2); });

  for (auto make : {+[] { gpipe(0, 4); }, +[] { one_f_one_b(0, 4); }, +[] { interleaved(0, 4, 2); },
                    +[] { one_f_one_b(-1, 4); }}) {
    EXPECT_TRUE(has(message(make), "parallel.pp = ")) << message(make);
  }
  EXPECT_TRUE(has(message([] { gpipe(2, 0); }), "train.grad_accum = 0"));
  EXPECT_TRUE(has(message([] { one_f_one_b(2, 0); }), "train.grad_accum = 0"));
  EXPECT_TRUE(has(message([] { interleaved(2, 4, 0); }), "parallel.pp_virtual = 0"));
  EXPECT_TRUE(has(message([] { interleaved(1, 4, 2); }), "parallel.pp >= 2"));
  EXPECT_TRUE(has(message([] { make_schedule("zero-bubble", 2, 4); }), "parallel.pp_schedule = \"zero-bubble\""));
  EXPECT_TRUE(has(message([] { make_schedule("1f1b", 2, 4, 2); }), "parallel.pp_virtual = 2"));
  EXPECT_EQ(make_schedule("gpipe", 2, 4).name, "gpipe");
  EXPECT_EQ(make_schedule("1f1b", 2, 4).name, "1f1b");
  EXPECT_EQ(make_schedule("interleaved", 2, 4, 2).name, "interleaved");
}

}  // namespace
// The stage split: even when every block costs the same and the head is small; the head's product moves blocks
// off the last stage when it is large; parallel.pp_layers as given; interleaved chunks take every pp-th range.
TEST(PipelineStages, SplitBalancesBlocksAndTheHead) {
  ModelConfig m;
  m.layers = 8;
  m.hidden = 64;
  m.heads = 8;
  m.ffn_hidden = 256;
  m.vocab = 261;
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(split_layers(m, 2, 1, ""), (Ranges{{0, 4}, {4, 8}}));
  EXPECT_EQ(split_layers(m, 4, 1, ""), (Ranges{{0, 2}, {2, 4}, {4, 6}, {6, 8}}));
  // A block costs 2·64² + 2·64² + 2·64·256 = 49152; a head of 50257 × 64 = 3.2M costs 65.4 blocks: the last stage
  // keeps a single block.
  m.vocab = 50257;
  EXPECT_EQ(split_layers(m, 2, 1, ""), (Ranges{{0, 7}, {7, 8}}));
  m.vocab = 261;
  EXPECT_EQ(split_layers(m, 2, 1, "5,3"), (Ranges{{0, 5}, {5, 8}}));
  EXPECT_THROW(split_layers(m, 2, 1, "5,2"), InputError);
  EXPECT_THROW(split_layers(m, 2, 1, "8"), InputError);
  EXPECT_THROW(split_layers(m, 8, 2, ""), InputError);  // 16 virtual stages, 8 blocks
  const auto s0 = stage_segments(m, 2, 2, "", 0), s1 = stage_segments(m, 2, 2, "", 1);
  ASSERT_EQ(s0.size(), 2u);
  EXPECT_TRUE(s0[0].stem && !s0[0].head && s0[0].first == 0 && s0[0].end == 2);
  EXPECT_TRUE(!s0[1].stem && !s0[1].head && s0[1].first == 4 && s0[1].end == 6);
  EXPECT_TRUE(!s1[0].stem && !s1[0].head && s1[0].first == 2 && s1[0].end == 4);
  EXPECT_TRUE(!s1[1].stem && s1[1].head && s1[1].first == 6 && s1[1].end == 8);
}

TEST(PipelineStages, TrainPrintsTheSchedule) {
  auto r = test::run_kolos({"train", "--config", "parity", "--set", "parallel.pp=2", "--set", "train.batch_size=2", "--set", "train.grad_accum=4",
                            "--set", "parallel.pp_schedule=gpipe", "--print-schedule"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gpipe"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("F3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("B3"), std::string::npos) << r.output;
  // GPipe's bubble with equal costs: (p − 1)/(m + p − 1) = 1/5.
  EXPECT_NE(r.output.find("bubble 20.0%"), std::string::npos) << r.output;
}

}  // namespace kolos::parallel::pipeline
