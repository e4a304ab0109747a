// Counting of the CPU allocator's live bytes: kolos's own measure of the tensor memory a computation holds (the
// pipeline's activation bytes per stage), independent of RSS, which also sees the allocator's caching, the
// binary and shared-memory pages.
//
// count_cpu_allocations() replaces LibTorch's CPU allocator by one that allocates the same way (c10::alloc_cpu,
// 64-byte aligned) with a small header recording the size, and keeps a running total of the bytes allocated and
// not yet freed. Tensors allocated before the call are freed by their own allocator and never counted. Idempotent;
// process-wide; thread-safe.
#pragma once

#include <cstdint>

namespace kolos {

void count_cpu_allocations();
// Bytes allocated through the counting allocator and not yet freed; 0 before count_cpu_allocations().
int64_t cpu_live_bytes();

}  // namespace kolos
