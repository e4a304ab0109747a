// kolos prepare's token directories: the byte split at 10% on a character boundary, documents joined with eot,
// tokenizer files copied so load_tokenizer needs nothing else, memory-mapped reads, bad directories named in the
// error, and the baselines against a hand computation and an independent Python computation.
#include "kolos/data/token_file.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "kolos/data/tokenizer.h"
#include "tests/support.h"

namespace kolos::data {
namespace {

const std::string kSourceDir = KOLOS_SOURCE_DIR;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<int32_t> read_ids(const std::string& path, const std::string& dtype) {
  TokenFile file(path, dtype);
  std::vector<int32_t> ids(file.size());
  for (int64_t i = 0; i < file.size(); ++i) ids[i] = file[i];
  return ids;
}

std::vector<int32_t> bytes_of(const std::string& text) {
  return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(text.data()),
                              reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

template <typename F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected InputError";
  return "";
}

PrepareOptions options_for(const std::vector<std::string>& inputs, const std::string& tokenizer,
                           const std::string& out) {
  PrepareOptions o;
  o.inputs = inputs;
  o.tokenizer = tokenizer;
  o.gpt2_dir = kSourceDir + "/.cache/gpt2";
  o.out_dir = out;
  return o;
}

TEST(Prepare, ByteSplitMovesBackToACharacterBoundary) {
  test::TempDir dir("prep-split");
  // 100 bytes: the 10% cut at byte 90 falls inside the 3-byte character at 89..91, so validation starts at 89.
  const std::string text = std::string(89, 'a') + "\xe6\x97\xa5" + std::string(8, 'b');
  ASSERT_EQ(text.size(), 100u);
  write_text(dir / "in.txt", text);
  const TokenMeta meta = prepare_tokens(options_for({dir / "in.txt"}, "byte", dir / "tokens"));
  EXPECT_EQ(meta.train_bytes, 89);
  EXPECT_EQ(meta.val_bytes, 11);
  EXPECT_EQ(meta.vocab, 261);
  EXPECT_EQ(meta.dtype, "uint16");
  EXPECT_EQ(read_ids(dir / "tokens/train.bin", "uint16"), bytes_of(text.substr(0, 89)));
  EXPECT_EQ(read_ids(dir / "tokens/val.bin", "uint16"), bytes_of(text.substr(89)));

  const TokenMeta reread = read_token_meta(dir / "tokens");
  EXPECT_EQ(reread.tokenizer, "byte");
  EXPECT_EQ(reread.train_tokens, 89);
  EXPECT_EQ(reread.val_tokens, 11);
  EXPECT_EQ(reread.sources, std::vector<std::string>{dir / "in.txt"});
  EXPECT_DOUBLE_EQ(reread.unigram_bpb, meta.unigram_bpb);
  EXPECT_DOUBLE_EQ(reread.bigram_bpb, meta.bigram_bpb);
  EXPECT_TRUE(reread.tokenizer_files.empty());
  EXPECT_EQ(load_tokenizer(dir / "tokens")->kind(), "byte");
  for (const auto& entry : std::filesystem::directory_iterator(dir.path() + "/tokens"))
    EXPECT_EQ(entry.path().extension(), entry.path().filename() == "meta.json" ? ".json" : ".bin") << entry.path();
}

TEST(Prepare, DocumentsAreJoinedWithEot) {
  test::TempDir dir("prep-docs");
  write_text(dir / "a.txt", std::string(50, 'a'));
  write_text(dir / "b.txt", std::string(5, 'b'));
  write_text(dir / "c.txt", std::string(5, 'c'));
  PrepareOptions o = options_for({dir / "a.txt", dir / "b.txt", dir / "c.txt"}, "byte", dir / "tokens");
  o.val_fraction = 0.2;  // 60 bytes: validation = the last 12, from inside a.txt
  const TokenMeta meta = prepare_tokens(o);
  EXPECT_EQ(meta.train_bytes, 48);
  EXPECT_EQ(meta.val_bytes, 12);
  EXPECT_EQ(read_ids(dir / "tokens/train.bin", "uint16"), bytes_of(std::string(48, 'a')));
  std::vector<int32_t> val = bytes_of("aa");
  val.push_back(256);
  for (int i = 0; i < 5; ++i) val.push_back('b');
  val.push_back(256);
  for (int i = 0; i < 5; ++i) val.push_back('c');
  EXPECT_EQ(read_ids(dir / "tokens/val.bin", "uint16"), val);
  EXPECT_EQ(meta.val_tokens, 14);
}

TEST(Prepare, Gpt2DirectoryIsSelfContained) {
  test::TempDir dir("prep-gpt2");
  const std::string text = read_text(kSourceDir + "/.cache/moby-dick.txt").substr(0, 40000) +
                           "\ncaf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\n";
  write_text(dir / "in.txt", text);
  const TokenMeta meta = prepare_tokens(options_for({dir / "in.txt"}, "gpt2", dir / "tokens"));
  EXPECT_EQ(meta.tokenizer, "gpt2");
  EXPECT_EQ(meta.vocab, 50257);
  EXPECT_EQ(meta.dtype, "uint16");
  EXPECT_EQ(meta.tokenizer_files, (std::vector<std::string>{"encoder.json", "vocab.bpe"}));
  EXPECT_FALSE(std::filesystem::is_symlink(dir / "tokens/encoder.json"));
  EXPECT_EQ(read_text(dir / "tokens/vocab.bpe"), read_text(kSourceDir + "/.cache/gpt2/vocab.bpe"));
  const auto tokenizer = load_tokenizer(dir / "tokens");
  const auto train = read_ids(dir / "tokens/train.bin", "uint16");
  const auto val = read_ids(dir / "tokens/val.bin", "uint16");
  const int64_t cut = meta.train_bytes;
  EXPECT_EQ(cut + meta.val_bytes, static_cast<int64_t>(text.size()));
  EXPECT_EQ(tokenizer->decode(train), text.substr(0, cut));
  EXPECT_EQ(tokenizer->decode(val), text.substr(cut));
  EXPECT_EQ(train, tokenizer->encode(text.substr(0, cut)));
}

// The whole demo corpus through GPT-2 BPE takes seconds at most, and decodes back to the corpus.
TEST(Prepare, Gpt2WholeCorpusIsFast) {
  test::TempDir dir("prep-corpus");
  const auto start = std::chrono::steady_clock::now();
  const TokenMeta meta =
      prepare_tokens(options_for({kSourceDir + "/.cache/moby-dick.txt"}, "gpt2", dir / "tokens"));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0);
  const std::string corpus = read_text(kSourceDir + "/.cache/moby-dick.txt");
  EXPECT_EQ(meta.train_bytes + meta.val_bytes, static_cast<int64_t>(corpus.size()));
  // The last 10%, plus at most the 3 leading bytes of a character that the cut fell into.
  EXPECT_GE(meta.val_bytes, static_cast<int64_t>(corpus.size()) / 10);
  EXPECT_LE(meta.val_bytes, static_cast<int64_t>(corpus.size()) / 10 + 3);
  const auto tokenizer = load_tokenizer(dir / "tokens");
  EXPECT_EQ(tokenizer->decode(read_ids(dir / "tokens/train.bin", "uint16")) +
                tokenizer->decode(read_ids(dir / "tokens/val.bin", "uint16")),
            corpus);
  // A model that learned nothing from context is beaten by the bigram baseline.
  EXPECT_LT(meta.bigram_bpb, meta.unigram_bpb);
}

TEST(Prepare, SentencePieceModelIsCopied) {
  test::TempDir dir("prep-spm");
  write_text(dir / "in.txt", read_text(kSourceDir + "/.cache/moby-dick.txt").substr(0, 50000));
  const auto run = test::run_shell("spm_train --input=" + dir / "in.txt" + " --model_prefix=" + dir / "tiny" +
                                   " --vocab_size=380 --normalization_rule_name=identity"
                                   " --remove_extra_whitespaces=false --byte_fallback=true --minloglevel=2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const TokenMeta meta = prepare_tokens(options_for({dir / "in.txt"}, "sentencepiece:" + dir / "tiny.model",
                                                    dir / "tokens"));
  EXPECT_EQ(meta.tokenizer, "sentencepiece");
  EXPECT_EQ(meta.vocab, 380);
  std::filesystem::remove(dir / "tiny.model");
  const auto tokenizer = load_tokenizer(dir / "tokens");
  const std::string text = read_text(dir / "in.txt");
  EXPECT_EQ(tokenizer->decode(read_ids(dir / "tokens/val.bin", "uint16")), text.substr(meta.train_bytes));
}

