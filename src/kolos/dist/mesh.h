// Mesh: the world as a 4-D grid with named axes pp, dp, sp, tp, row-major in that order — tp ranks are
// neighbours (world ranks differing by 1), then sp, dp, and pp spans the farthest:
//   rank = ((pp_i · dp + dp_i) · sp + sp_i) · tp + tp_i
// A rank's group on an axis is the set of ranks sharing its coordinates on every other axis; its rank in that
// group is its coordinate on the axis. Mesh::create builds every group of this rank — one Comm per axis (also for
// degree 1), the axis set dp × sp when sp > 1, and one "world" Comm — collectively at start-up; all Comms share one
// Ledger, each under its axis name.
// No globals: pass the Mesh to whoever needs it.
//
// Thread-safety: as Comm (one thread issues the calls of each Comm).
#pragma once

#include <array>
#include <memory>
#include <string>

#include "kolos/dist/comm.h"

namespace kolos::dist {

// The degree of each axis; their product must equal the world size.
struct MeshShape {
  int pp = 1, dp = 1, sp = 1, tp = 1;
};

class Mesh {
 public:
  static constexpr std::array<const char*, 4> kAxes = {"pp", "dp", "sp", "tp"};

  // Collective over all `world_size` ranks, each with the same `store` and `shape`. Every group gets its own
  // namespace of the store ("mesh/<axis>/<group>/"). `options` (timeout, interface) apply to every Comm; its
  // ledger, if set, is the one shared by the mesh. Throws InputError when the shape does not fit the world.
  static std::unique_ptr<Mesh> create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
                                      MeshShape shape, Comm::Options options);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  const MeshShape& shape() const { return shape_; }
  // `axis` is one of kAxes; InputError otherwise.
  int degree(const std::string& axis) const;
  int coord(const std::string& axis) const;  // this rank's coordinate
  // The world rank at the given coordinates (pp, dp, sp, tp).
  int rank_at(const std::array<int, 4>& coords) const;
  std::array<int, 4> coords_of(int world_rank) const;

  Comm& comm(const std::string& axis) const;  // this rank's group on `axis`
  // The axis set dp × sp (the ranks sharing this rank's pp and tp coordinates, ranked dp_i · sp + sp_i), over which
  // gradients are averaged and ZeRO shards: every such rank trains on different tokens. Ledger axis "dp_sp"; the
  // dp Comm itself when sp = 1.
  Comm& data() const { return data_ ? *data_ : *comms_[1]; }
  Comm& world() const { return *world_; }
  Ledger& ledger() const { return *ledger_; }
  // The store and Comm options the mesh was created with, for sub-groups made later (the 2D grid's rows and
  // columns, parallel::apply) in a namespace of their own.
  const c10::intrusive_ptr<c10d::Store>& store() const { return store_; }
  const Comm::Options& options() const { return options_; }

 private:
  Mesh() = default;
  int axis_index(const std::string& axis) const;

  int rank_ = 0, world_size_ = 1;
  MeshShape shape_;
  std::array<int, 4> degrees_{}, coords_{};
  std::shared_ptr<Ledger> ledger_;
  std::array<std::shared_ptr<Comm>, 4> comms_;
  std::shared_ptr<Comm> data_;  // dp × sp when sp > 1
  std::shared_ptr<Comm> world_;
  c10::intrusive_ptr<c10d::Store> store_;
  Comm::Options options_;
};

}  // namespace kolos::dist
