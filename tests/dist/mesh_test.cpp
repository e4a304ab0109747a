// Mesh: coordinates follow the row-major pp, dp, sp, tp order, and each axis's group holds exactly the ranks that
// share the other coordinates — checked by all-reducing world ranks and comparing with the sum over the ranks the
// formula puts in the group. Ranks are threads over one c10d::HashStore.
#include "kolos/dist/mesh.h"

#include <gtest/gtest.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <functional>
#include <thread>
#include <vector>

#include "kolos/core/error.h"

namespace kolos::dist {
namespace {

using namespace std::chrono_literals;

void run_mesh(int world, MeshShape shape, const std::function<void(Mesh&)>& body) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::unique_ptr<Mesh>> meshes(world);
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        Comm::Options options;
        options.timeout = 20s;
        options.hostname = "127.0.0.1";
        meshes[r] = Mesh::create(store, r, world, shape, options);
        body(*meshes[r]);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  meshes.clear();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Row-major rank of (pp, dp, sp, tp), written out independently of Mesh.
int row_major(const std::array<int, 4>& c, const std::array<int, 4>& d) {
  return ((c[0] * d[1] + c[1]) * d[2] + c[2]) * d[3] + c[3];
}

TEST(MeshTest, GroupsAreTheRanksSharingOtherCoordinates) {
  const MeshShape shape{2, 2, 1, 2};  // pp, dp, sp, tp: 8 ranks
  const std::array<int, 4> d = {2, 2, 1, 2};
  run_mesh(8, shape, [&](Mesh& mesh) {
    const int r = mesh.rank();
    // Coordinates: tp varies fastest.
    const std::array<int, 4> c = {r / 4, (r / 2) % 2, 0, r % 2};
    EXPECT_EQ(mesh.coord("pp"), c[0]);
    EXPECT_EQ(mesh.coord("dp"), c[1]);
    EXPECT_EQ(mesh.coord("sp"), c[2]);
    EXPECT_EQ(mesh.coord("tp"), c[3]);
    EXPECT_EQ(mesh.rank_at(c), r);
    for (int a = 0; a < 4; ++a) {
      Comm& comm = mesh.comm(Mesh::kAxes[a]);
      EXPECT_EQ(comm.size(), d[a]);
      EXPECT_EQ(comm.rank(), c[a]);
      // Sum of the world ranks of my group, by the formula.
      int64_t want = 0;
      for (int i = 0; i < d[a]; ++i) {
        auto other = c;
        other[a] = i;
        want += row_major(other, d);
      }
      at::Tensor x = at::full({1}, int64_t(r));
      comm.all_reduce(x);
      EXPECT_EQ(x.item<int64_t>(), want) << "axis " << Mesh::kAxes[a] << " rank " << r;
    }
    at::Tensor w = at::full({1}, int64_t(r));
    mesh.world().all_reduce(w);
    EXPECT_EQ(w.item<int64_t>(), 28);  // 0 + 1 + ... + 7
    // One shared ledger, one entry per axis name.
    const auto j = mesh.ledger().to_json();
    for (const char* axis : {"pp", "dp", "sp", "tp", "world"})
      EXPECT_EQ(j.at(axis).at("all_reduce").at("other").at("calls"), 1) << axis;
    EXPECT_EQ(j.at("sp").at("all_reduce").at("other").at("bytes"), 0);  // a group of one moves nothing
  });
}

// The axis set dp × sp: the ranks sharing pp and tp, ranked dp_i · sp + sp_i; with sp = 1 the dp group itself.
TEST(MeshTest, DataGroupIsDpTimesSp) {
  const std::array<int, 4> d = {1, 2, 2, 2};  // 8 ranks
  run_mesh(8, MeshShape{1, 2, 2, 2}, [&](Mesh& mesh) {
    const int r = mesh.rank();
    const auto c = mesh.coords_of(r);
    Comm& data = mesh.data();
    EXPECT_EQ(data.size(), 4);
    EXPECT_EQ(data.rank(), c[1] * 2 + c[2]);
    int64_t want = 0;
    for (int dp = 0; dp < 2; ++dp)
      for (int sp = 0; sp < 2; ++sp) want += row_major({c[0], dp, sp, c[3]}, d);
    at::Tensor x = at::full({1}, int64_t(r));
    data.all_reduce(x);
    EXPECT_EQ(x.item<int64_t>(), want) << "rank " << r;
    EXPECT_EQ(mesh.ledger().calls("dp_sp", "all_reduce", Phase::kOther), 1);
  });
  run_mesh(2, MeshShape{1, 2, 1, 1}, [&](Mesh& mesh) { EXPECT_EQ(&mesh.data(), &mesh.comm("dp")); });
}

TEST(MeshTest, ShapeMustMatchWorldSize) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  Comm::Options options;
  options.timeout = 1s;
  try {
    Mesh::create(store, 0, 8, MeshShape{1, 2, 1, 2}, options);
    FAIL() << "a 1×2×1×2 mesh was accepted for 8 ranks";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the world size 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Mesh::create(store, 0, 1, MeshShape{1, 0, 1, 1}, options), InputError);
}

}  // namespace
}  // namespace kolos::dist
