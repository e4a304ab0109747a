#include "kolos/nn/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>
#include <limits>

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace kolos::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Adds -inf where the key's position is after the query's, in place (scores: (N, nq, nk)).
void mask_block(at::Tensor& scores, const at::Tensor& q_pos, const at::Tensor& k_pos) {
  scores.masked_fill_(k_pos.unsqueeze(0) > q_pos.unsqueeze(1), -std::numeric_limits<float>::infinity());
}

// The smallest and largest position of each block of `block` positions (in any order), computed once per call:
// a key block is entirely invisible to a query block when its first key comes after the block's last query
// (k.first > q.second), entirely visible when its last key is at or before the first query (k.second <= q.first).
std::vector<std::pair<int64_t, int64_t>> block_ranges(const at::Tensor& positions, int64_t block) {
  const at::Tensor p = positions.contiguous();
  const int64_t* d = p.data_ptr<int64_t>();
  const int64_t n = p.numel();
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const auto [lo, hi] = std::minmax_element(d + b0, d + std::min(n, b0 + block));
    out.emplace_back(*lo, *hi);
  }
  return out;
}

at::Tensor arange_pos(int64_t n) { return at::arange(n, at::kLong); }

// The dtype of the products: the autocast dtype while CPU autocast is on (bf16 under train.dtype = "bf16"), else
// q's. The kernel casts to it itself, so its backward (which runs outside the autocast scope) computes as its
// forward did.
at::ScalarType product_dtype(const at::Tensor& q) {
  return at::autocast::is_cpu_enabled() ? at::autocast::get_autocast_cpu_dtype() : q.scalar_type();
}

// The dtype of the softmax statistics and running sums: fp32, or the products' dtype when that is wider (fp64).
at::ScalarType stats_dtype(at::ScalarType products) { return at::promote_types(products, at::kFloat); }

