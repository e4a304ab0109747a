#include "kolos/parallel/tensor/regions.h"

#include <cstdint>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#include "kolos/core/error.h"

namespace kolos::parallel::tensor {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using dist::Ledger;
using dist::Phase;

int64_t wrap_dim(const at::Tensor& x, int64_t dim) {
  const int64_t n = x.dim();
  KOLOS_ASSERT(dim >= -n && dim < n, "dimension {} out of range for a tensor of {} dimensions", dim, n);
  return dim < 0 ? dim + n : dim;
}

struct CopyTo : torch::autograd::Function<CopyTo> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, dist::Comm* comm) {
    save_comm(ctx, *comm);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = saved_comm(ctx);
    Ledger::PhaseScope phase(comm.ledger(), Phase::kBackward);
    at::Tensor g = grads[0].contiguous();
    if (g.data_ptr() == grads[0].data_ptr()) g = g.clone();  // the incoming gradient may be shared
    comm.all_reduce(g);
    return {g, at::Tensor()};
  }
};

struct ReduceFrom : torch::autograd::Function<ReduceFrom> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, dist::Comm* comm) {
    Ledger::PhaseScope phase(comm->ledger(), Phase::kForward);
    at::Tensor y = x.contiguous().clone();
    comm->all_reduce(y);
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return {grads[0], at::Tensor()}; }
};

// Whole along `dim` → this rank's slice: kept as is (split) or summed over the ranks first (scatter). Backward
// all-gathers.
struct ToSlices : torch::autograd::Function<ToSlices> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, bool sum, dist::Comm* comm) {
    save_comm(ctx, *comm);
    ctx->saved_data["dim"] = dim;
    if (!sum) return slice_along(x, dim, *comm);
    Ledger::PhaseScope phase(comm->ledger(), Phase::kForward);
    return reduce_scatter_along(x, dim, *comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = saved_comm(ctx);
    Ledger::PhaseScope phase(comm.ledger(), Phase::kBackward);
    return {all_gather_along(grads[0], ctx->saved_data["dim"].toInt(), comm), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Slices along `dim` → whole, by all-gather. Backward keeps this rank's slice of the gradient (gather: the
// consumers are replicated, every rank holds the same gradient) or reduce-scatters it (gather_rs: every rank's
// consumer contributed a part).
struct FromSlices : torch::autograd::Function<FromSlices> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, bool sum, dist::Comm* comm) {
    save_comm(ctx, *comm);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["sum"] = sum;
    Ledger::PhaseScope phase(comm->ledger(), Phase::kForward);
    return all_gather_along(x, dim, *comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = saved_comm(ctx);
    const int64_t dim = ctx->saved_data["dim"].toInt();
    Ledger::PhaseScope phase(comm.ledger(), Phase::kBackward);
    at::Tensor g = ctx->saved_data["sum"].toBool() ? reduce_scatter_along(grads[0], dim, comm)
                                                   : slice_along(grads[0], dim, comm);
    return {g, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct AllToAll : torch::autograd::Function<AllToAll> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim,
                            dist::Comm* comm) {
    save_comm(ctx, *comm);
    ctx->saved_data["scatter_dim"] = scatter_dim;
    ctx->saved_data["gather_dim"] = gather_dim;
    Ledger::PhaseScope phase(comm->ledger(), Phase::kForward);
    return all_to_all_along(x, scatter_dim, gather_dim, *comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& comm = saved_comm(ctx);
    Ledger::PhaseScope phase(comm.ledger(), Phase::kBackward);
    return {all_to_all_along(grads[0], ctx->saved_data["gather_dim"].toInt(), ctx->saved_data["scatter_dim"].toInt(),
                             comm),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor slice_along(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  dim = wrap_dim(x, dim);
  const int64_t n = comm.size(), size = x.size(dim);
  KOLOS_ASSERT(size % n == 0, "cannot split dimension {} of size {} over {} ranks", dim, size, n);
  return x.narrow(dim, comm.rank() * (size / n), size / n).contiguous();
}

at::Tensor all_gather_along(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  dim = wrap_dim(x, dim);
  const int64_t n = comm.size();
  if (n == 1) return x;
  at::Tensor in = x.movedim(dim, 0).contiguous();
  std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
  shape[0] *= n;
  at::Tensor out = at::empty(shape, in.options());
  comm.all_gather(in, out);
  return out.movedim(0, dim);
}

at::Tensor reduce_scatter_along(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  dim = wrap_dim(x, dim);
  const int64_t n = comm.size();
  if (n == 1) return x;
  KOLOS_ASSERT(x.size(dim) % n == 0, "cannot reduce-scatter dimension {} of size {} over {} ranks", dim, x.size(dim),
               n);
  at::Tensor in = x.movedim(dim, 0).contiguous();
  std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
  shape[0] /= n;
  at::Tensor out = at::empty(shape, in.options());
  comm.reduce_scatter(in, out);
  return out.movedim(0, dim);
}

at::Tensor all_to_all_along(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, dist::Comm& comm) {
  scatter_dim = wrap_dim(x, scatter_dim);
  gather_dim = wrap_dim(x, gather_dim);
  const int64_t n = comm.size();
  if (n == 1) return x;
  KOLOS_ASSERT(x.size(scatter_dim) % n == 0, "cannot scatter dimension {} of size {} over {} ranks", scatter_dim,
               x.size(scatter_dim), n);
  at::Tensor in = x.movedim(scatter_dim, 0).contiguous();  // slice j (rows of dim 0) goes to rank j
  at::Tensor out = at::empty_like(in);
  comm.all_to_all(in, out);
  // out = n pieces from the ranks, each x-shaped with scatter_dim cut to 1/n and moved first.
  std::vector<int64_t> shape{n, in.size(0) / n};
  shape.insert(shape.end(), in.sizes().begin() + 1, in.sizes().end());
  at::Tensor pieces = out.view(shape).movedim(1, scatter_dim + 1);  // (n, x's dims with scatter_dim cut)
  // Concatenate the pieces along gather_dim in rank order: n just before gather_dim, then merged with it.
  at::Tensor y = pieces.movedim(0, gather_dim);
  std::vector<int64_t> merged(y.sizes().begin(), y.sizes().end());
  merged[gather_dim] *= merged[gather_dim + 1];
  merged.erase(merged.begin() + gather_dim + 1);
  return y.reshape(merged);
}

at::Tensor copy_to(const at::Tensor& x, dist::Comm& comm) {
  return comm.size() == 1 ? x : CopyTo::apply(x, &comm);
}
at::Tensor reduce_from(const at::Tensor& x, dist::Comm& comm) {
  return comm.size() == 1 ? x : ReduceFrom::apply(x, &comm);
}
at::Tensor split(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  return comm.size() == 1 ? x : ToSlices::apply(x, dim, false, &comm);
}
at::Tensor scatter(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  return comm.size() == 1 ? x : ToSlices::apply(x, dim, true, &comm);
}
at::Tensor gather(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  return comm.size() == 1 ? x : FromSlices::apply(x, dim, false, &comm);
}
at::Tensor gather_rs(const at::Tensor& x, int64_t dim, dist::Comm& comm) {
  return comm.size() == 1 ? x : FromSlices::apply(x, dim, true, &comm);
}
at::Tensor all_to_all(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, dist::Comm& comm) {
  return comm.size() == 1 ? x : AllToAll::apply(x, scatter_dim, gather_dim, &comm);
}

}  // namespace kolos::parallel::tensor
