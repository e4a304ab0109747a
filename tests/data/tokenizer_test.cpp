// Tokenizers: GPT-2 BPE against the npm gpt-3-encoder package run under node (the reference), round trips of any
// byte string, the byte tokenizer's fixed ids, and a SentencePiece model trained here with spm_train.
#include "kolos/data/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <random>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "tests/support.h"

namespace kolos::data {
namespace {

const std::string kSourceDir = KOLOS_SOURCE_DIR;
const std::string kGpt2Dir = kSourceDir + "/.cache/gpt2";
const std::string kReferenceEncoder = kSourceDir + "/.cache/npm/gpt-3-encoder/package/Encoder.js";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Encodes each string with the npm package under node. Texts are split at non-space -> space boundaries before
// node sees them (always pre-token boundaries) because its encode() is quadratic in the text length.
std::vector<std::vector<int32_t>> reference_encode(const std::vector<std::string>& texts) {
  test::TempDir dir("gpt2-ref");
  write_text(dir / "texts.json", nlohmann::json(texts).dump());
  write_text(dir / "encode.js",
             "const fs = require('fs');\n"
             "const e = require(process.argv[2]);\n"
             "const texts = JSON.parse(fs.readFileSync(process.argv[3], 'utf-8'));\n"
             "const out = texts.map(t => { const ids = [];\n"
             "  for (const part of t.split(/(?<=\\S)(?=\\s)/)) for (const id of e.encode(part)) ids.push(id);\n"
             "  return ids; });\n"
             "fs.writeFileSync(process.argv[4], JSON.stringify(out));\n");
  const auto run = test::run_shell("node " + dir / "encode.js" + " " + kReferenceEncoder + " " + dir / "texts.json" +
                                   " " + dir / "ids.json");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  return nlohmann::json::parse(read_text(dir / "ids.json")).get<std::vector<std::vector<int32_t>>>();
}

// Loaded once: the tests share it, as threads of a process would.
const Tokenizer& gpt2() {
  static const std::unique_ptr<Tokenizer> tokenizer = make_gpt2_tokenizer(kGpt2Dir);
  return *tokenizer;
}

const std::vector<std::string> kFixedTexts = {
    "Hello world",
    "",
    " ",
    "Hello, world!",
    "I'm here; you're there. We've, they'll, she'd, it's, don't",
    "'s 't 're 've 'm 'll 'd ''s '",
    "CAPS'S AND 'QUOTES' O'Neil",
    "The year 1851 had 365 days; pi is 3.14159 and 12345678901234567890",
    "a  b   c    d",
    "trailing spaces   ",
    "\n\n\nnew\n\nlines\n",
    "tabs\tand\t\tmore\t",
    "  leading",
    "\r\nwindows\r\nline ends\r\n",
    "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xc3\x85ngstr\xc3\xb6m \xc3\x9cn\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9 \xc3\x9f",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88\xe3\x80\x81"
    "\xe4\xb8\xad\xe6\x96\x87\xe3\x80\x82",
    "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xed\x85\x8d\xec\x8a\xa4\xed\x8a\xb8",
    "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd\xf0\x9f\x8e\x89 family "
    "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
    "mixed: abc123def \xd9\xa3\xd9\xa4\xd9\xa5 \xc2\xbd \xe2\x85\xab x\xc2\xb2",
    "nbsp\xc2\xa0here and\xe3\x80\x80ideographic space",
    "combining e\xcc\x81 and a\xcc\x88",
    "zero\xe2\x80\x8bwidth, bom\xef\xbb\xbf, line\xe2\x80\xa8sep, nel\xc2\x85",
    "<|endoftext|>",
    "C++ std::vector<int>{1,2,3}; $$$ %%% ^^^ &&& ...",
    "\xef\xac\x81 ligature",
    "Ishmael. Some years ago\xe2\x80\x94never mind how long precisely\xe2\x80\x94having little or no money",
    "   \n   \n",
};

TEST(Gpt2Tokenizer, HelloWorldMatchesTheDocumentedIds) {
  EXPECT_EQ(gpt2().encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eot_id(), 50256);
  EXPECT_EQ(gpt2().decode({50256}), "<|endoftext|>");
}

TEST(Gpt2Tokenizer, MatchesNodeReferenceOnFixedTexts) {
  const auto expected = reference_encode(kFixedTexts);
  ASSERT_EQ(expected.size(), kFixedTexts.size());
  const Tokenizer& tokenizer = gpt2();
  for (size_t i = 0; i < kFixedTexts.size(); ++i)
    EXPECT_EQ(tokenizer.encode(kFixedTexts[i]), expected[i]) << "text: \"" << kFixedTexts[i] << "\"";
}

// Random concatenations of the pieces where the pre-tokenization pattern has its corners.
TEST(Gpt2Tokenizer, MatchesNodeReferenceOnRandomTexts) {
  const std::vector<std::string> pieces = {
      "a", "Z", "the", "s", "t", "re", "ll", "d", "'", "'s", "'re", " ", "  ", "\t", "\n", "\r\n", "\xc2\xa0",
      "\xe3\x80\x80", "\xe2\x80\xa8", "\x0b", "\x0c", "1", "42", "\xd9\xa3", "\xc2\xbd", "\xe2\x85\xab", "!", "?",
      ".", ",", "-", "\xe2\x82\xac", "\xc3\xa9", "\xc3\x9f", "\xe6\x97\xa5", "\xf0\x9f\x98\x80", "\xcc\x81",
      "\xe2\x80\x8b", "\xef\xbb\xbf", "\xc2\x85", "<|endoftext|>", "\xf0\x9d\x94\x84" /* math fraktur A: L */};
  std::mt19937 rng(1);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    std::string text;
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int k = 0; k < n; ++k) text += pieces[rng() % pieces.size()];
    texts.push_back(text);
  }
  const auto expected = reference_encode(texts);
  ASSERT_EQ(expected.size(), texts.size());
  const Tokenizer& tokenizer = gpt2();
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tokenizer.encode(texts[i]);
    if (ids != expected[i] && ++mismatches <= 5) ADD_FAILURE() << "text: " << nlohmann::json(texts[i]).dump();
    EXPECT_EQ(tokenizer.decode(ids), texts[i]);
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Gpt2Tokenizer, MatchesNodeReferenceOnTheWholeCorpus) {
  const std::string corpus = read_text(kSourceDir + "/.cache/moby-dick.txt");
  ASSERT_GT(corpus.size(), 1000000u) << "run scripts/setup.sh";
  const auto expected = reference_encode({corpus});
  const auto ids = gpt2().encode(corpus);
  ASSERT_EQ(ids.size(), expected.at(0).size());
  EXPECT_TRUE(ids == expected.at(0));
  EXPECT_EQ(gpt2().decode(ids), corpus);
}

