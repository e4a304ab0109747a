#include "kolos/parallel/tensor/tp1d.h"

#include <limits>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#include "kolos/core/error.h"
#include "kolos/parallel/tensor/regions.h"

namespace kolos::parallel::tensor {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x[..., index] along the last dimension, keeping only the index for backward (at::gather keeps x itself: a second
// copy of a rank's logits block alive until backward).
struct PickLast : torch::autograd::Function<PickLast> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& index) {
    ctx->save_for_backward({index});
    ctx->saved_data["columns"] = x.size(-1);
    return x.gather(-1, index.unsqueeze(-1)).squeeze(-1);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor index = ctx->get_saved_variables()[0].unsqueeze(-1);
    std::vector<int64_t> shape(index.sizes().begin(), index.sizes().end());
    shape.back() = ctx->saved_data["columns"].toInt();
    at::Tensor grad = at::zeros(shape, grads[0].options());
    grad.scatter_(-1, index, grads[0].unsqueeze(-1));
    return {grad, at::Tensor()};
  }
};

// Rows of `table` picked by `index` (any shape) → (index's shape, C), zero where `mine` is false. Keeps only the
// index and the mask for backward: at::embedding keeps its weight alive until backward, which under 3D is a table
// block gathered for the look-up (as large as the layer's activations at this model size).
struct PickRows : torch::autograd::Function<PickRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& table, const at::Tensor& index,
                            const at::Tensor& mine) {
    ctx->save_for_backward({index, mine});
    ctx->saved_data["rows"] = table.size(0);
    std::vector<int64_t> shape(index.sizes().begin(), index.sizes().end());
    shape.push_back(table.size(1));
    return table.index_select(0, index.reshape(-1)).mul_(mine.reshape({-1, 1})).view(shape);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t C = grads[0].size(-1);
    const at::Tensor g = grads[0].reshape({-1, C}) * saved[1].reshape({-1, 1});
    at::Tensor grad = at::zeros({ctx->saved_data["rows"].toInt(), C}, g.options());
    grad.index_add_(0, saved[0].reshape(-1), g);
    return {grad, at::Tensor(), at::Tensor()};
  }
};

// copy_to fused with up to three column-parallel products of the same input (q|k|v, gate|up), so backward sums
// their input gradients, launches one all-reduce, and overlaps it with the weight gradients' products. Absent
// products and biases travel as empty tensors (a custom function's inputs must be defined).
struct ColumnLinear : torch::autograd::Function<ColumnLinear> {
  static constexpr int kMax = 3;
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w0, const at::Tensor& b0,
                               const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                               dist::Comm* comm, bool sequence) {
    // Megatron-SP: x is this rank's slice of the sequence (dim 1); the products need it whole.
    at::Tensor whole = x;
    if (sequence) {
      dist::Ledger::PhaseScope phase(comm->ledger(), dist::Phase::kForward);
      whole = all_gather_along(x, 1, *comm).contiguous();
    }
    ctx->save_for_backward({whole, w0, w1, w2});
    save_comm(ctx, *comm);
    ctx->saved_data["sequence"] = sequence;
    const at::Tensor* w[kMax] = {&w0, &w1, &w2};
    const at::Tensor* b[kMax] = {&b0, &b1, &b2};
    variable_list out;
    for (int i = 0; i < kMax && w[i]->numel() > 0; ++i) {
      ctx->saved_data["bias" + std::to_string(i)] = b[i]->numel() > 0;
      out.push_back(b[i]->numel() > 0 ? at::linear(whole, *w[i], *b[i]) : at::linear(whole, *w[i]));
    }
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = saved_comm(ctx);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    dist::Ledger::PhaseScope phase(comm.ledger(), dist::Phase::kBackward);
    // The input gradient: Σ_i go_i W_i over this rank's outputs of every product, partial until all-reduced.
    at::Tensor grad_x;
    for (size_t i = 0; i < grads.size() && saved[1 + i].numel() > 0; ++i) {
      if (!grads[i].defined()) continue;
      at::Tensor gi = at::matmul(grads[i], saved[1 + i]);
      grad_x = grad_x.defined() ? grad_x.add_(gi) : gi;
    }
    if (!grad_x.defined()) grad_x = at::zeros_like(x);
    // Summed over the ranks: whole (all-reduce), or this rank's slice of the sequence (reduce-scatter along dim 1).
    const bool sequence = ctx->saved_data["sequence"].toBool();
    dist::Handle reduce;
    at::Tensor grad_in;
    if (sequence) {
      grad_x = grad_x.movedim(1, 0).contiguous();
      std::vector<int64_t> shape(grad_x.sizes().begin(), grad_x.sizes().end());
      shape[0] /= comm.size();
      grad_in = at::empty(shape, grad_x.options());
      reduce = comm.reduce_scatter_async(grad_x, grad_in);
    } else {
      grad_x = grad_x.contiguous();
      reduce = comm.all_reduce_async(grad_x);
    }
    variable_list out(2 * kMax + 3);
    const at::Tensor x2 = x.reshape({-1, x.size(-1)});
    for (size_t i = 0; i < grads.size() && saved[1 + i].numel() > 0; ++i) {
      if (!grads[i].defined()) continue;
      const at::Tensor go = grads[i].reshape({-1, grads[i].size(-1)});
      out[1 + 2 * i] = go.t().mm(x2);
      if (ctx->saved_data["bias" + std::to_string(i)].toBool()) out[2 + 2 * i] = go.sum(0);
    }
    reduce.wait();
    out[0] = sequence ? grad_in.movedim(0, 1) : grad_x;
    return out;
  }
};

