#include "kolos/core/alloc_counter.h"

#include <atomic>
#include <mutex>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

namespace kolos {

namespace {

std::atomic<int64_t> g_live{0};
constexpr size_t kHeader = 64;  // keeps alloc_cpu's 64-byte alignment for the data after it

void counting_free(void* data) {
  if (!data) return;
  char* base = static_cast<char*>(data) - kHeader;
  g_live.fetch_sub(static_cast<int64_t>(*reinterpret_cast<size_t*>(base)), std::memory_order_relaxed);
  c10::free_cpu(base);
}

class CountingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    char* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<size_t*>(base) = n;
    g_live.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
    void* data = base + kHeader;
    return {data, data, &counting_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counting_free; }
};

}  // namespace

void count_cpu_allocations() {
  static std::once_flag once;
  std::call_once(once, [] {
    static CountingAllocator allocator;  // never destroyed: tensors may outlive any scope
    c10::SetCPUAllocator(&allocator, /*priority=*/100);
  });
}

int64_t cpu_live_bytes() { return g_live.load(std::memory_order_relaxed); }

}  // namespace kolos
