// `kolos plot`: a PNG from a hand-written metrics.jsonl, and exit code 2 naming the culprit on bad input.
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "tests/support.h"

namespace kolos::test {
namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const std::string kPngSignature("\x89PNG\r\n\x1a\n", 8);

std::string metrics_lines() {
  std::string text;
  for (int step = 1; step <= 20; ++step) {
    text += "{\"step\":" + std::to_string(step) + ",\"loss\":" + std::to_string(5.0 - 0.1 * step) +
            ",\"lr\":0.001,\"tokens_per_s\":" + std::to_string(1000 + 10 * step);
    if (step % 5 == 0) text += ",\"val_loss\":" + std::to_string(5.2 - 0.1 * step) + ",\"val_bpb\":3.1";
    text += "}\n";
  }
  return text;
}

TEST(PlotCommand, WritesAPngNextToTheMetrics) {
  TempDir run("plot");
  write_text(run / "metrics.jsonl", metrics_lines());
  const RunResult r = run_kolos({"plot", run.path()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string png = read_bytes(run / "loss.png");
  ASSERT_GT(png.size(), 1000u) << r.output;
  EXPECT_EQ(png.substr(0, 8), kPngSignature);
  EXPECT_NE(r.output.find("20 training steps, 4 evaluations"), std::string::npos) << r.output;
}

TEST(PlotCommand, WritesWhereOutSaysAndSkipsAnIncompleteLastLine) {
  TempDir run("plot");
  // A run still being written: the last line is cut off mid-object; a diverged loss is null.
  write_text(run / "metrics.jsonl", metrics_lines() + "{\"step\":21,\"loss\":null}\n{\"step\":22,\"lo");
  const RunResult r = run_kolos({"plot", run.path(), "--out", run / "custom.png"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_bytes(run / "custom.png").substr(0, 8), kPngSignature);
  EXPECT_NE(r.output.find("incomplete last line"), std::string::npos) << r.output;
}

TEST(PlotCommand, BadInputIsExitCode2NamingTheFile) {
  TempDir run("plot");
  const std::string missing = run / "no-such-run";
  RunResult r = run_kolos({"plot", missing});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(missing), std::string::npos) << r.output;

  r = run_kolos({"plot", run.path()});  // a directory without metrics.jsonl
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(run / "metrics.jsonl"), std::string::npos) << r.output;

  write_text(run / "metrics.jsonl", "{\"step\":1,\"loss\":4.0}\n\n{\"step\":2,\"loss\":oops}\n{\"step\":3}\n");
  r = run_kolos({"plot", run.path()});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(run / "metrics.jsonl:3"), std::string::npos) << r.output;

  write_text(run / "metrics.jsonl", "{\"step\":1,\"loss\":\"4.0\"}\n");
  r = run_kolos({"plot", run.path()});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(run / "metrics.jsonl:1"), std::string::npos) << r.output;

  write_text(run / "metrics.jsonl", "");
  r = run_kolos({"plot", run.path()});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no loss values"), std::string::npos) << r.output;

  EXPECT_EQ(run_kolos({"plot"}).exit_code, 2);
}

TEST(PlotCommand, HelpExitsZero) {
  const RunResult r = run_kolos({"plot", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("RUN_DIR"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kolos::test
