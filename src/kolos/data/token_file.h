// Token files written by `kolos prepare` and read (memory-mapped) by the loader.
//
// A token directory holds:
//   meta.json   {"format": "kolos-tokens-v1", "tokenizer": "byte"|"gpt2"|"sentencepiece",
//                "tokenizer_files": [names copied into the directory], "vocab": V, "dtype": "uint16"|"uint32",
//                "train_tokens": n, "val_tokens": n, "train_bytes": n, "val_bytes": n,
//                "baselines": {"unigram_bpb": x, "bigram_bpb": y}, "sources": [input paths]}
//   train.bin, val.bin   little-endian token ids of `dtype`, documents separated by the tokenizer's eot id.
// The validation split is the last 10% of the concatenated input bytes (cut at a UTF-8 character boundary before
// tokenizing; several inputs are joined with the eot id), so "val_bytes" counts exactly the input bytes that the
// validation tokens stand for (an eot separator stands for no input byte). bits per byte of a model = (summed
// negative log-likelihood over the validation tokens, in bits) / val_bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kolos::data {

struct TokenMeta {
  std::string tokenizer;
  std::vector<std::string> tokenizer_files;
  int64_t vocab = 0;
  std::string dtype;  // "uint16" | "uint32"
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t train_bytes = 0, val_bytes = 0;
  double unigram_bpb = 0, bigram_bpb = 0;
  std::vector<std::string> sources;
};

// Reads DIR/meta.json; InputError naming the file when missing, not JSON, or missing a field.
TokenMeta read_token_meta(const std::string& dir);
// Writes DIR/meta.json (through a temporary name and a rename).
void write_token_meta(const std::string& dir, const TokenMeta& meta);

// A read-only memory map of one .bin file. Move-only; unmaps on destruction.
class TokenFile {
 public:
  // InputError naming the file when missing, or when its size is not a multiple of the id width, or when it
  // disagrees with `expected_tokens` (>= 0).
  TokenFile(const std::string& path, const std::string& dtype, int64_t expected_tokens = -1);
  ~TokenFile();
  TokenFile(TokenFile&&) noexcept;
  TokenFile& operator=(TokenFile&&) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return size_; }
  int32_t operator[](int64_t i) const;
  // Copies tokens [start, start+count) into out (int64, as the model's input wants).
  void read(int64_t start, int64_t count, int64_t* out) const;

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  int width_ = 2;
  int64_t size_ = 0;
};

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, concatenated with the eot token between documents
  std::string tokenizer;            // "byte" | "gpt2" | "sentencepiece:MODEL"
  std::string gpt2_dir;             // where encoder.json / vocab.bpe are (default .cache/gpt2)
  std::string out_dir;
  double val_fraction = 0.1;
};

// Writes a token directory (files written under temporary names and renamed). Returns its metadata.
// InputError naming the input file or tokenizer when they cannot be read.
TokenMeta prepare_tokens(const PrepareOptions& options);

// Validation bits per byte of the unigram and bigram baselines: counts from `train`, evaluated on `val`,
// divided by `val_bytes`. Unigram: add-one smoothing, p_uni(b) = (c(b) + 1) / (N + V). Bigram:
// p(b|a) = (c(a,b) + k·p_uni(b)) / (c(a) + k), c(a) counting a as the first token of a train bigram, with k the
// best of the grid {10^(i/4) : i = -8..16} on the validation split (the strongest such baseline); the first
// validation token, which has no predecessor, is scored with p_uni.
struct Baselines {
  double unigram_bpb = 0, bigram_bpb = 0;
};
Baselines compute_baselines(const std::vector<int32_t>& train, const std::vector<int32_t>& val, int64_t vocab,
                            int64_t val_bytes);

}  // namespace kolos::data
