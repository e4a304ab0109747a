// `kolos bench io` end to end: a JSON last line with both bandwidths, no file left behind; bad options are bad input.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "kolos/memory/bench_io.h"
#include "tests/support.h"

namespace kolos {
namespace {

TEST(AioBench, CliPrintsJsonAndCleansUp) {
  test::TempDir dir("bench-io");
  auto r = test::run_kolos({"bench", "io", "--path", dir.path(), "--size", "64MiB", "--block", "4MiB", "--depth", "4",
                            "--backend", "threads"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string line = test::last_json_line(r.output);
  ASSERT_FALSE(line.empty()) << r.output;
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["bench"], "io");
  EXPECT_EQ(j["backend"], "threads");
  EXPECT_EQ(j["bytes"], 64 << 20);
  EXPECT_EQ(j["block"], 4 << 20);
  EXPECT_EQ(j["depth"], 4);
  EXPECT_GT(j["write_gbps"].get<double>(), 0.0);
  EXPECT_GT(j["read_gbps"].get<double>(), 0.0);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(AioBench, BadOptionsAreBadInput) {  // in process: a CLI start costs seconds on a loaded machine
  test::TempDir dir("bench-io");
  memory::IoBenchOptions options;
  options.path = dir.path();
  options.bytes = 1 << 20;
  options.block = 1000;
  EXPECT_THROW(memory::run_io_bench(options), InputError);
  options.block = 4096;
  options.depth = 0;
  EXPECT_THROW(memory::run_io_bench(options), InputError);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace kolos