std::vector<at::Tensor> column_many(const at::Tensor& x, const std::vector<const nn::Linear*>& layers,
                                    dist::Comm& comm, bool sequence) {
  KOLOS_ASSERT(!layers.empty() && layers.size() <= ColumnLinear::kMax, "{} column-parallel products of one input",
               layers.size());
  const at::Tensor none = at::empty({0}, x.options());
  at::Tensor w[ColumnLinear::kMax], b[ColumnLinear::kMax];
  for (int i = 0; i < ColumnLinear::kMax; ++i) {
    const bool have = i < static_cast<int>(layers.size());
    w[i] = have ? layers[i]->weight : none;
    b[i] = have && layers[i]->bias.defined() ? layers[i]->bias : none;
  }
  return ColumnLinear::apply(x, w[0], b[0], w[1], b[1], w[2], b[2], &comm, sequence);
}

at::Tensor column(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, dist::Comm& comm,
                  bool sequence) {
  nn::Linear l{weight, bias, {}};
  return column_many(x, {&l}, comm, sequence)[0];
}

}  // namespace

at::Tensor vocab_cross_entropy(at::Tensor logits, const at::Tensor& targets, int64_t vocab, dist::Comm& comm) {
  const int64_t part = logits.size(-1), start = comm.rank() * part;
  if (start + part > vocab) {  // padding rows of the table: no token, no probability
    const int64_t real = std::max<int64_t>(0, vocab - start);
    logits = at::cat({logits.narrow(-1, 0, real),
                      at::full_like(logits.narrow(-1, real, part - real), -std::numeric_limits<float>::infinity())},
                     -1);
  }
  at::Tensor max = std::get<0>(logits.detach().max(-1)).contiguous();
  {
    dist::Ledger::PhaseScope phase(comm.ledger(), dist::Phase::kForward);
    comm.all_reduce(max, dist::ReduceOp::kMax);
  }
  at::Tensor shifted = logits - max.unsqueeze(-1);
  at::Tensor sum_exp = reduce_from(shifted.exp().sum(-1), comm);
  at::Tensor local = targets - start;
  at::Tensor mine = (local >= 0).logical_and(local < part);
  at::Tensor picked = PickLast::apply(shifted, local.clamp(0, part - 1)) * mine;
  picked = reduce_from(picked, comm);
  return (sum_exp.log() - picked).mean();
}

at::Tensor vocab_rows(const at::Tensor& weight, const at::Tensor& ids, int64_t start) {
  const int64_t part = weight.size(0);
  at::Tensor local = ids - start;
  at::Tensor mine = (local >= 0).logical_and(local < part);
  return PickRows::apply(weight, local.clamp(0, part - 1), mine);
}

nn::Sharding tensor_parallel_1d(dist::Comm& tp, int64_t vocab, bool sequence_parallel) {
  nn::Sharding s;
  s.parts = tp.size();
  if (s.parts == 1) return s;
  dist::Comm* comm = &tp;
  const bool sp = sequence_parallel;
  if (sp) s.enter = [comm](const at::Tensor& x) { return split(x, 1, *comm); };
  s.column = [comm, sp](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return column(x, w, b, *comm, sp);
  };
  s.column_many = [comm, sp](const at::Tensor& x, const std::vector<const nn::Linear*>& layers) {
    return column_many(x, layers, *comm, sp);
  };
  s.row = [comm, sp](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    at::Tensor partial = at::linear(x, w);
    at::Tensor y = sp ? scatter(partial, 1, *comm) : reduce_from(partial, *comm);
    return b.defined() ? y + b : y;
  };
  s.embedding = [comm](const at::Tensor& w, const at::Tensor& ids) {
    return reduce_from(vocab_rows(w, ids, comm->rank() * w.size(0)), *comm);
  };
  s.head = [comm, sp](const at::Tensor& x, const at::Tensor& w) { return column(x, w, at::Tensor(), *comm, sp); };
  s.cross_entropy = [comm, vocab](const at::Tensor& logits, const at::Tensor& targets) {
    return vocab_cross_entropy(logits, targets, vocab, *comm);
  };
  return s;
}

}  // namespace kolos::parallel::tensor
