#include "kolos/nn/head_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/autocast_mode.h>
#include <fmt/ranges.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kolos/core/error.h"

namespace kolos::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dtype of the products: the autocast dtype while CPU autocast is on (bf16 under train.dtype = "bf16") for an
// fp32 input, as autocast would cast it for at::linear; else the input's. The function casts itself, so its
// backward (which runs outside the autocast scope) computes as its forward did.
at::ScalarType product_dtype(const at::Tensor& hidden) {
  const bool cast = at::autocast::is_cpu_enabled() && hidden.scalar_type() == at::kFloat;
  return cast ? at::autocast::get_autocast_cpu_dtype() : hidden.scalar_type();
}

// The dtype of the soft-max and the loss: fp32, or the products' dtype when that is wider (fp64).
at::ScalarType loss_dtype(at::ScalarType products) { return at::promote_types(products, at::kFloat); }

// One chunk's logits h Wᵀ (+ b), (n, V), in the loss dtype (a fresh tensor the caller may overwrite).
at::Tensor chunk_logits(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias, at::ScalarType stats) {
  at::Tensor z = bias.defined() ? at::addmm(bias, h, weight.t()) : at::mm(h, weight.t());
  return z.to(stats);
}

class HeadCrossEntropy : public torch::autograd::Function<HeadCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& targets, int64_t chunk, int64_t ignore_index) {
    const int64_t N = hidden.size(0), V = weight.size(0);
    const at::ScalarType dtype = product_dtype(hidden), stats = loss_dtype(dtype);
    const at::Tensor h = hidden.to(dtype).contiguous(), w = weight.to(dtype).contiguous();
    const at::Tensor b = bias.numel() > 0 ? bias.to(dtype).contiguous() : at::Tensor();
    const at::Tensor valid = targets != ignore_index;
    const at::Tensor out_of_range = valid.logical_and(targets.lt(0).logical_or(targets.ge(V)));
    KOLOS_CHECK(!out_of_range.any().item<bool>(),
                "cross-entropy: target {} is outside the vocabulary [0, {}) (and is not the ignore index {})",
                targets.masked_select(out_of_range)[0].item<int64_t>(), V, ignore_index);
    const at::Tensor safe = targets.masked_fill(valid.logical_not(), 0).contiguous();  // a gatherable index
    // lse[i] = log Σ_v exp z[i, v]; picked[i] = z[i, target[i]].
    at::Tensor lse = at::empty({N}, hidden.options().dtype(stats));
    at::Tensor picked = at::empty({N}, hidden.options().dtype(stats));
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      at::Tensor z = chunk_logits(h.narrow(0, s, n), w, b, stats);
      picked.narrow(0, s, n).copy_(z.gather(1, safe.narrow(0, s, n).unsqueeze(1)).squeeze(1));
      // log-sum-exp in place (at::logsumexp would allocate two more chunk-sized tensors); a row whose maximum is
      // infinite subtracts 0, as at::logsumexp does.
      at::Tensor m = at::amax(z, {1}, /*keepdim=*/true);
      m.masked_fill_(m.abs() == std::numeric_limits<double>::infinity(), 0);
      z.sub_(m).exp_();
      lse.narrow(0, s, n).copy_(z.sum(1).log_().add_(m.squeeze(1)));
    }
    const at::Tensor count = valid.sum().to(stats);
    ctx->save_for_backward({h, w, b, safe, valid, lse, count});
    ctx->saved_data["chunk"] = chunk;
    return (lse - picked).masked_fill_(valid.logical_not(), 0).sum() / count;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &w = saved[1], &b = saved[2], &safe = saved[3], &valid = saved[4],
                     &lse = saved[5], &count = saved[6];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const int64_t N = h.size(0);
    const at::ScalarType dtype = h.scalar_type(), stats = lse.scalar_type();
    const bool need_h = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = b.defined() && ctx->needs_input_grad(2);
    // dL/dz[i] = (softmax(z[i]) − onehot(target[i])) · g / count for counted rows, 0 for ignored ones.
    const at::Tensor row_scale = valid.to(stats) * (grads[0].to(stats) / count);
    // dh in the products' dtype (what a product returns); dW and db accumulate in the loss dtype. Autograd casts
    // each to its input's dtype.
    at::Tensor dh = need_h ? at::empty_like(h) : at::Tensor();
    at::Tensor dw = need_w ? at::zeros_like(w, w.options().dtype(stats)) : at::Tensor();
    at::Tensor db = need_b ? at::zeros_like(b, b.options().dtype(stats)) : at::Tensor();
    for (int64_t s = 0; s < N; s += chunk) {
      const int64_t n = std::min(chunk, N - s);
      const at::Tensor hs = h.narrow(0, s, n);
      at::Tensor z = chunk_logits(hs, w, b, stats);
      z.sub_(lse.narrow(0, s, n).unsqueeze(1)).exp_();  // softmax
      z.scatter_add_(1, safe.narrow(0, s, n).unsqueeze(1), at::full({n, 1}, -1.0, z.options()));
      z.mul_(row_scale.narrow(0, s, n).unsqueeze(1));
      if (need_b) db.add_(z.sum(0));
      const at::Tensor g = z.to(dtype);
      if (need_h) {
        at::Tensor rows = dh.narrow(0, s, n);
        at::mm_out(rows, g, w);
      }
      if (need_w) {
        if (dtype == stats) dw.addmm_(g.t(), hs);
        else dw.add_(at::mm(g.t(), hs));
      }
    }
    return {dh, dw, db, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor head_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& targets, int64_t chunk_tokens, int64_t ignore_index) {
  KOLOS_ASSERT(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
               "head_cross_entropy: hidden {} and weight {} are not (N, C) and (V, C)",
               fmt::join(hidden.sizes(), "x"), fmt::join(weight.sizes(), "x"));
  KOLOS_ASSERT(targets.dim() == 1 && targets.size(0) == hidden.size(0) && targets.scalar_type() == at::kLong,
               "head_cross_entropy: targets {} ({}) for {} tokens (expected int64 (N))",
               fmt::join(targets.sizes(), "x"),
               c10::toString(targets.scalar_type()), hidden.size(0));
  KOLOS_ASSERT(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
               "head_cross_entropy: bias {} for a weight {}", fmt::join(bias.sizes(), "x"),
               fmt::join(weight.sizes(), "x"));
  KOLOS_ASSERT(chunk_tokens >= 1, "head_cross_entropy: chunk_tokens = {}", chunk_tokens);
  // A custom function's tensor arguments must be defined (LibTorch 1.13): no bias travels as an empty one.
  const at::Tensor b = bias.defined() ? bias : at::empty({0}, weight.options());
  return HeadCrossEntropy::apply(hidden, weight, b, targets, chunk_tokens, ignore_index);
}

}  // namespace kolos::nn