TEST(Prepare, BadInputNamesTheCulprit) {
  test::TempDir dir("prep-bad");
  write_text(dir / "in.txt", "some text for the tokenizer");
  EXPECT_NE(input_error_of([&] { prepare_tokens(options_for({dir / "missing.txt"}, "byte", dir / "out")); })
                .find(dir / "missing.txt"),
            std::string::npos);
  EXPECT_NE(input_error_of([&] { prepare_tokens(options_for({dir / "in.txt"}, "bpe", dir / "out")); })
                .find("\"bpe\""),
            std::string::npos);
  PrepareOptions o = options_for({dir / "in.txt"}, "gpt2", dir / "out");
  o.gpt2_dir = dir / "no-gpt2";
  EXPECT_NE(input_error_of([&] { prepare_tokens(o); }).find(dir / "no-gpt2/encoder.json"), std::string::npos);
  o = options_for({dir / "in.txt"}, "byte", dir / "out");
  o.val_fraction = 1.5;
  EXPECT_NE(input_error_of([&] { prepare_tokens(o); }).find("--val-fraction"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir / "out/meta.json"));
}

TEST(TokenFile, ReadsLittleEndianIdsOfBothWidths) {
  test::TempDir dir("tokfile");
  write_text(dir / "a.bin", std::string("\x01\x00\xff\xff\x34\x12", 6));
  TokenFile a(dir / "a.bin", "uint16", 3);
  EXPECT_EQ(a.size(), 3);
  EXPECT_EQ(a[0], 1);
  EXPECT_EQ(a[1], 65535);
  EXPECT_EQ(a[2], 0x1234);
  std::vector<int64_t> out(2);
  a.read(1, 2, out.data());
  EXPECT_EQ(out, (std::vector<int64_t>{65535, 0x1234}));
  write_text(dir / "b.bin", std::string("\x01\x00\x01\x00\x78\x56\x34\x12", 8));
  TokenFile b(dir / "b.bin", "uint32");
  EXPECT_EQ(b[0], 65537);
  EXPECT_EQ(b[1], 0x12345678);
  TokenFile moved = std::move(b);
  EXPECT_EQ(moved[1], 0x12345678);
  EXPECT_EQ(b.size(), 0);

  EXPECT_NE(input_error_of([&] { TokenFile(dir / "a.bin", "uint16", 4); }).find(dir / "a.bin"), std::string::npos);
  EXPECT_NE(input_error_of([&] { TokenFile(dir / "a.bin", "uint32"); }).find("whole number"), std::string::npos);
  EXPECT_NE(input_error_of([&] { TokenFile(dir / "none.bin", "uint16"); }).find(dir / "none.bin"), std::string::npos);
  write_text(dir / "empty.bin", "");
  EXPECT_EQ(TokenFile(dir / "empty.bin", "uint16", 0).size(), 0);
}

