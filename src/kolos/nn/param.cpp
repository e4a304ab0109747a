#include "kolos/nn/param.h"

#include <algorithm>

#include <ATen/CPUGeneratorImpl.h>

#include "kolos/core/error.h"

namespace kolos::nn {

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// 1D: the slices along spec.tp_dim.
std::vector<int64_t> local_shape_1d(const ParamSpec& spec, int parts) {
  std::vector<int64_t> local = spec.shape;
  if (spec.tp_dim >= 0 && parts > 1) local[spec.tp_dim] = (local[spec.tp_dim] + parts - 1) / parts;  // padded when uneven
  return local;
}

at::Tensor shard_1d(const at::Tensor& whole, const ParamSpec& spec, int parts, int index) {
  if (spec.tp_dim < 0 || parts == 1) return whole;
  const int64_t d = spec.tp_dim, g = spec.tp_groups, size = whole.size(d);
  if (g == 1) {  // contiguous slices of ceil(size / parts), the last padded with zeros
    const int64_t c = (size + parts - 1) / parts, start = std::min(size, index * c), n = std::min(size, start + c) - start;
    std::vector<int64_t> shape(whole.sizes().begin(), whole.sizes().end());
    shape[d] = c;
    at::Tensor piece = at::zeros(shape, whole.options());
    if (n > 0) piece.narrow(d, 0, n).copy_(whole.narrow(d, start, n));
    return piece;
  }
  KOLOS_ASSERT(size % (g * parts) == 0, "parameter {}: dimension {} of size {} does not split into {} groups of {}",
               spec.name, d, size, g, parts);
  // (..., g, parts, size / (g·parts), ...): keep index `index` of the parts axis.
  std::vector<int64_t> split(whole.sizes().begin(), whole.sizes().end());
  split[d] = size / (g * parts);
  split.insert(split.begin() + d, {g, static_cast<int64_t>(parts)});
  std::vector<int64_t> local(whole.sizes().begin(), whole.sizes().end());
  local[d] = size / parts;
  return whole.reshape(split).select(d + 1, index).reshape(local).contiguous();
}

// `whole_size`: the split dimension's size before the split (the padding is dropped).
at::Tensor unshard_1d(const std::vector<at::Tensor>& pieces, const ParamSpec& spec, int64_t whole_size) {
  const int parts = static_cast<int>(pieces.size());
  if (spec.tp_dim < 0 || parts == 1) return pieces.at(0);
  const int64_t d = spec.tp_dim, g = spec.tp_groups;
  if (g == 1) return at::cat(pieces, d).narrow(d, 0, whole_size).contiguous();  // the padding dropped
  std::vector<at::Tensor> grouped;  // each piece as (..., g, 1, local / g, ...)
  for (const auto& p : pieces) {
    std::vector<int64_t> split(p.sizes().begin(), p.sizes().end());
    split[d] /= g;
    split.insert(split.begin() + d, {g, 1});
    grouped.push_back(p.reshape(split));
  }
  std::vector<int64_t> shape(pieces[0].sizes().begin(), pieces[0].sizes().end());
  shape[d] = whole_size;
  return at::cat(grouped, d + 1).reshape(shape);
}

// 2D as two 1D splits of q parts: first by the column j (the outputs, grouped), then by the row i (a matrix's
// inputs, ungrouped; or the column's block again, into pieces).
struct GridSplits {
  ParamSpec by_col, by_row;
};
GridSplits grid_splits(const ParamSpec& spec) {
  const int last = static_cast<int>(spec.shape.size()) - 1;
  const bool matrix = spec.shape.size() == 2 && spec.tp_dim >= 0;
  GridSplits s{spec, spec};
  s.by_col.tp_dim = matrix ? 0 : last;
  s.by_col.tp_groups = matrix && spec.tp_dim != 0 ? 1 : spec.tp_groups;
  s.by_row.tp_dim = matrix ? 1 : last;
  s.by_row.tp_groups = 1;
  return s;
}

// 3D as three 1D splits of q parts (TpLayout): by the N axis (the outputs, grouped), by the K axis, then by x.
// `first_is_z`: the N axis is z (K axis y: tp_dim 0); else y. Rank of the coordinates (x, first, second).
struct CubeSplits {
  ParamSpec first, second, third;
  bool first_is_z;
  int rank(int q, int x, int c1, int c2) const { return x * q * q + (first_is_z ? c2 * q + c1 : c1 * q + c2); }
};
CubeSplits cube_splits(const ParamSpec& spec) {
  const GridSplits g = grid_splits(spec);  // by_col: the outputs (grouped); by_row: the inputs, or pieces of them
  return {g.by_col, g.by_row, g.by_row, spec.tp_dim == 0};
}

std::vector<int64_t> local_shape_3d(const ParamSpec& spec, int q) {
  CubeSplits s = cube_splits(spec);
  s.second.shape = local_shape_1d(s.first, q);
  s.third.shape = local_shape_1d(s.second, q);
  return local_shape_1d(s.third, q);
}

at::Tensor shard_3d(const at::Tensor& whole, const ParamSpec& spec, int q, int index) {
  const CubeSplits s = cube_splits(spec);
  const int x = index / (q * q), y = (index / q) % q, z = index % q;
  const int c1 = s.first_is_z ? z : y, c2 = s.first_is_z ? y : z;
  KOLOS_ASSERT(s.first.tp_dim != s.second.tp_dim || whole.size(s.first.tp_dim) % (q * q * q) == 0,
               "parameter {}: dimension {} of size {} does not split into {} pieces", spec.name, s.first.tp_dim,
               whole.size(s.first.tp_dim), q * q * q);
  return shard_1d(shard_1d(shard_1d(whole, s.first, q, c1), s.second, q, c2), s.third, q, x).contiguous();
}

at::Tensor unshard_3d(const std::vector<at::Tensor>& pieces, const ParamSpec& spec, int q) {
  const CubeSplits s = cube_splits(spec);
  std::vector<at::Tensor> blocks;
  for (int c1 = 0; c1 < q; ++c1) {
    std::vector<at::Tensor> halves;
    for (int c2 = 0; c2 < q; ++c2) {
      std::vector<at::Tensor> xs;
      for (int x = 0; x < q; ++x) xs.push_back(pieces[s.rank(q, x, c1, c2)]);
      halves.push_back(unshard_1d(xs, s.third, xs[0].size(s.third.tp_dim) * q));
    }
    blocks.push_back(unshard_1d(halves, s.second, halves[0].size(s.second.tp_dim) * q));
  }
  return unshard_1d(blocks, s.first, spec.shape[s.first.tp_dim]);
}

}  // namespace

