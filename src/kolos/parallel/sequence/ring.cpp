#include "kolos/parallel/sequence/ring.h"

#include <cmath>
#include <limits>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#include "kolos/core/error.h"
#include "kolos/nn/attention.h"
#include "kolos/parallel/tensor/regions.h"

namespace kolos::parallel::sequence {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Started {
  std::vector<at::Tensor> out;
  std::vector<at::Tensor> in;
  std::vector<dist::Handle> handles;
};

// Sends `out` tensors to the next rank and receives as many (same shapes) from the previous one, tagged by `step`,
// in two halves so that the transfer overlaps the block's computation: start, compute, finish.
Started start_shift(const std::vector<at::Tensor>& out, int step, dist::Comm& comm) {
  const int n = comm.size(), next = (comm.rank() + 1) % n, prev = (comm.rank() + n - 1) % n;
  Started s{out, {}, {}};
  for (size_t i = 0; i < out.size(); ++i) {
    s.in.push_back(at::empty_like(out[i]));
    const int tag = step * 8 + static_cast<int>(i);
    s.handles.push_back(comm.send_async(out[i], next, tag));
    s.handles.push_back(comm.recv_async(s.in.back(), prev, tag));
  }
  return s;
}
std::vector<at::Tensor> finish_shift(Started& s) {
  for (auto& h : s.handles) h.wait();
  return s.in;
}
std::vector<at::Tensor> shift(const std::vector<at::Tensor>& out, int step, dist::Comm& comm) {
  Started s = start_shift(out, step, comm);
  return finish_shift(s);
}

// (B·KV, T, D) keys or values → (B·H, T, D), each key/value head repeated for its H/KV query heads; and the
// gradient's way back, summing over the repeats.
at::Tensor expand(const at::Tensor& kv, int64_t B, int64_t H) {
  const int64_t KV = kv.size(0) / B, T = kv.size(1), D = kv.size(2);
  return nn::expand_kv(kv.view({B, KV, T, D}), H).reshape({B * H, T, D});
}
at::Tensor reduce_groups(const at::Tensor& g, int64_t B, int64_t KV) {
  const int64_t H = g.size(0) / B, T = g.size(1), D = g.size(2);
  return H == KV ? g : g.view({B, KV, H / KV, T, D}).sum(2).reshape({B * KV, T, D});
}

struct Ring : torch::autograd::Function<Ring> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t total, dist::Comm* comm) {
    const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), KV = k.size(1);
    const int p = comm->size(), r = comm->rank();
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    at::Tensor qs = (q.reshape({B * H, T, D}) * scale).contiguous();
    at::Tensor kc = k.reshape({B * KV, T, D}).contiguous(), vc = v.reshape({B * KV, T, D}).contiguous();
    const at::Tensor pos = zigzag_positions(total, p, r);
    dist::Ledger::PhaseScope phase(comm->ledger(), dist::Phase::kForward);
    at::Tensor out, lse;
    std::vector<at::Tensor> kv = {kc, vc};  // at step j: the block of rank r − j, with its KV heads only
    for (int step = 0; step < p; ++step) {
      Started next;
      if (step + 1 < p) next = start_shift(kv, step, *comm);
      const at::Tensor k_pos = zigzag_positions(total, p, (r - step + p) % p);
      auto [o, l] = nn::attention_forward_blocks(qs, expand(kv[0], B, H), expand(kv[1], B, H), pos, k_pos,
                                                 nn::kAttentionBlock);
      if (!out.defined()) {
        out = o;
        lse = l;
      } else {  // merge by log-sum-exp; a −inf on one side leaves the other as it is
        at::Tensor m = at::maximum(lse, l);
        at::Tensor ms = m.masked_fill(m == -std::numeric_limits<float>::infinity(), 0);
        at::Tensor a = (lse - ms).exp(), b = (l - ms).exp();
        at::Tensor sum = a + b;
        at::Tensor safe = sum.masked_fill(sum == 0, 1);
        out = (out * (a / safe).unsqueeze(-1)) + (o * (b / safe).unsqueeze(-1));
        lse = ms + sum.log();
      }
      if (step + 1 < p) kv = finish_shift(next);
    }
    ctx->save_for_backward({qs, kc, vc, out, lse});
    tensor::save_comm(ctx, *comm);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["total"] = total;
    ctx->saved_data["shape"] = std::vector<int64_t>{B, H, KV, T, D};
    return out.view({B, H, T, D});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = tensor::saved_comm(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &qs = saved[0], &kc = saved[1], &vc = saved[2], &out = saved[3], &lse = saved[4];
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const int64_t B = shape[0], H = shape[1], KV = shape[2], T = shape[3], D = shape[4];
    const int64_t total = ctx->saved_data["total"].toInt();
    const int p = comm.size(), r = comm.rank();
    const at::Tensor pos = zigzag_positions(total, p, r);
    at::Tensor dout = grads[0].reshape({B * H, T, D}).contiguous();
    at::Tensor delta = (dout * out).sum(-1, true);
    at::Tensor dq = at::zeros_like(qs);
    dist::Ledger::PhaseScope phase(comm.ledger(), dist::Phase::kBackward);
    // The travelling block: keys and values, and the gradient accumulators of their owner (KV heads only).
    std::vector<at::Tensor> kv = {kc, vc};
    at::Tensor dk = at::zeros_like(kc), dv = at::zeros_like(vc);
    for (int step = 0; step < p; ++step) {
      Started next;
      if (step + 1 < p) next = start_shift(kv, 2 * step, comm);  // the next block's keys travel meanwhile
      const at::Tensor k_pos = zigzag_positions(total, p, (r - step + p) % p);
      at::Tensor dk_block = at::zeros({B * H, T, D}, kc.options()), dv_block = at::zeros_like(dk_block);
      nn::attention_backward_blocks(qs, expand(kv[0], B, H), expand(kv[1], B, H), dout, lse, delta, pos, k_pos,
                                    nn::kAttentionBlock, dq, dk_block, dv_block);
      dk.add_(reduce_groups(dk_block, B, KV));
      dv.add_(reduce_groups(dv_block, B, KV));
      auto back = shift({dk, dv}, 2 * step + 1, comm);  // the accumulators follow their block (home at the end)
      dk = back[0];
      dv = back[1];
      if (step + 1 < p) kv = finish_shift(next);
    }
    dq.mul_(ctx->saved_data["scale"].toDouble());
    return {dq.view({B, H, T, D}), dk.view({B, KV, T, D}), dv.view({B, KV, T, D}), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor zigzag_positions(int64_t total, int parts, int rank) {
  KOLOS_CHECK(total % (2 * parts) == 0, "ring attention: a sequence of {} tokens does not split into 2 × {} = {} "
              "equal chunks (parallel.sp_mode = \"ring\" needs the sequence divisible by 2·sp)",
              total, parts, 2 * parts);
  const int64_t chunk = total / (2 * parts);
  return at::cat({at::arange(rank * chunk, (rank + 1) * chunk, at::kLong),
                  at::arange((2 * parts - 1 - rank) * chunk, (2 * parts - rank) * chunk, at::kLong)});
}

at::Tensor ring_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, dist::Comm& sp) {
  if (sp.size() == 1) return nn::causal_attention(q, k, v);
  return Ring::apply(q, k, v, q.size(2) * sp.size(), &sp);
}

}  // namespace kolos::parallel::sequence
