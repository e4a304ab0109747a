#include "kolos/nn/attention.h"

#include <cmath>
#include <limits>

#include <torch/csrc/autograd/custom_function.h>

namespace kolos::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Adds -inf where key index (k0 + j) > query index (q0 + i), in place, when the block crosses the diagonal.
void mask_block(at::Tensor& scores, int64_t q0, int64_t k0) {
  const int64_t nq = scores.size(1), nk = scores.size(2);
  if (k0 + nk - 1 <= q0) return;  // entirely at or below the diagonal
  at::Tensor qi = at::arange(q0, q0 + nq, at::kLong).unsqueeze(1);
  at::Tensor kj = at::arange(k0, k0 + nk, at::kLong).unsqueeze(0);
  scores.masked_fill_(kj > qi, -std::numeric_limits<float>::infinity());
}

// Forward over (N, T, D) tensors, N = B*H. q is already scaled by 1/sqrt(D). Returns {out, lse}.
std::pair<at::Tensor, at::Tensor> forward_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 int64_t block) {
  const int64_t N = q.size(0), T = q.size(1), D = q.size(2);
  at::Tensor out = at::empty({N, T, D}, q.options());
  at::Tensor lse = at::empty({N, T}, q.options());
  for (int64_t q0 = 0; q0 < T; q0 += block) {
    const int64_t nq = std::min(block, T - q0);
    at::Tensor qb = q.narrow(1, q0, nq);
    at::Tensor m, l, acc;
    for (int64_t k0 = 0; k0 < q0 + nq; k0 += block) {
      const int64_t nk = std::min(block, T - k0);
      at::Tensor s = at::bmm(qb, k.narrow(1, k0, nk).transpose(1, 2));  // (N, nq, nk)
      mask_block(s, q0, k0);
      at::Tensor bm = std::get<0>(s.max(-1, /*keepdim=*/true));       // (N, nq, 1)
      if (!m.defined()) {
        m = bm;
        s.sub_(m).exp_();
        l = s.sum(-1, true);
        acc = at::bmm(s, v.narrow(1, k0, nk));
      } else {
        at::Tensor m_new = at::maximum(m, bm);
        at::Tensor corr = (m - m_new).exp_();
        s.sub_(m_new).exp_();
        l.mul_(corr).add_(s.sum(-1, true));
        acc.mul_(corr).add_(at::bmm(s, v.narrow(1, k0, nk)));
        m = m_new;
      }
    }
    out.narrow(1, q0, nq).copy_(acc.div_(l));
    lse.narrow(1, q0, nq).copy_((m + l.log()).squeeze(-1));
  }
  return {out, lse};
}

class CausalAttention : public torch::autograd::Function<CausalAttention> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block) {
    const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    at::Tensor qs = (q.reshape({B * H, T, D}) * scale).contiguous();
    at::Tensor kf = k.reshape({B * H, T, D}).contiguous();
    at::Tensor vf = v.reshape({B * H, T, D}).contiguous();
    auto [out, lse] = forward_blocks(qs, kf, vf, block);
    ctx->save_for_backward({qs, kf, vf, out, lse});
    ctx->saved_data["block"] = block;
    ctx->saved_data["scale"] = scale;
    return out.view({B, H, T, D});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& qs = saved[0];
    const at::Tensor& k = saved[1];
    const at::Tensor& v = saved[2];
    const at::Tensor& out = saved[3];
    const at::Tensor& lse = saved[4];
    const int64_t block = ctx->saved_data["block"].toInt();
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t N = qs.size(0), T = qs.size(1), D = qs.size(2);
    const auto shape = grads[0].sizes().vec();
    at::Tensor dout = grads[0].reshape({N, T, D}).contiguous();
    at::Tensor delta = (dout * out).sum(-1, true);  // (N, T, 1)
    at::Tensor dq = at::zeros_like(qs), dk = at::zeros_like(k), dv = at::zeros_like(v);
    for (int64_t q0 = 0; q0 < T; q0 += block) {
      const int64_t nq = std::min(block, T - q0);
      at::Tensor qb = qs.narrow(1, q0, nq);
      at::Tensor dob = dout.narrow(1, q0, nq);
      at::Tensor lseb = lse.narrow(1, q0, nq).unsqueeze(-1);
      at::Tensor deltab = delta.narrow(1, q0, nq);
      for (int64_t k0 = 0; k0 < q0 + nq; k0 += block) {
        const int64_t nk = std::min(block, T - k0);
        at::Tensor kb = k.narrow(1, k0, nk), vb = v.narrow(1, k0, nk);
        at::Tensor p = at::bmm(qb, kb.transpose(1, 2));
        mask_block(p, q0, k0);
        p.sub_(lseb).exp_();                                         // probabilities (N, nq, nk)
        dv.narrow(1, k0, nk).add_(at::bmm(p.transpose(1, 2), dob));
        at::Tensor ds = at::bmm(dob, vb.transpose(1, 2));            // dP
        ds.sub_(deltab).mul_(p);                                     // dS = P * (dP - delta)
        dq.narrow(1, q0, nq).add_(at::bmm(ds, kb));
        dk.narrow(1, k0, nk).add_(at::bmm(ds.transpose(1, 2), qb));
      }
    }
    dq.mul_(scale);
    return {dq.view(shape), dk.view(shape), dv.view(shape), at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block) {
  return CausalAttention::apply(q, k, v, block);
}

}  // namespace kolos::nn