TEST(TokenMeta, BadMetadataNamesFileAndKey) {
  test::TempDir dir("meta-bad");
  EXPECT_NE(input_error_of([&] { read_token_meta(dir.path()); }).find(dir / "meta.json"), std::string::npos);
  write_text(dir / "meta.json", "{not json");
  EXPECT_NE(input_error_of([&] { read_token_meta(dir.path()); }).find("not valid JSON"), std::string::npos);

  TokenMeta meta;
  meta.tokenizer = "byte";
  meta.vocab = 261;
  meta.dtype = "uint16";
  write_token_meta(dir.path(), meta);
  EXPECT_EQ(read_token_meta(dir.path()).vocab, 261);
  auto j = nlohmann::json::parse(read_text(dir / "meta.json"));
  j.erase("vocab");
  write_text(dir / "meta.json", j.dump());
  const std::string missing = input_error_of([&] { read_token_meta(dir.path()); });
  EXPECT_NE(missing.find("\"vocab\""), std::string::npos) << missing;
  EXPECT_NE(missing.find(dir / "meta.json"), std::string::npos) << missing;
  j["vocab"] = "many";
  write_text(dir / "meta.json", j.dump());
  EXPECT_NE(input_error_of([&] { read_token_meta(dir.path()); }).find("\"vocab\""), std::string::npos);
  j["vocab"] = 261;
  j["dtype"] = "int8";
  write_text(dir / "meta.json", j.dump());
  EXPECT_NE(input_error_of([&] { read_token_meta(dir.path()); }).find("int8"), std::string::npos);
  j["dtype"] = "uint16";
  j["format"] = "something-else";
  write_text(dir / "meta.json", j.dump());
  EXPECT_NE(input_error_of([&] { read_token_meta(dir.path()); }).find("kolos-tokens-v1"), std::string::npos);
}

