#include "kolos/optim/norm.h"

#include <algorithm>
#include <functional>

#include <ATen/Parallel.h>

#include "kolos/core/error.h"

namespace kolos::optim {

double sum_of_squares(const at::Tensor& x) {
  KOLOS_ASSERT(x.scalar_type() == at::kFloat && x.is_contiguous(), "sum_of_squares needs a contiguous fp32 tensor");
  const float* p = x.data_ptr<float>();
  constexpr int64_t kBlock = 256, kLanes = 8;
  return at::parallel_reduce(
      0, x.numel(), int64_t{1} << 16, 0.0,
      [p](int64_t begin, int64_t end, double init) {
        double total = init;
        for (int64_t i = begin; i < end; i += kBlock) {
          const int64_t stop = std::min(i + kBlock, end);
          float acc[kLanes] = {};
          int64_t j = i;
          for (; j + kLanes <= stop; j += kLanes)
            for (int64_t k = 0; k < kLanes; ++k) acc[k] += p[j + k] * p[j + k];
          for (; j < stop; ++j) acc[0] += p[j] * p[j];
          double block = 0;
          for (float a : acc) block += a;
          total += block;
        }
        return total;
      },
      std::plus<double>());
}

}  // namespace kolos::optim
