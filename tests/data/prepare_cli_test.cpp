// `kolos prepare` from the command line: a token directory and a JSON summary on success; exit code 2 with one
// line naming the culprit on a missing input or an unknown tokenizer.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/support.h"

namespace kolos::test {
namespace {

TEST(PrepareCli, Help) {
  const auto r = run_kolos({"prepare", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--tokenizer"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--val-fraction"), std::string::npos) << r.output;
}

TEST(PrepareCli, WritesTokenDirectoryAndSummary) {
  TempDir dir("cli-prepare");
  const std::string text = "It is not down on any map; true places never are.\n";
  std::ofstream(dir / "in.txt") << text;
  const auto r = run_kolos({"prepare", "--input", dir / "in.txt", "--tokenizer", "gpt2", "--out", dir / "tokens"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto summary = nlohmann::json::parse(last_json_line(r.output));
  EXPECT_EQ(summary["tokenizer"], "gpt2");
  EXPECT_EQ(summary["vocab"], 50257);
  EXPECT_EQ(summary["train_bytes"].get<int64_t>() + summary["val_bytes"].get<int64_t>(),
            static_cast<int64_t>(text.size()));
  EXPECT_GT(summary["train_tokens"].get<int64_t>(), 0);
  EXPECT_TRUE(summary.contains("unigram_bpb") && summary.contains("bigram_bpb"));
  for (const char* name : {"meta.json", "train.bin", "val.bin", "encoder.json", "vocab.bpe"})
    EXPECT_TRUE(std::filesystem::exists(dir / "tokens" + "/" + name)) << name;
}

TEST(PrepareCli, MissingInputIsExitTwoNamingIt) {
  TempDir dir("cli-prepare-missing");
  const auto r = run_kolos({"prepare", "--input", dir / "does-not-exist.txt", "--tokenizer", "byte", "--out",
                            dir / "tokens"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(dir / "does-not-exist.txt"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "tokens/meta.json"));
}

TEST(PrepareCli, UnknownTokenizerIsExitTwoNamingIt) {
  TempDir dir("cli-prepare-tok");
  std::ofstream(dir / "in.txt") << "some text\n";
  const auto r = run_kolos({"prepare", "--input", dir / "in.txt", "--tokenizer", "wordpiece", "--out", dir / "tokens"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("wordpiece"), std::string::npos) << r.output;
  const auto no_out = run_kolos({"prepare", "--input", dir / "in.txt", "--tokenizer", "byte"});
  EXPECT_EQ(no_out.exit_code, 2) << no_out.output;
  EXPECT_NE(no_out.output.find("--out"), std::string::npos) << no_out.output;
}

}  // namespace
}  // namespace kolos::test
