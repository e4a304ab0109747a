// Regions: every communication step of tensor and sequence parallelism as a small autograd function whose backward
// is the dual of its forward (DESIGN "Regions"):
//
//   forward                        backward                 used for
//   copy_to      identity          all-reduce (sum)         the input of a column-parallel layer
//   reduce_from  all-reduce (sum)  identity                 the output of a row-parallel layer
//   split        keep own slice    all-gather               entering a sharded region from a replicated one
//   gather       all-gather        keep own slice           leaving it (outputs compared or printed whole)
//   gather_rs    all-gather        reduce-scatter (sum)     Megatron-SP: sequence-split → whole before a layer
//   scatter      reduce-scatter    all-gather               Megatron-SP: partial sums → sequence-split after it
//   all_to_all   all-to-all        all-to-all (reversed)    Ulysses: sequence-split ↔ head-split
//
// "Along dim d" means the tensor is cut into the group's n ranks' equal slices along d, rank r holding slice r
// (d's size must divide by n for split and scatter; gathered sizes are n × the local size). Every op goes through
// the group's Comm, recorded in its ledger in phase "forward" or "backward" (the regions set the phase). With a
// group of one rank every region is the identity.
//
// Ranks of the group must run the same regions in the same order, in forward and in backward (as for any
// collective); the autograd engine runs a graph's backward in a deterministic order on the CPU, so the same
// model on every rank gives the same order.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kolos/dist/comm.h"

namespace kolos::parallel::tensor {

at::Tensor copy_to(const at::Tensor& x, dist::Comm& comm);
at::Tensor reduce_from(const at::Tensor& x, dist::Comm& comm);
at::Tensor split(const at::Tensor& x, int64_t dim, dist::Comm& comm);
at::Tensor gather(const at::Tensor& x, int64_t dim, dist::Comm& comm);
at::Tensor gather_rs(const at::Tensor& x, int64_t dim, dist::Comm& comm);
at::Tensor scatter(const at::Tensor& x, int64_t dim, dist::Comm& comm);
// Cuts x into n slices along `scatter_dim`, sends slice j to rank j, and concatenates the received slices along
// `gather_dim` in rank order. Backward: the same with the two dims swapped.
at::Tensor all_to_all(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, dist::Comm& comm);

// The plain collectives behind the regions (no autograd), along a dimension; usable outside a graph.
at::Tensor all_gather_along(const at::Tensor& x, int64_t dim, dist::Comm& comm);
at::Tensor reduce_scatter_along(const at::Tensor& x, int64_t dim, dist::Comm& comm);
at::Tensor all_to_all_along(const at::Tensor& x, int64_t scatter_dim, int64_t gather_dim, dist::Comm& comm);
// This rank's slice of x along dim (a copy, contiguous).
at::Tensor slice_along(const at::Tensor& x, int64_t dim, dist::Comm& comm);

// For autograd functions that communicate in backward: an object (a Comm, a grid) travels through the context as an
// integer under `key` (AutogradContext keeps IValues only). The object must outlive the graph.
template <typename T>
void save_pointer(torch::autograd::AutogradContext* ctx, const char* key, T& object) {
  ctx->saved_data[key] = static_cast<int64_t>(reinterpret_cast<intptr_t>(&object));
}
template <typename T>
T& saved_pointer(torch::autograd::AutogradContext* ctx, const char* key) {
  return *reinterpret_cast<T*>(static_cast<intptr_t>(ctx->saved_data[key].toInt()));
}
// The Comm under "comm".
inline void save_comm(torch::autograd::AutogradContext* ctx, dist::Comm& comm) { save_pointer(ctx, "comm", comm); }
inline dist::Comm& saved_comm(torch::autograd::AutogradContext* ctx) {
  return saved_pointer<dist::Comm>(ctx, "comm");
}

}  // namespace kolos::parallel::tensor