class CausalAttention : public torch::autograd::Function<CausalAttention> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t block) {
    const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const at::ScalarType dtype = product_dtype(q);
    at::Tensor qs = (q.reshape({B * H, T, D}) * scale).to(dtype).contiguous();
    at::Tensor kf = k.reshape({B * H, T, D}).to(dtype).contiguous();
    at::Tensor vf = v.reshape({B * H, T, D}).to(dtype).contiguous();
    const at::Tensor pos = arange_pos(T);
    auto [out, lse] = attention_forward_blocks(qs, kf, vf, pos, pos, block);
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
    const at::ScalarType stats = stats_dtype(qs.scalar_type());
    at::Tensor delta = (dout.to(stats) * out.to(stats)).sum(-1, true);  // (N, T, 1)
    // Accumulators in the statistics' dtype; autograd casts each gradient to its input's dtype.
    at::Tensor dq = at::zeros_like(qs, stats), dk = at::zeros_like(k, stats), dv = at::zeros_like(v, stats);
    const at::Tensor pos = arange_pos(T);
    attention_backward_blocks(qs, k, v, dout, lse, delta, pos, pos, block, dq, dk, dv);
    dq.mul_(scale);
    return {dq.view(shape), dk.view(shape), dv.view(shape), at::Tensor()};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> attention_forward_blocks(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, const at::Tensor& q_pos,
                                                           const at::Tensor& k_pos, int64_t block) {
  const int64_t N = q.size(0), T = q.size(1), D = q.size(2), S = k.size(1);
  const float inf = std::numeric_limits<float>::infinity();
  const auto q_range = block_ranges(q_pos, block), k_range = block_ranges(k_pos, block);
  const at::ScalarType dtype = q.scalar_type(), stats = stats_dtype(dtype);  // products; softmax statistics
  at::Tensor out = at::empty({N, T, D}, q.options());
  at::Tensor lse = at::empty({N, T}, q.options().dtype(stats));
  for (int64_t q0 = 0; q0 < T; q0 += block) {
    const int64_t nq = std::min(block, T - q0);
    at::Tensor qb = q.narrow(1, q0, nq), qp = q_pos.narrow(0, q0, nq);
    // m: the running maximum (−inf while a query has seen no visible key), ms: m with −inf as 0 for the
    // subtractions; l and acc stay 0 for such a query.
    at::Tensor m, ms, l, acc;
    for (int64_t k0 = 0; k0 < S; k0 += block) {
      const int64_t nk = std::min(block, S - k0);
      const auto& qr = q_range[q0 / block];
      const auto& kr = k_range[k0 / block];
      if (kr.first > qr.second) continue;  // invisible
      at::Tensor kp = k_pos.narrow(0, k0, nk);
      at::Tensor s = at::bmm(qb, k.narrow(1, k0, nk).transpose(1, 2)).to(stats);  // (N, nq, nk)
      if (kr.second > qr.first) mask_block(s, qp, kp);  // not all visible
      at::Tensor bm = std::get<0>(s.max(-1, /*keepdim=*/true));       // (N, nq, 1)
      if (!m.defined()) {
        m = bm;
        ms = m.masked_fill(m == -inf, 0);
        s.sub_(ms).exp_();
        l = s.sum(-1, true);
        acc = at::bmm(s.to(dtype), v.narrow(1, k0, nk)).to(stats);
      } else {
        at::Tensor m_new = at::maximum(m, bm);
        at::Tensor ms_new = m_new.masked_fill(m_new == -inf, 0);
        at::Tensor corr = (ms - ms_new).exp_();
        s.sub_(ms_new).exp_();
        l.mul_(corr).add_(s.sum(-1, true));
        acc.mul_(corr).add_(at::bmm(s.to(dtype), v.narrow(1, k0, nk)));
        m = m_new;
        ms = ms_new;
      }
    }
    if (!m.defined()) {  // no visible key for the whole query block
      out.narrow(1, q0, nq).zero_();
      lse.narrow(1, q0, nq).fill_(-inf);
      continue;
    }
    out.narrow(1, q0, nq).copy_(acc.div_(l.masked_fill(l == 0, 1)));
    lse.narrow(1, q0, nq).copy_((ms + l.log()).squeeze(-1));
  }
  return {out, lse};
}

void attention_backward_blocks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
                               const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& q_pos,
                               const at::Tensor& k_pos, int64_t block, at::Tensor& dq, at::Tensor& dk,
                               at::Tensor& dv) {
  const int64_t T = q.size(1), S = k.size(1);
  const auto q_range = block_ranges(q_pos, block), k_range = block_ranges(k_pos, block);
  const at::ScalarType dtype = q.scalar_type(), stats = stats_dtype(dtype);  // products; probabilities and dS
  for (int64_t q0 = 0; q0 < T; q0 += block) {
    const int64_t nq = std::min(block, T - q0);
    at::Tensor qb = q.narrow(1, q0, nq), qp = q_pos.narrow(0, q0, nq);
    at::Tensor dob = dout.narrow(1, q0, nq).to(dtype);
    at::Tensor lseb = lse.narrow(1, q0, nq).unsqueeze(-1);
    at::Tensor deltab = delta.narrow(1, q0, nq);
    for (int64_t k0 = 0; k0 < S; k0 += block) {
      const int64_t nk = std::min(block, S - k0);
      const auto& qr = q_range[q0 / block];
      const auto& kr = k_range[k0 / block];
      if (kr.first > qr.second) continue;  // invisible
      at::Tensor kp = k_pos.narrow(0, k0, nk);
      at::Tensor kb = k.narrow(1, k0, nk), vb = v.narrow(1, k0, nk);
      at::Tensor p = at::bmm(qb, kb.transpose(1, 2)).to(stats);
      if (kr.second > qr.first) mask_block(p, qp, kp);
      p.sub_(lseb).exp_();                                         // probabilities (N, nq, nk)
      dv.narrow(1, k0, nk).add_(at::bmm(p.transpose(1, 2).to(dtype), dob));
      at::Tensor ds = at::bmm(dob, vb.transpose(1, 2)).to(stats);  // dP
      ds.sub_(deltab).mul_(p);                                          // dS = P * (dP - delta)
      const at::Tensor dsc = ds.to(dtype);
      dq.narrow(1, q0, nq).add_(at::bmm(dsc, kb));
      dk.narrow(1, k0, nk).add_(at::bmm(dsc.transpose(1, 2), qb));
    }
  }
}

at::Tensor expand_kv(const at::Tensor& kv, int64_t heads) {
  const int64_t groups = heads / kv.size(1);
  return groups == 1 ? kv : kv.repeat_interleave(groups, /*dim=*/1);
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block) {
  return CausalAttention::apply(q, expand_kv(k, q.size(1)), expand_kv(v, q.size(1)), block);
}

}  // namespace kolos::nn
