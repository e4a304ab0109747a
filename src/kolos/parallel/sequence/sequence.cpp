#include "kolos/parallel/sequence/sequence.h"

#include "kolos/core/error.h"
#include "kolos/parallel/sequence/ring.h"
#include "kolos/parallel/sequence/ulysses.h"

namespace kolos::parallel::sequence {

at::Tensor sequence_positions(const std::string& mode, int64_t total, int parts, int rank) {
  if (mode == "ring") return zigzag_positions(total, parts, rank);
  KOLOS_CHECK(mode == "ulysses", "parallel.sp_mode = \"{}\": expected \"ring\" or \"ulysses\"", mode);
  KOLOS_CHECK(total % parts == 0, "a sequence of {} tokens does not split into sp = {} equal slices", total, parts);
  const int64_t n = total / parts;
  return at::arange(rank * n, (rank + 1) * n, at::kLong);
}

void add_sequence_parallel(nn::Sharding& sharding, dist::Comm& sp, const std::string& mode) {
  const int p = sp.size();
  if (p == 1) return;
  dist::Comm* comm = &sp;
  sharding.positions = [comm, mode, p](int64_t T) { return sequence_positions(mode, T * p, p, comm->rank()); };
  if (mode == "ring") {
    sharding.attention = [comm](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
      return ring_attention(q, k, v, *comm);
    };
  } else {
    KOLOS_CHECK(mode == "ulysses", "parallel.sp_mode = \"{}\": expected \"ring\" or \"ulysses\"", mode);
    sharding.attention = [comm](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
      return ulysses_attention(q, k, v, *comm);
    };
  }
}

}  // namespace kolos::parallel::sequence