// train = 0 1 0 1, val = 0 1, V = 2, 2 bytes. Unigram: p = (2+1)/(4+2) = 1/2 for both, 2 bits -> 1 bpb.
// Bigram: the first val token by p_uni (1 bit); then p(1|0) = (c(0,1) + k/2) / (c(0) + k) = (2 + k/2) / (2 + k),
// largest for the grid's smallest k = 10^-2.
TEST(Baselines, HandComputedExample) {
  const Baselines b = compute_baselines({0, 1, 0, 1}, {0, 1}, 2, 2);
  EXPECT_NEAR(b.unigram_bpb, 1.0, 1e-12);
  const double k = 0.01;
  EXPECT_NEAR(b.bigram_bpb, (1.0 - std::log2((2 + k / 2) / (2 + k))) / 2, 1e-12);
}

// Random skewed sequences against the formula of token_file.h written in Python.
TEST(Baselines, MatchesPythonReference) {
  std::mt19937 rng(5);
  const int vocab = 11;
  std::discrete_distribution<int> skew({30, 20, 12, 9, 7, 5, 4, 3, 2, 1, 0});
  std::vector<int32_t> train(3000), val(400);
  // A Markov-ish source so that context helps: the next token repeats the previous one a third of the time.
  int32_t prev = 0;
  for (auto* seq : {&train, &val})
    for (auto& t : *seq) prev = t = rng() % 3 == 0 ? prev : skew(rng);
  val[5] = 10;  // a token never seen in training
  const int64_t val_bytes = 517;
  const Baselines b = compute_baselines(train, val, vocab, val_bytes);

  test::TempDir dir("baselines");
  write_text(dir / "seqs.json", nlohmann::json{{"train", train}, {"val", val}}.dump());
  write_text(dir / "ref.py", R"(import json, math, sys
d = json.load(open(sys.argv[1])); tr, va, V, nb = d['train'], d['val'], int(sys.argv[2]), int(sys.argv[3])
c = [0] * V; ca = [0] * V; cab = {}
for t in tr: c[t] += 1
for a, b in zip(tr, tr[1:]): ca[a] += 1; cab[(a, b)] = cab.get((a, b), 0) + 1
pu = [(c[t] + 1) / (len(tr) + V) for t in range(V)]
uni = -sum(math.log2(pu[t]) for t in va) / nb
best = min(-math.log2(pu[va[0]]) - sum(math.log2((cab.get((a, b), 0) + k * pu[b]) / (ca[a] + k))
                                       for a, b in zip(va, va[1:]))
           for k in [10 ** (i / 4) for i in range(-8, 17)])
print(json.dumps({'unigram': uni, 'bigram': best / nb}))
)");
  const auto run = test::run_shell("/usr/bin/python3 " + dir / "ref.py" + " " + dir / "seqs.json" + " " +
                                   std::to_string(vocab) + " " + std::to_string(val_bytes));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto ref = nlohmann::json::parse(test::last_json_line(run.output));
  EXPECT_NEAR(b.unigram_bpb, ref["unigram"].get<double>(), 1e-9 * ref["unigram"].get<double>());
  EXPECT_NEAR(b.bigram_bpb, ref["bigram"].get<double>(), 1e-9 * ref["bigram"].get<double>());
  EXPECT_LT(b.bigram_bpb, b.unigram_bpb);
}

}  // namespace
}  // namespace kolos::data
