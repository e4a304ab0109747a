// kolos prepare: text files -> a token directory (see src/kolos/data/token_file.h).
#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/core/units.h"
#include "kolos/data/token_file.h"

namespace kolos::app {

int prepare_main(int argc, char** argv) {
  CLI::App app{"Tokenize text files into a token directory: train.bin and val.bin (validation = the last "
               "--val-fraction of the bytes), meta.json with unigram/bigram baselines, and the tokenizer's files.",
               "prepare"};
  data::PrepareOptions options;
  options.gpt2_dir = ".cache/gpt2";
  app.add_option("--input", options.inputs, "text files, joined with the end-of-text token")->required();
  app.add_option("--tokenizer", options.tokenizer, "byte | gpt2 | sentencepiece:MODEL_FILE")->required();
  app.add_option("--out", options.out_dir, "output token directory")->required();
  app.add_option("--gpt2-dir", options.gpt2_dir, "directory with GPT-2's encoder.json and vocab.bpe")
      ->capture_default_str();
  app.add_option("--val-fraction", options.val_fraction, "fraction of the input bytes kept for validation")
      ->capture_default_str();
  if (!parse_args(app, argc, argv)) return 0;

  const auto start = std::chrono::steady_clock::now();
  const data::TokenMeta meta = data::prepare_tokens(options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::printf("prepared %s: %s tokenizer, vocabulary %lld (%s)\n", options.out_dir.c_str(), meta.tokenizer.c_str(),
              static_cast<long long>(meta.vocab), meta.dtype.c_str());
  std::printf("  train: %lld tokens from %s\n", static_cast<long long>(meta.train_tokens),
              format_bytes(static_cast<double>(meta.train_bytes)).c_str());
  std::printf("  val:   %lld tokens from %s (%.3f bytes/token)\n", static_cast<long long>(meta.val_tokens),
              format_bytes(static_cast<double>(meta.val_bytes)).c_str(),
              static_cast<double>(meta.val_bytes) / static_cast<double>(std::max<int64_t>(meta.val_tokens, 1)));
  std::printf("  baselines on val: unigram %.4f bpb, bigram %.4f bpb (a model must beat these)\n", meta.unigram_bpb,
              meta.bigram_bpb);
  const nlohmann::json summary = {
      {"out", options.out_dir},          {"tokenizer", meta.tokenizer},     {"vocab", meta.vocab},
      {"train_tokens", meta.train_tokens}, {"val_tokens", meta.val_tokens}, {"train_bytes", meta.train_bytes},
      {"val_bytes", meta.val_bytes},     {"unigram_bpb", meta.unigram_bpb}, {"bigram_bpb", meta.bigram_bpb},
      {"seconds", seconds},
  };
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace kolos::app
