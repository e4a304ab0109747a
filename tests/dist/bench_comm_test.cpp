// kolos bench comm under kolos run: one row per op and size, bandwidths positive; alone it is bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support.h"

namespace kolos {
namespace {

TEST(BenchComm, TwoRanksReportEveryOpAndSize) {
  auto r = test::run_kolos({"run", "-n", "2", "--", KOLOS_BINARY, "bench", "comm", "--min-size", "1KiB",
                            "--max-size", "64KiB", "--timeout", "30"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string line = test::last_json_line(r.output);
  ASSERT_FALSE(line.empty()) << r.output;
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["world"], 2);
  // Sizes 1 KiB, 4 KiB, 16 KiB, 64 KiB for each of the three ops.
  ASSERT_EQ(j["results"].size(), 12u) << line;
  for (const auto& row : j["results"]) {
    EXPECT_GT(row["busbw_gbps"].get<double>(), 0.0);
    const double factor = row["op"] == "all_reduce" ? 1.0 : 0.5;  // 2(n-1)/n and (n-1)/n at n = 2
    EXPECT_NEAR(row["busbw_gbps"].get<double>(), row["algbw_gbps"].get<double>() * factor,
                1e-9 * row["algbw_gbps"].get<double>());
  }
}

TEST(BenchComm, OneProcessIsBadInput) {
  auto r = test::run_kolos({"bench", "comm"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("kolos run -n 2"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kolos
