// The pipeline executor on thread ranks against one thread running the same computation unsplit: a chain of V
// virtual stages, each x → tanh(x W_u), the last one's output reduced to a loss. Every schedule must give the
// reference's loss and every W_u's gradient (accumulated over the micro-batches in the same order, so equal to
// rounding), hold no more activation sets than the schedule says, and exchange one shape message per stage pair.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/parallel/pipeline/executor.h"
#include "kolos/parallel/pipeline/schedule.h"
#include "tests/dist/thread_ranks.h"

namespace kolos::parallel::pipeline {
namespace {

constexpr int64_t kBatch = 3, kWidth = 6;  // activation messages of 72 bytes; shape messages are 64

// Each call draws from a generator of its own: the thread ranks call these at the same time, and seeding and drawing
// from the global generator there raced (a rank could get another rank's draws).
at::Tensor weight(int u) {
  at::Generator gen = at::detail::createCPUGenerator(100 + u);
  return at::randn({kWidth, kWidth}, gen, at::kFloat) * 0.5;
}

std::vector<MicroBatch> micro_batches(int m) {
  at::Generator gen = at::detail::createCPUGenerator(7);
  std::vector<MicroBatch> out;
  for (int i = 0; i < m; ++i) {
    at::Tensor input = at::randn({kBatch, kWidth}, gen, at::kFloat);
    out.push_back({input, at::randn({kBatch, kWidth}, gen, at::kFloat)});
  }
  return out;
}

at::Tensor stage_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& target) {
  at::Tensor y = at::tanh(at::matmul(x, w));
  return target.defined() ? (y - target).pow(2).mean() : y;
}

struct Result {
  double loss = 0;
  std::map<int, at::Tensor> grads;  // by virtual stage
  std::map<int, int> max_held;      // by stage
  std::map<int, int64_t> shape_sends, shape_recvs;
};

Result reference(int V, int m) {
  Result r;
  std::vector<at::Tensor> w;
  for (int u = 0; u < V; ++u) w.push_back(weight(u).requires_grad_(true));
  for (const auto& b : micro_batches(m)) {
    at::Tensor x = b.input;
    for (int u = 0; u < V; ++u) x = stage_forward(x, w[u], u == V - 1 ? b.target : at::Tensor());
    r.loss += x.item<double>();
    (x / static_cast<double>(m)).backward();
  }
  for (int u = 0; u < V; ++u) r.grads[u] = w[u].grad().clone();
  return r;
}

Result pipelined(const Schedule& schedule) {
  Result r;
  std::mutex mu;
  const int p = schedule.stages, m = schedule.micro_batches;
  test::run_thread_ranks(
      p,
      [&](dist::Comm& comm, int stage) {
        std::vector<at::Tensor> w;
        for (int c = 0; c < schedule.chunks; ++c) w.push_back(weight(schedule.virtual_stage(stage, c)).requires_grad_(true));
        Executor ex(schedule, stage, &comm);
        Callbacks cb;
        cb.forward = [&](int, int chunk, const at::Tensor& x, const at::Tensor& target) {
          return stage_forward(x, w[chunk], target);
        };
        cb.objective = [&](const at::Tensor& loss) { return loss / static_cast<double>(m); };
        int reduces = 0;
        cb.reduce = [&] { ++reduces; };
        const double loss = ex.run(micro_batches(m), cb);
        EXPECT_EQ(reduces, 1);
        // Sends of 64 bytes are shape messages; a receive records no bytes (the ledger counts bytes sent), so the
        // shape receives are the forward receives beyond one per micro-batch and chunk with a stage before it.
        int64_t shapes_out = 0, shapes_in = 0;
        for (const auto& e : comm.ledger().events()) {
          if (e.phase != dist::Phase::kForward) continue;
          shapes_out += e.op == "send" && e.bytes == 64 ? 1 : 0;
          shapes_in += e.op == "recv" ? 1 : 0;
        }
        for (int c = 0; c < schedule.chunks; ++c) shapes_in -= schedule.virtual_stage(stage, c) > 0 ? m : 0;
        std::lock_guard<std::mutex> lock(mu);
        r.loss += loss;
        for (int c = 0; c < schedule.chunks; ++c) r.grads[schedule.virtual_stage(stage, c)] = w[c].grad().clone();
        r.max_held[stage] = ex.max_held();
        r.shape_sends[stage] = shapes_out;
        r.shape_recvs[stage] = shapes_in;
      },
      std::chrono::seconds(20), 0, "pp");
  return r;
}

void expect_same_as_one_thread(const Schedule& schedule) {
  SCOPED_TRACE(schedule.name + " p=" + std::to_string(schedule.stages) + " m=" + std::to_string(schedule.micro_batches) +
               " v=" + std::to_string(schedule.chunks));
  const int V = schedule.virtual_stages();
  const Result want = reference(V, schedule.micro_batches);
  const Result got = pipelined(schedule);
  EXPECT_NEAR(got.loss, want.loss, 1e-6 * std::abs(want.loss));
  for (int u = 0; u < V; ++u) {
    ASSERT_TRUE(got.grads.count(u)) << "virtual stage " << u;
    EXPECT_TRUE(at::allclose(got.grads.at(u), want.grads.at(u), 1e-6, 1e-9)) << "virtual stage " << u;
  }
  for (int s = 0; s < schedule.stages; ++s) {
    EXPECT_LE(got.max_held.at(s), max_in_flight(schedule, s)) << "stage " << s;
    // One shape message to the next stage (and from the one before), none more: the wrap pair p−1 → 0 exists only
    // with virtual stages.
    const bool sends = s < schedule.stages - 1 || schedule.chunks > 1, receives = s > 0 || schedule.chunks > 1;
    EXPECT_EQ(got.shape_sends.at(s), sends ? 1 : 0) << "stage " << s;
    EXPECT_EQ(got.shape_recvs.at(s), receives ? 1 : 0) << "stage " << s;
  }
}

TEST(PipelineExecutor, EverySchedulesGradientsEqualOneThread) {
  expect_same_as_one_thread(gpipe(2, 4));
  expect_same_as_one_thread(one_f_one_b(2, 4));
  expect_same_as_one_thread(one_f_one_b(3, 5));
  expect_same_as_one_thread(interleaved(2, 4, 2));
}

TEST(PipelineExecutor, OneFOneBHoldsAtMostStagesMinusStageActivationSets) {
  const Schedule s = one_f_one_b(3, 6);
  const Result r = pipelined(s);
  for (int stage = 0; stage < 3; ++stage) EXPECT_EQ(r.max_held.at(stage), 3 - stage) << "stage " << stage;
  const Result g = pipelined(gpipe(3, 6));
  for (int stage = 0; stage < 3; ++stage) EXPECT_EQ(g.max_held.at(stage), 6) << "stage " << stage;
}

TEST(PipelineExecutor, ForwardOnlyGivesTheLoss) {
  const Schedule schedule = interleaved(2, 2, 2);
  const auto batches = micro_batches(1);
  at::NoGradGuard no_grad;
  at::Tensor x = batches[0].input;
  for (int u = 0; u < 4; ++u) x = stage_forward(x, weight(u), u == 3 ? batches[0].target : at::Tensor());
  const double want = x.item<double>();
  std::vector<double> got(2);
  test::run_thread_ranks(
      2,
      [&](dist::Comm& comm, int stage) {
        std::vector<at::Tensor> w = {weight(stage), weight(2 + stage)};
        Executor ex(schedule, stage, &comm);
        Callbacks cb;
        cb.forward = [&](int, int chunk, const at::Tensor& in, const at::Tensor& target) {
          return stage_forward(in, w[chunk], target);
        };
        got[stage] = ex.forward_only(batches[0], cb);
      },
      std::chrono::seconds(20), 0, "pp");
  EXPECT_EQ(got[0], 0.0);  // the loss is on the stage of the last virtual stage
  EXPECT_NEAR(got[1], want, 1e-6 * std::abs(want));
}

}  // namespace
}  // namespace kolos::parallel::pipeline
