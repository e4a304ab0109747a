// Recomputation (activation checkpointing): run a function of one tensor without keeping its intermediate
// activations, and run it again in backward to get its gradients.
//
//   y = recompute(fn, x)
//
// Forward runs fn(x) with gradients off, so autograd keeps nothing of fn's inside: only x (shared, not copied) and
// the state of the default CPU generator before the call. Backward sets that generator state again (dropout draws
// the same masks, so y and every gradient match a plain fn(x) bit for bit), runs fn on x with gradients on, and
// back-propagates y's gradient through that graph: the parameters fn uses receive their gradients in their .grad
// through their own AccumulateGrad nodes (post-hooks on them fire once per backward, as without recomputation),
// and x receives its gradient through y's graph edge. The generator state the backward found is put back
// afterwards, so recomputation draws nothing from the generator as seen from outside. CPU autocast (mixed
// precision) is replayed too: the recomputation runs under the forward's autocast state, without the autocast weight
// cache.
//
// Contract: fn must compute the same thing when called again (same tensors, same collectives in the same order on
// every rank — tensor-parallel regions inside fn run again in backward, and count again in the ledger); the only
// randomness it may use is the default CPU generator. A parameter used by several recomputed calls accumulates its
// gradient (and runs its AccumulateGrad hooks) once per call; the models use each block's parameters in that block
// only. x must not be modified in place between forward and backward (checked). y requires grad even when x does
// not, so that backward reaches fn's parameters (block 0 after a frozen embedding). Call it with grad mode on (with
// grad mode off, call fn itself); backward with create_graph is not supported.
#pragma once

#include <functional>
#include <vector>

#include <ATen/ATen.h>

namespace kolos::nn {

using TensorFn = std::function<at::Tensor(const at::Tensor&)>;

// y = fn(x), recomputed in backward. fn is kept (by value) until the backward has run or the graph is freed.
at::Tensor recompute(TensorFn fn, const at::Tensor& x);

// y = fn(inputs), recomputed in backward, each input getting its gradient through an edge of y's graph node. Pass a
// parameter that the rest of the graph uses too (a tied embedding under the recomputed head) as an input rather
// than using it inside fn: the outer backward then sums both parts of its gradient before its AccumulateGrad node
// runs — once, so a post-hook that takes the first call as "this gradient is final" (data parallelism's bucket
// readiness) sees the whole gradient. The contract above holds for every input.
using TensorsFn = std::function<at::Tensor(const std::vector<at::Tensor>&)>;
at::Tensor recompute_many(TensorsFn fn, const std::vector<at::Tensor>& inputs);

}  // namespace kolos::nn
