#include "kolos/dist/mesh.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "kolos/core/error.h"

namespace kolos::dist {

std::unique_ptr<Mesh> Mesh::create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
                                   MeshShape shape, Comm::Options options) {
  const std::array<int, 4> degrees = {shape.pp, shape.dp, shape.sp, shape.tp};
  for (int a = 0; a < 4; ++a)
    KOLOS_CHECK(degrees[a] >= 1, "parallel.{} must be >= 1, got {}", kAxes[a], degrees[a]);
  const int product = shape.pp * shape.dp * shape.sp * shape.tp;
  KOLOS_CHECK(product == world_size,
              "parallel.pp × dp × sp × tp = {} × {} × {} × {} = {} does not match the world size {}; choose degrees "
              "whose product is {}",
              shape.pp, shape.dp, shape.sp, shape.tp, product, world_size, world_size);
  KOLOS_CHECK(rank >= 0 && rank < world_size, "rank {} is not in [0, {})", rank, world_size);

  std::unique_ptr<Mesh> mesh(new Mesh());
  mesh->rank_ = rank;
  mesh->world_size_ = world_size;
  mesh->shape_ = shape;
  mesh->degrees_ = degrees;
  mesh->coords_ = mesh->coords_of(rank);
  mesh->ledger_ = options.ledger ? options.ledger : std::make_shared<Ledger>();
  options.ledger = mesh->ledger_;
  mesh->store_ = store;
  mesh->options_ = options;

  // Every rank walks the axes in the same order; groups of one axis are disjoint, so they meet concurrently and
  // no rank waits on a group whose members are still busy with another axis.
  for (int a = 0; a < 4; ++a) {
    std::array<int, 4> first = mesh->coords_;
    first[a] = 0;
    const int group = mesh->rank_at(first);  // the group's lowest world rank names it
    auto group_store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("mesh/{}/{}", kAxes[a], group), store);
    mesh->comms_[a] = Comm::create(group_store, mesh->coords_[a], degrees[a], kAxes[a], options);
  }
  if (shape.sp > 1) {
    std::array<int, 4> first = mesh->coords_;
    first[1] = first[2] = 0;
    auto data_store =
        c10::make_intrusive<c10d::PrefixStore>(fmt::format("mesh/dp_sp/{}", mesh->rank_at(first)), store);
    mesh->data_ = Comm::create(data_store, mesh->coords_[1] * shape.sp + mesh->coords_[2], shape.dp * shape.sp,
                               "dp_sp", options);
  }
  auto world_store = c10::make_intrusive<c10d::PrefixStore>("mesh/world", store);
  mesh->world_ = Comm::create(world_store, rank, world_size, "world", options);
  return mesh;
}

int Mesh::axis_index(const std::string& axis) const {
  for (int a = 0; a < 4; ++a)
    if (axis == kAxes[a]) return a;
  throw InputError(fmt::format("unknown mesh axis '{}': expected pp, dp, sp or tp", axis));
}

int Mesh::degree(const std::string& axis) const { return degrees_[axis_index(axis)]; }
int Mesh::coord(const std::string& axis) const { return coords_[axis_index(axis)]; }
Comm& Mesh::comm(const std::string& axis) const { return *comms_[axis_index(axis)]; }

int Mesh::rank_at(const std::array<int, 4>& coords) const {
  int rank = 0;
  for (int a = 0; a < 4; ++a) {
    KOLOS_ASSERT(coords[a] >= 0 && coords[a] < degrees_[a], "coordinate {} on axis {} is out of [0, {})", coords[a],
                 kAxes[a], degrees_[a]);
    rank = rank * degrees_[a] + coords[a];
  }
  return rank;
}

std::array<int, 4> Mesh::coords_of(int world_rank) const {
  KOLOS_ASSERT(world_rank >= 0 && world_rank < world_size_, "rank {} is out of [0, {})", world_rank, world_size_);
  std::array<int, 4> coords{};
  for (int a = 3; a >= 0; --a) {
    coords[a] = world_rank % degrees_[a];
    world_rank /= degrees_[a];
  }
  return coords;
}

}  // namespace kolos::dist
