#include "kolos/parallel/pipeline/schedule.h"

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "kolos/core/error.h"

namespace kolos::parallel::pipeline {
namespace {

// One computation in a stage's order; lower() adds the messages around it.
struct Step {
  bool forward;
  int micro;
  int chunk;
};

void check_sizes(int stages, int micro_batches) {
  KOLOS_CHECK(stages >= 1, "parallel.pp = {}: a pipeline needs at least 1 stage", stages);
  KOLOS_CHECK(micro_batches >= 1,
              "train.grad_accum = {}: a pipelined step needs at least 1 micro-batch (train.grad_accum is the "
              "number of micro-batches of a step)",
              micro_batches);
}

// Turns each stage's computation order into its instruction list: the receive right before the compute that
// needs it, the send right after the compute that produced it, and the Reduce at the end.
Schedule lower(const std::string& name, int stages, int micro_batches, int chunks,
               const std::vector<std::vector<Step>>& orders) {
  Schedule schedule;
  schedule.name = name;
  schedule.stages = stages;
  schedule.micro_batches = micro_batches;
  schedule.chunks = chunks;
  schedule.instructions.resize(stages);
  const int last = schedule.virtual_stages() - 1;
  for (int s = 0; s < stages; ++s) {
    const int up = (s + 1) % stages, down = (s + stages - 1) % stages;
    auto& list = schedule.instructions[s];
    for (const Step& step : orders[s]) {
      const int u = schedule.virtual_stage(s, step.chunk);
      if (step.forward) {
        if (u > 0) list.push_back({Op::kRecvActivation, step.micro, step.chunk, down});
        list.push_back({Op::kForward, step.micro, step.chunk, -1});
        if (u < last) list.push_back({Op::kSendActivation, step.micro, step.chunk, up});
      } else {
        if (u < last) list.push_back({Op::kRecvGrad, step.micro, step.chunk, up});
        list.push_back({Op::kBackward, step.micro, step.chunk, -1});
        if (u > 0) list.push_back({Op::kSendGrad, step.micro, step.chunk, down});
      }
    }
    list.push_back({Op::kReduce, -1, -1, -1});
  }
  return schedule;
}

}  // namespace

const char* op_name(Op op) {
  switch (op) {
    case Op::kForward: return "forward";
    case Op::kBackward: return "backward";
    case Op::kSendActivation: return "send_activation";
    case Op::kRecvActivation: return "recv_activation";
    case Op::kSendGrad: return "send_grad";
    case Op::kRecvGrad: return "recv_grad";
    case Op::kReduce: return "reduce";
  }
  return "?";
}

bool is_compute(Op op) { return op == Op::kForward || op == Op::kBackward; }
bool is_send(Op op) { return op == Op::kSendActivation || op == Op::kSendGrad; }
bool is_recv(Op op) { return op == Op::kRecvActivation || op == Op::kRecvGrad; }

std::string to_string(const Instruction& in) {
  switch (in.op) {
    case Op::kForward: return fmt::format("F{}.{}", in.micro, in.chunk);
    case Op::kBackward: return fmt::format("B{}.{}", in.micro, in.chunk);
    case Op::kSendActivation: return fmt::format("send_act{}.{}->{}", in.micro, in.chunk, in.peer);
    case Op::kRecvActivation: return fmt::format("recv_act{}.{}<-{}", in.micro, in.chunk, in.peer);
    case Op::kSendGrad: return fmt::format("send_grad{}.{}->{}", in.micro, in.chunk, in.peer);
    case Op::kRecvGrad: return fmt::format("recv_grad{}.{}<-{}", in.micro, in.chunk, in.peer);
    case Op::kReduce: return "reduce";
  }
  return "?";
}

Schedule gpipe(int stages, int micro_batches) {
  check_sizes(stages, micro_batches);
  std::vector<std::vector<Step>> orders(stages);
  for (auto& order : orders) {
    for (int j = 0; j < micro_batches; ++j) order.push_back({true, j, 0});
    for (int j = 0; j < micro_batches; ++j) order.push_back({false, j, 0});
  }
  return lower("gpipe", stages, micro_batches, 1, orders);
}

Schedule one_f_one_b(int stages, int micro_batches) {
  check_sizes(stages, micro_batches);
  const int m = micro_batches;
  std::vector<std::vector<Step>> orders(stages);
  for (int s = 0; s < stages; ++s) {
    const int warmup = std::min(stages - s - 1, m);
    auto& order = orders[s];
    for (int j = 0; j < warmup; ++j) order.push_back({true, j, 0});
    for (int i = 0; i < m - warmup; ++i) {
      order.push_back({true, warmup + i, 0});
      order.push_back({false, i, 0});
    }
    for (int j = m - warmup; j < m; ++j) order.push_back({false, j, 0});
  }
  return lower("1f1b", stages, micro_batches, 1, orders);
}

Schedule interleaved(int stages, int micro_batches, int chunks) {
  check_sizes(stages, micro_batches);
  KOLOS_CHECK(chunks >= 1, "parallel.pp_virtual = {}: the model chunks per stage must be at least 1", chunks);
  if (chunks == 1) return one_f_one_b(stages, micro_batches);
  const int p = stages, m = micro_batches, v = chunks;
  KOLOS_CHECK(p >= 2,
              "parallel.pp_virtual = {} needs parallel.pp >= 2 (interleaving places the chunks of the model on "
              "different stages), found parallel.pp = {}; set parallel.pp_virtual = 1 or raise parallel.pp",
              v, p);
  KOLOS_CHECK(m % p == 0,
              "the interleaved schedule (parallel.pp_virtual = {}) needs train.grad_accum, the micro-batches of a "
              "step, to be a multiple of parallel.pp = {}; found train.grad_accum = {}; use {}",
              v, p, m, m < p ? fmt::format("{}", p) : fmt::format("{} or {}", m / p * p, (m / p + 1) * p));

  const int total = m * v, round = p * v;
  // The k-th forward or backward of any stage: rounds of p micro-batches, chunk after chunk (backwards in
  // reverse chunk order, so that the last virtual stage's backward comes first).
  auto step = [&](int k, bool forward) {
    const int chunk = (k % round) / p;
    return Step{forward, (k / round) * p + k % p, forward ? chunk : v - 1 - chunk};
  };
  std::vector<std::vector<Step>> orders(p);
  for (int s = 0; s < p; ++s) {
    // Megatron's warm-up count. Megatron also makes every forward warm-up when m = p, which its paired blocking
    // send/receive calls need; with asynchronous sends this count is deadlock-free there too, with the same
    // bubble and fewer activations held on the last stages.
    const int warmup = std::min(2 * (p - s - 1) + (v - 1) * p, total);
    auto& order = orders[s];
    for (int k = 0; k < warmup; ++k) order.push_back(step(k, true));
    for (int k = 0; k < total - warmup; ++k) {
      order.push_back(step(warmup + k, true));
      order.push_back(step(k, false));
    }
    for (int k = total - warmup; k < total; ++k) order.push_back(step(k, false));
  }
  return lower("interleaved", p, m, v, orders);
}

Schedule make_schedule(const std::string& name, int stages, int micro_batches, int chunks) {
  if (name == "interleaved") return interleaved(stages, micro_batches, chunks);
  KOLOS_CHECK(name == "gpipe" || name == "1f1b",
              "parallel.pp_schedule = \"{}\": expected \"gpipe\", \"1f1b\" or \"interleaved\"", name);
  KOLOS_CHECK(chunks == 1,
              "parallel.pp_virtual = {} needs parallel.pp_schedule = \"interleaved\", found \"{}\"; set "
              "parallel.pp_virtual = 1 or parallel.pp_schedule = \"interleaved\"",
              chunks, name);
  return name == "gpipe" ? gpipe(stages, micro_batches) : one_f_one_b(stages, micro_batches);
}

int boundary(const Schedule& schedule, int stage, const Instruction& in) {
  const int u = schedule.virtual_stage(stage, in.chunk);
  switch (in.op) {
    case Op::kSendActivation:
    case Op::kRecvGrad: return u;
    case Op::kRecvActivation:
    case Op::kSendGrad: return u - 1;
    default: break;
  }
  KOLOS_ASSERT(false, "boundary() of {}, which is not a send or receive", to_string(in));
  return -1;
}

std::vector<std::string> validate(const Schedule& schedule) {
  std::vector<std::string> problems;
  const int p = schedule.stages, m = schedule.micro_batches, v = schedule.chunks;
  if (p < 1 || m < 1 || v < 1 || static_cast<int>(schedule.instructions.size()) != p) {
    problems.push_back(fmt::format("{} stages, {} micro-batches, {} chunks with {} instruction lists", p, m, v,
                                   schedule.instructions.size()));
    return problems;
  }
  const int last = schedule.virtual_stages() - 1;

  // 1. Each stage on its own: fields in range, one of each instruction per (micro, chunk), in a causal order.
  bool in_range = true;
  for (int s = 0; s < p; ++s) {
    const auto& list = schedule.instructions[s];
    std::map<std::tuple<Op, int, int>, std::vector<int>> where;  // (op, micro, chunk) → positions
    std::vector<int> reduces;
    for (int i = 0; i < static_cast<int>(list.size()); ++i) {
      const Instruction& in = list[i];
      bool ok;
      if (in.op == Op::kReduce) {
        ok = in.micro == -1 && in.chunk == -1 && in.peer == -1;
        if (ok) reduces.push_back(i);
      } else {
        ok = in.micro >= 0 && in.micro < m && in.chunk >= 0 && in.chunk < v &&
             (is_compute(in.op) ? in.peer == -1 : in.peer >= 0 && in.peer < p);
        if (ok) where[{in.op, in.micro, in.chunk}].push_back(i);
      }
      if (!ok) {
        problems.push_back(fmt::format("stage {} #{}: {} has a field out of range (m = {}, v = {}, p = {})", s, i,
                                       to_string(in), m, v, p));
        in_range = false;
      }
    }
    auto positions = [&](Op op, int j, int c) {
      auto it = where.find({op, j, c});
      return it == where.end() ? std::vector<int>{} : it->second;
    };
    int last_backward = -1;
    for (int c = 0; c < v; ++c) {
      const int u = schedule.virtual_stage(s, c);
      for (int j = 0; j < m; ++j) {
        const auto forward = positions(Op::kForward, j, c), backward = positions(Op::kBackward, j, c);
        if (forward.size() != 1 || backward.size() != 1) {
          problems.push_back(fmt::format("stage {}: micro-batch {} chunk {} has {} forwards and {} backwards, "
                                         "expected one of each",
                                         s, j, c, forward.size(), backward.size()));
          continue;
        }
        const int f = forward[0], b = backward[0];
        last_backward = std::max(last_backward, b);
        if (f > b) {
          problems.push_back(
              fmt::format("stage {}: backward of micro-batch {} chunk {} (#{}) before its forward (#{})", s, j, c,
                          b, f));
        }
        // Each message of this (micro, chunk): whether there is one, the compute it serves, whether it comes
        // before that compute, and the virtual stage at its other end.
        const struct {
          Op op;
          bool needed;
          int compute;
          bool before;
          int other;
        } messages[] = {
            {Op::kRecvActivation, u > 0, f, true, u - 1},
            {Op::kSendActivation, u < last, f, false, u + 1},
            {Op::kRecvGrad, u < last, b, true, u + 1},
            {Op::kSendGrad, u > 0, b, false, u - 1},
        };
        for (const auto& msg : messages) {
          const auto at = positions(msg.op, j, c);
          if (at.size() != (msg.needed ? 1u : 0u)) {
            problems.push_back(fmt::format("stage {}: {} {} of micro-batch {} chunk {} (virtual stage {} of {}), "
                                           "expected {}",
                                           s, at.size(), op_name(msg.op), j, c, u, last + 1, msg.needed ? 1 : 0));
            continue;
          }
          if (!msg.needed) continue;
          const Instruction& in = list[at[0]];
          if (msg.before ? at[0] > msg.compute : at[0] < msg.compute) {
            problems.push_back(fmt::format("stage {} #{}: {} must come {} #{}", s, at[0], to_string(in),
                                           msg.before ? "before" : "after", msg.compute));
          }
          if (in.peer != schedule.stage_of(msg.other)) {
            problems.push_back(fmt::format("stage {} #{}: {} names peer {}, but virtual stage {} is on stage {}", s,
                                           at[0], to_string(in), in.peer, msg.other, schedule.stage_of(msg.other)));
          }
        }
      }
    }
    if (reduces.size() != 1) {
      problems.push_back(fmt::format("stage {}: {} reduce instructions, expected 1", s, reduces.size()));
    } else if (reduces[0] < last_backward) {
      problems.push_back(fmt::format("stage {}: reduce (#{}) before the last backward (#{})", s, reduces[0],
                                     last_backward));
    }
  }
  if (!in_range) return problems;

  // 2. Replay with asynchronous sends and blocking receives. A message is (gradient?, micro, boundary, from, to);
  // `in_flight` keeps, per (from, to, gradient?) channel, the messages sent and not yet received, in send order.
  using Key = std::tuple<bool, int, int, int, int>;
  using Channel = std::tuple<int, int, bool>;
  std::multiset<Key> mailbox;
  std::map<Channel, std::deque<std::pair<int, int>>> in_flight;  // → (micro, boundary) in send order
  std::set<Channel> reordered;
  std::vector<size_t> pc(p, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      const auto& list = schedule.instructions[s];
      for (; pc[s] < list.size(); ++pc[s], progress = true) {
        const Instruction& in = list[pc[s]];
        if (!is_send(in.op) && !is_recv(in.op)) continue;
        const bool grad = in.op == Op::kSendGrad || in.op == Op::kRecvGrad;
        const int b = boundary(schedule, s, in);
        if (is_send(in.op)) {
          mailbox.insert({grad, in.micro, b, s, in.peer});
          in_flight[{s, in.peer, grad}].push_back({in.micro, b});
          continue;
        }
        auto it = mailbox.find({grad, in.micro, b, in.peer, s});
        if (it == mailbox.end()) break;  // blocks until the peer sends it
        mailbox.erase(it);
        auto& queue = in_flight[{in.peer, s, grad}];
        auto q = std::find(queue.begin(), queue.end(), std::make_pair(in.micro, b));
        if (q != queue.begin() && reordered.insert({in.peer, s, grad}).second) {
          problems.push_back(fmt::format("stage {} #{}: {} is received before {} sent earlier on the same "
                                         "channel (stage {} → {}, {})",
                                         s, pc[s], to_string(in), queue.front().first, in.peer, s,
                                         grad ? "gradients" : "activations"));
        }
        queue.erase(q);
      }
    }
  }
  std::string blocked;
  for (int s = 0; s < p; ++s) {
    if (pc[s] < schedule.instructions[s].size()) {
      blocked += fmt::format("{}stage {} at #{} {}", blocked.empty() ? "" : ", ", s, pc[s],
                             to_string(schedule.instructions[s][pc[s]]));
    }
  }
  if (!blocked.empty()) {
    problems.push_back("deadlock with asynchronous sends and blocking receives: " + blocked);
  } else {
    for (const auto& [grad, micro, b, from, to] : mailbox) {
      problems.push_back(fmt::format("the {} of micro-batch {} across boundary {} sent by stage {} to stage {} is "
                                     "never received",
                                     grad ? "gradient" : "activation", micro, b, from, to));
    }
  }
  return problems;
}

int max_in_flight(const Schedule& schedule, int stage) {
  KOLOS_ASSERT(stage >= 0 && stage < static_cast<int>(schedule.instructions.size()),
               "stage {} of a {}-stage schedule", stage, schedule.instructions.size());
  std::set<std::pair<int, int>> held;  // (micro, chunk) whose forward ran and backward not yet
  size_t most = 0;
  for (const Instruction& in : schedule.instructions[stage]) {
    if (in.op == Op::kForward) held.insert({in.micro, in.chunk});
    if (in.op == Op::kBackward) held.erase({in.micro, in.chunk});
    most = std::max(most, held.size());
  }
  return static_cast<int>(most);
}

}  // namespace kolos::parallel::pipeline