int TpLayout::q() const {
  KOLOS_ASSERT(grid && depth >= 1 && parts % depth == 0, "TpLayout::q of {} ranks (grid {}, depth {})", parts, grid,
               depth);
  const int layer = parts / depth, power = cube ? 3 : 2;
  auto raise = [power](int q) { return power == 3 ? q * q * q : q * q; };
  int q = 1;
  while (raise(q) < layer) ++q;
  KOLOS_ASSERT(raise(q) == layer, "TpLayout::q of {} ranks (grid {}, depth {}, cube {})", parts, grid, depth, cube);
  return q;
}

bool split_over_tp(const ParamSpec& spec, const TpLayout& layout) {
  return layout.parts > 1 && (layout.grid || spec.tp_dim >= 0);
}

std::vector<int64_t> ParamSpec::local_shape(const TpLayout& layout) const {
  if (!layout.grid || layout.parts == 1) return local_shape_1d(*this, layout.parts);
  if (layout.cube) return local_shape_3d(*this, layout.q());
  GridSplits s = grid_splits(*this);
  s.by_row.shape = local_shape_1d(s.by_col, layout.q());
  return local_shape_1d(s.by_row, layout.q());
}

at::Tensor shard_param(const at::Tensor& whole, const ParamSpec& spec, const TpLayout& layout, int index) {
  if (!layout.grid || layout.parts == 1) return shard_1d(whole, spec, layout.parts, index);
  if (layout.cube) return shard_3d(whole, spec, layout.q(), index);
  const int q = layout.q();
  const GridSplits s = grid_splits(spec);
  KOLOS_ASSERT(s.by_row.tp_dim != s.by_col.tp_dim || whole.size(s.by_col.tp_dim) % (q * q) == 0,
               "parameter {}: dimension {} of size {} does not split into {} pieces", spec.name, s.by_col.tp_dim,
               whole.size(s.by_col.tp_dim), q * q);
  const int in_layer = index % (q * q);  // 2.5D: every depth layer holds the same pieces
  return shard_1d(shard_1d(whole, s.by_col, q, in_layer % q), s.by_row, q, in_layer / q).contiguous();
}

at::Tensor unshard_param(const std::vector<at::Tensor>& pieces, const ParamSpec& spec, const TpLayout& layout) {
  if (!layout.grid || layout.parts == 1)
    return unshard_1d(pieces, spec, spec.tp_dim >= 0 ? spec.shape[spec.tp_dim] : 0);
  const int q = layout.q();
  if (layout.cube) {
    KOLOS_ASSERT(static_cast<int>(pieces.size()) == layout.parts, "parameter {}: {} pieces for {} ranks", spec.name,
                 pieces.size(), layout.parts);
    return unshard_3d(pieces, spec, q);
  }
  KOLOS_ASSERT(static_cast<int>(pieces.size()) == layout.parts || static_cast<int>(pieces.size()) == q * q,
               "parameter {}: {} pieces for {} ranks", spec.name, pieces.size(), layout.parts);
  const GridSplits s = grid_splits(spec);
  // Column j's block from its rows' pieces (ranks i·q + j: depth 0's under 2.5D), then the whole from the blocks.
  std::vector<at::Tensor> blocks;
  for (int j = 0; j < q; ++j) {
    std::vector<at::Tensor> rows;
    for (int i = 0; i < q; ++i) rows.push_back(pieces[i * q + j]);
    const int64_t block = rows[0].size(s.by_row.tp_dim) * q;
    blocks.push_back(unshard_1d(rows, s.by_row, block));
  }
  return unshard_1d(blocks, s.by_col, spec.shape[s.by_col.tp_dim]);
}

int64_t count_params(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs) n += s.numel();
  return n;
}

uint64_t derive_seed(int64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  uint64_t z = h ^ (static_cast<uint64_t>(seed) + 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

at::Tensor init_param(const ParamSpec& spec, int64_t seed) {
  at::Tensor t = at::empty(spec.shape, at::kFloat);
  switch (spec.init) {
    case Init::kZeros:
      t.zero_();
      break;
    case Init::kOnes:
      t.fill_(1.0);
      break;
    case Init::kNormal: {
      at::Generator gen = at::detail::createCPUGenerator(derive_seed(seed, spec.name));
      t.normal_(0.0, spec.std, gen);
      break;
    }
  }
  return t;
}

}  // namespace kolos::nn