TEST(Gpt2Tokenizer, RoundTripsAnyByteString) {
  const Tokenizer& tokenizer = gpt2();
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string text(rng() % 64, '\0');
    // Half the strings mostly ASCII (so merges happen), half uniform bytes (mostly invalid UTF-8).
    for (char& c : text) c = static_cast<char>(i % 2 ? rng() % 256 : (rng() % 8 ? 32 + rng() % 95 : rng() % 256));
    ASSERT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

TEST(Gpt2Tokenizer, RoundTripsRandomUtf8) {
  const Tokenizer& tokenizer = gpt2();
  std::mt19937 rng(11);
  const auto append = [](std::string& s, char32_t cp) {
    if (cp < 0x80) s += static_cast<char>(cp);
    else if (cp < 0x800) s += {static_cast<char>(0xC0 | cp >> 6), static_cast<char>(0x80 | (cp & 0x3F))};
    else if (cp < 0x10000)
      s += {static_cast<char>(0xE0 | cp >> 12), static_cast<char>(0x80 | (cp >> 6 & 0x3F)),
            static_cast<char>(0x80 | (cp & 0x3F))};
    else
      s += {static_cast<char>(0xF0 | cp >> 18), static_cast<char>(0x80 | (cp >> 12 & 0x3F)),
            static_cast<char>(0x80 | (cp >> 6 & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
  };
  for (int i = 0; i < 2000; ++i) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int k = 0; k < n; ++k) {
      char32_t cp;
      do cp = rng() % 4 == 0 ? rng() % 0x110000 : rng() % 0x3000;
      while (cp >= 0xD800 && cp <= 0xDFFF);
      append(text, cp);
    }
    ASSERT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

TEST(Gpt2Tokenizer, BadInputNamesTheFile) {
  test::TempDir dir("gpt2-bad");
  try {
    make_gpt2_tokenizer(dir.path());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "encoder.json"), std::string::npos) << e.what();
  }
  write_text(dir / "encoder.json", "{\"a\": 0, ");
  try {
    make_gpt2_tokenizer(dir.path());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("not JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gpt2().decode({50257}), InputError);
  EXPECT_THROW(gpt2().decode({-1}), InputError);
}

TEST(ByteTokenizer, BytesAndSpecials) {
  const auto tokenizer = make_byte_tokenizer();
  EXPECT_EQ(tokenizer->kind(), "byte");
  EXPECT_EQ(tokenizer->vocab_size(), 261);
  EXPECT_EQ(tokenizer->eot_id(), 256);
  EXPECT_EQ(tokenizer->encode("A\xff\n"), (std::vector<int32_t>{65, 255, 10}));
  EXPECT_EQ(tokenizer->decode({72, 105, 256, 257, 258, 259, 260}), "Hi<|endoftext|><|bos|><|eos|><|pad|><|unk|>");
  EXPECT_THROW(tokenizer->decode({261}), InputError);
  std::mt19937 rng(3);
  for (int i = 0; i < 100; ++i) {
    std::string text(rng() % 100, '\0');
    for (char& c : text) c = static_cast<char>(rng() % 256);
    EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
  }
}

TEST(MakeTokenizer, UnknownSpecNamesIt) {
  try {
    make_tokenizer("wordpiece", kGpt2Dir);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("\"wordpiece\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_tokenizer("sentencepiece:", kGpt2Dir), InputError);
  EXPECT_EQ(make_tokenizer("byte", kGpt2Dir)->kind(), "byte");
}

// A tiny model trained with byte fallback and no normalization, as kolos recipes train theirs.
TEST(SentencePieceTokenizer, TrainedModelRoundTrips) {
  test::TempDir dir("spm");
  write_text(dir / "train.txt", read_text(kSourceDir + "/.cache/moby-dick.txt").substr(0, 60000));
  const auto run = test::run_shell("spm_train --input=" + dir / "train.txt" + " --model_prefix=" + dir / "tiny" +
                                   " --vocab_size=400 --model_type=bpe --normalization_rule_name=identity"
                                   " --remove_extra_whitespaces=false --byte_fallback=true --minloglevel=2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto tokenizer = make_sentencepiece_tokenizer(dir / "tiny.model");
  EXPECT_EQ(tokenizer->kind(), "sentencepiece");
  EXPECT_EQ(tokenizer->vocab_size(), 400);
  EXPECT_EQ(tokenizer->eot_id(), 2);  // spm_train's default </s>
  for (const std::string& text : {std::string("Call me Ishmael."), std::string("  two  spaces\nand lines\n\n"),
                                  std::string("unseen: \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac \xc3\xa9")}) {
    const auto ids = tokenizer->encode(text);
    EXPECT_FALSE(ids.empty());
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 400);
    EXPECT_EQ(tokenizer->decode(ids), text);
  }
  auto ids = tokenizer->encode("one");
  ids.push_back(tokenizer->eot_id());
  const auto two = tokenizer->encode("two");
  ids.insert(ids.end(), two.begin(), two.end());
  EXPECT_EQ(tokenizer->decode(ids), "one</s>two");
  EXPECT_THROW(tokenizer->decode({400}), InputError);
}

TEST(SentencePieceTokenizer, MissingModelNamesIt) {
  try {
    make_sentencepiece_tokenizer("/nonexistent/tiny.model");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tiny.model"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kolos::data
