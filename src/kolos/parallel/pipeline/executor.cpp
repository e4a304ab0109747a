#include "kolos/parallel/pipeline/executor.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/core/alloc_counter.h"
#include "kolos/core/error.h"

namespace kolos::parallel::pipeline {

namespace {

constexpr int kActivationTag = 1, kGradTag = 2, kShapeTag = 3, kEvalActivationTag = 4, kEvalShapeTag = 5;
constexpr int64_t kShapeSlots = 8;  // dtype, ndim, up to 6 sizes

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The ledger phase of a stretch of the step (none without a Comm).
struct MaybePhase {
  std::optional<dist::Ledger::PhaseScope> scope;
  MaybePhase(dist::Comm* comm, dist::Phase phase) {
    if (comm) scope.emplace(comm->ledger(), phase);
  }
};

}  // namespace

Executor::Executor(Schedule schedule, int stage, dist::Comm* comm)
    : schedule_(std::move(schedule)), stage_(stage), comm_(comm) {
  KOLOS_ASSERT(stage_ >= 0 && stage_ < schedule_.stages, "stage {} of {}", stage_, schedule_.stages);
  KOLOS_ASSERT(schedule_.stages == 1 || (comm_ && comm_->size() == schedule_.stages && comm_->rank() == stage_),
               "the pp Comm does not match the schedule's {} stages", schedule_.stages);
}

void Executor::send_activation(const at::Tensor& t, int peer, int tag, int shape_tag, Channel& channel) {
  at::Tensor data = t.detach().contiguous();
  if (!channel.known) {
    KOLOS_ASSERT(data.dim() <= kShapeSlots - 2, "activation of {} dimensions", data.dim());
    at::Tensor shape = at::zeros({kShapeSlots}, at::kLong);
    shape[0] = static_cast<int64_t>(data.scalar_type());
    shape[1] = data.dim();
    for (int64_t d = 0; d < data.dim(); ++d) shape[2 + d] = data.size(d);
    sends_.emplace_back(comm_->send_async(shape, peer, shape_tag), shape);
    channel.known = true;
    channel.dtype = data.scalar_type();
    channel.shape = data.sizes().vec();
  }
  KOLOS_ASSERT(data.sizes().vec() == channel.shape && data.scalar_type() == channel.dtype,
               "stage {}: an activation of another shape than the first one sent to stage {}", stage_, peer);
  sends_.emplace_back(comm_->send_async(data, peer, tag), data);
}

at::Tensor Executor::receive_activation(int peer, int tag, int shape_tag, Channel& channel) {
  if (!channel.known) {
    at::Tensor shape = at::zeros({kShapeSlots}, at::kLong);
    comm_->recv(shape, peer, shape_tag);
    channel.known = true;
    channel.dtype = static_cast<at::ScalarType>(shape[0].item<int64_t>());
    const int64_t dims = shape[1].item<int64_t>();
    channel.shape.clear();
    for (int64_t d = 0; d < dims; ++d) channel.shape.push_back(shape[2 + d].item<int64_t>());
  }
  at::Tensor t = at::empty(channel.shape, at::TensorOptions().dtype(channel.dtype));
  comm_->recv(t, peer, tag);
  return t;
}

void Executor::reap_sends(bool all) {
  if (all) {
    for (auto& [handle, tensor] : sends_) handle.wait();
    sends_.clear();
    return;
  }
  sends_.erase(std::remove_if(sends_.begin(), sends_.end(), [](auto& s) { return s.first.done(); }), sends_.end());
}

double Executor::run(const std::vector<MicroBatch>& micro, const Callbacks& cb) {
  KOLOS_ASSERT(static_cast<int>(micro.size()) == schedule_.micro_batches, "{} micro-batches for a schedule of {}",
               micro.size(), schedule_.micro_batches);
  const int last = schedule_.virtual_stages() - 1;
  const int K = schedule_.micro_batches * schedule_.chunks;
  double loss_sum = 0;
  int backwards = 0;
  max_held_ = 0;
  stash_.clear();
  stats_ = Stats{};
  const auto& list = schedule_.instructions[stage_];
  stats_.begin_at.assign(list.size(), 0.0);
  stats_.end_at.assign(list.size(), 0.0);
  const int64_t live_at_start = cpu_live_bytes();
  for (size_t i = 0; i < list.size(); ++i) {
    const Instruction& ins = list[i];
    double& begin_at = stats_.begin_at[i];
    double& end_at = stats_.end_at[i];
    const std::pair<int, int> key{ins.micro, ins.chunk};
    const int u = schedule_.virtual_stage(stage_, ins.chunk < 0 ? 0 : ins.chunk);
    switch (ins.op) {
      case Op::kRecvActivation: {
        MaybePhase scope(comm_, dist::Phase::kForward);
        begin_at = now_s();
        at::Tensor x = receive_activation(ins.peer, kActivationTag, kShapeTag, received_[ins.peer]);
        end_at = now_s();
        x.set_requires_grad(true);
        stash_[key].input = x;
        break;
      }
      case Op::kForward: {
        MaybePhase scope(comm_, dist::Phase::kForward);
        Stash& s = stash_[key];
        if (u == 0) s.input = micro[ins.micro].input;
        KOLOS_ASSERT(s.input.defined(), "stage {}: forward {} without its input", stage_, to_string(ins));
        begin_at = now_s();
        s.output = cb.forward(ins.micro, ins.chunk, s.input, u == last ? micro[ins.micro].target : at::Tensor());
        if (u == last) loss_sum += s.output.detach().item<double>();
        end_at = now_s();
        max_held_ = std::max(max_held_, static_cast<int>(stash_.size()));
        stats_.activation_bytes = std::max(stats_.activation_bytes, cpu_live_bytes() - live_at_start);
        break;
      }
      case Op::kSendActivation: {
        MaybePhase scope(comm_, dist::Phase::kForward);
        begin_at = now_s();
        send_activation(stash_.at(key).output, ins.peer, kActivationTag, kShapeTag, sent_[ins.peer]);
        reap_sends(false);
        end_at = now_s();
        break;
      }
      case Op::kRecvGrad: {
        MaybePhase scope(comm_, dist::Phase::kBackward);
        Stash& s = stash_.at(key);
        const Channel& c = sent_.at(ins.peer);  // the shape of the activation this stage sent there
        begin_at = now_s();
        s.grad_out = at::empty(c.shape, at::TensorOptions().dtype(c.dtype));
        comm_->recv(s.grad_out, ins.peer, kGradTag);
        end_at = now_s();
        break;
      }
      case Op::kBackward: {
        MaybePhase scope(comm_, dist::Phase::kBackward);
        Stash& s = stash_.at(key);
        if (cb.before_backward) cb.before_backward(backwards, K);
        begin_at = now_s();
        if (u == last) {
          (cb.objective ? cb.objective(s.output) : s.output).backward();
        } else {
          KOLOS_ASSERT(s.grad_out.defined(), "stage {}: backward {} before its gradient arrived", stage_,
                       to_string(ins));
          torch::autograd::backward({s.output}, {s.grad_out.to(s.output.scalar_type())});
        }
        end_at = now_s();
        if (cb.after_backward) cb.after_backward(backwards, K);
        ++backwards;
        s.output = at::Tensor();
        s.grad_out = at::Tensor();
        if (u == 0) stash_.erase(key);  // nothing to send back
        break;
      }
      case Op::kSendGrad: {
        MaybePhase scope(comm_, dist::Phase::kBackward);
        Stash& s = stash_.at(key);
        at::Tensor g = s.input.grad();
        if (!g.defined()) g = at::zeros_like(s.input);  // the chunk did not use its input
        begin_at = now_s();
        sends_.emplace_back(comm_->send_async(g.contiguous(), ins.peer, kGradTag), g.contiguous());
        stash_.erase(key);
        reap_sends(false);
        end_at = now_s();
        break;
      }
      case Op::kReduce: {
        reap_sends(true);
        begin_at = now_s();
        if (cb.reduce) cb.reduce();
        end_at = now_s();
        break;
      }
    }
  }
  KOLOS_ASSERT(stash_.empty(), "stage {}: {} activation sets left after the step", stage_, stash_.size());
  return loss_sum;
}

double Executor::forward_only(const MicroBatch& batch, const Callbacks& cb) {
  at::NoGradGuard no_grad;
  const int V = schedule_.virtual_stages();
  double loss = 0;
  MaybePhase scope(comm_, dist::Phase::kOther);
  for (int u = 0; u < V; ++u) {
    if (schedule_.stage_of(u) != stage_) continue;
    const int chunk = schedule_.chunk_of(u);
    at::Tensor x = batch.input;
    if (u > 0) {
      const int from = schedule_.stage_of(u - 1);
      x = receive_activation(from, kEvalActivationTag, kEvalShapeTag, eval_received_[from]);
    }
    at::Tensor y = cb.forward(0, chunk, x, u == V - 1 ? batch.target : at::Tensor());
    if (u == V - 1) {
      loss = y.item<double>();
    } else {
      const int to = schedule_.stage_of(u + 1);
      send_activation(y, to, kEvalActivationTag, kEvalShapeTag, eval_sent_[to]);
    }
  }
  reap_sends(true);
  return loss;
}

}  // namespace kolos::parallel::pipeline
