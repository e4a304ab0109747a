#include "kolos/memory/bench_io.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kolos/core/cli.h"
#include "kolos/core/error.h"
#include "kolos/core/timer.h"
#include "kolos/core/units.h"
#include "kolos/memory/swap_space.h"

namespace kolos::memory {

IoBenchResult run_io_bench(const IoBenchOptions& options) {
  KOLOS_CHECK(options.block > 0 && is_aligned(options.block),
              "--block: expected a positive multiple of {} bytes, got {}", kIoAlignment, options.block);
  KOLOS_CHECK(options.bytes > 0, "--size: expected a positive size, got {}", options.bytes);
  KOLOS_CHECK(options.depth >= 1, "--depth: expected at least 1, got {}", options.depth);
  const int64_t blocks = (options.bytes + options.block - 1) / options.block;
  const int64_t bytes = blocks * options.block;

  SwapSpace::Options so;
  so.grow_step = bytes;
  SwapSpace space(options.path, so);
  const SwapExtent extent = space.allocate(bytes);  // fallocate'd up front, as the tier does, so not timed
  AioOptions ao;
  ao.backend = options.backend;
  ao.queue_depth = options.depth;
  ao.threads = options.depth;  // the thread pool needs one thread per request in flight to keep `depth` going
  AioEngine engine(ao);

  // One buffer per request in flight, of random bytes (no device can compress or skip them).
  std::vector<AlignedBuffer> buffers;
  std::mt19937_64 rng(0x6b6f6c6f73);
  for (int i = 0; i < options.depth && i < blocks; ++i) {
    buffers.emplace_back(options.block);
    auto* words = reinterpret_cast<uint64_t*>(buffers.back().data());
    for (int64_t w = 0; w < options.block / 8; ++w) words[w] = rng();
  }

  // Sequential pass keeping `depth` requests in flight: block i reuses the buffer of block i - depth.
  auto pass = [&](bool is_write) {
    std::vector<AioTicket> tickets(blocks);
    Timer timer;
    for (int64_t i = 0; i < blocks; ++i) {
      if (i >= options.depth) engine.wait(tickets[i - options.depth]);
      char* buffer = buffers[i % buffers.size()].data();
      const int64_t offset = extent.offset + i * options.block;
      tickets[i] = is_write ? engine.write(space.file(), offset, buffer, options.block)
                            : engine.read(space.file(), offset, buffer, options.block);
    }
    engine.wait_all();
    if (is_write) space.file().sync();
    return timer.seconds();
  };

  IoBenchResult r;
  r.backend = engine.backend();
  r.direct = space.file().direct();
  r.file = space.path();
  r.bytes = bytes;
  r.write_s = pass(true);
  r.read_s = pass(false);
  r.write_gbps = bytes / r.write_s / 1e9;
  r.read_gbps = bytes / r.read_s / 1e9;
  space.free(extent);
  return r;
}

int bench_io_main(int argc, char** argv) {
  CLI::App app{"Sequential O_DIRECT write, then read, bandwidth of a disk through the NVMe tier's IO layer (a swap "
               "file under --path, --depth requests of --block bytes in flight). Prints a summary, then one JSON "
               "line: {\"bench\":\"io\", \"backend\", \"write_gbps\", \"read_gbps\", \"bytes\", \"block\", "
               "\"depth\", ...}.",
               "bench io"};
  std::string path = std::filesystem::temp_directory_path().string();
  std::string size_text = "1GiB", block_text = "8MiB", backend_text = "auto";
  int depth = 8;
  app.add_option("--path", path, "directory to test (a file is created there and removed)")->capture_default_str();
  app.add_option("--size", size_text, "bytes written then read, with units (512MiB, 1GiB)")->capture_default_str();
  app.add_option("--block", block_text, "bytes per request, a multiple of 4KiB")->capture_default_str();
  app.add_option("--depth", depth, "requests in flight")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--backend", backend_text,
                 "auto | uring | threads (auto: $KOLOS_AIO if set, else io_uring, else threads)")
      ->capture_default_str();
  if (!parse_args(app, argc, argv)) return 0;
  IoBenchOptions options;
  options.path = path;
  options.bytes = parse_bytes(size_text, "--size");
  options.block = parse_bytes(block_text, "--block");
  options.depth = depth;
  options.backend = parse_backend(backend_text, "--backend");

  const IoBenchResult r = run_io_bench(options);
  std::printf("kolos bench io: %s in %s requests, %d in flight, %s backend%s\n", format_bytes(r.bytes).c_str(),
              format_bytes(options.block).c_str(), depth, backend_name(r.backend),
              r.direct ? ", O_DIRECT" : ", buffered (the filesystem refused O_DIRECT)");
  std::printf("  file   %s (removed)\n", r.file.c_str());
  std::printf("  write  %8.3f GB/s  (%.3f s, with fdatasync)\n", r.write_gbps, r.write_s);
  std::printf("  read   %8.3f GB/s  (%.3f s)\n", r.read_gbps, r.read_s);
  nlohmann::ordered_json out = {{"bench", "io"},
                                {"backend", backend_name(r.backend)},
                                {"write_gbps", std::round(r.write_gbps * 1000) / 1000},
                                {"read_gbps", std::round(r.read_gbps * 1000) / 1000},
                                {"bytes", r.bytes},
                                {"block", options.block},
                                {"depth", depth},
                                {"direct", r.direct},
                                {"path", path},
                                {"write_s", r.write_s},
                                {"read_s", r.read_s}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace kolos::memory
