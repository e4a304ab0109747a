// `kolos bench io`: the disk's sequential O_DIRECT write and then read bandwidth through the NVMe tier's own IO
// layer (a SwapSpace file under --path, requests of --block bytes through an AioEngine with --depth in flight).
// The write pass ends with fdatasync; the read pass reads back what was written. Bandwidth = bytes ÷ wall time of
// the pass, in GB/s (1e9 bytes). The swap file is removed afterwards.
#pragma once

#include <cstdint>
#include <string>

#include "kolos/memory/aio.h"

namespace kolos::memory {

struct IoBenchOptions {
  std::string path;                       // directory for the test file
  int64_t bytes = int64_t{1} << 30;       // rounded up to a multiple of block
  int64_t block = int64_t{8} << 20;       // bytes per request, a multiple of kIoAlignment
  int depth = 8;                          // requests in flight
  AioBackend backend = AioBackend::kAuto;
};

struct IoBenchResult {
  AioBackend backend = AioBackend::kAuto;  // the one used
  bool direct = true;                      // false when the filesystem refused O_DIRECT (see aio.h)
  std::string file;
  int64_t bytes = 0;
  double write_s = 0, read_s = 0;
  double write_gbps = 0, read_gbps = 0;
};

// Runs both passes. Throws InputError on bad options or a full disk.
IoBenchResult run_io_bench(const IoBenchOptions& options);

int bench_io_main(int argc, char** argv);

}  // namespace kolos::memory
