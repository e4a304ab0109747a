#include "kolos/data/tokenizer.h"

#include "kolos/core/error.h"
#include "kolos/data/token_file.h"

namespace kolos::data {

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec, const std::string& gpt2_dir) {
  if (spec == "byte") return make_byte_tokenizer();
  if (spec == "gpt2") return make_gpt2_tokenizer(gpt2_dir);
  const std::string sp_prefix = "sentencepiece:";
  if (spec.rfind(sp_prefix, 0) == 0 && spec.size() > sp_prefix.size())
    return make_sentencepiece_tokenizer(spec.substr(sp_prefix.size()));
  throw InputError(fmt::format("unknown tokenizer \"{}\" (expected byte, gpt2 or sentencepiece:MODEL_FILE)", spec));
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& token_dir) {
  const TokenMeta meta = read_token_meta(token_dir);
  std::unique_ptr<Tokenizer> tokenizer;
  if (meta.tokenizer == "byte") {
    tokenizer = make_byte_tokenizer();
  } else if (meta.tokenizer == "gpt2") {
    tokenizer = make_gpt2_tokenizer(token_dir);
  } else {
    KOLOS_CHECK(meta.tokenizer_files.size() == 1, "{}/meta.json: tokenizer_files should name the one .model file",
                token_dir);
    tokenizer = make_sentencepiece_tokenizer(token_dir + "/" + meta.tokenizer_files[0]);
  }
  KOLOS_CHECK(tokenizer->vocab_size() == meta.vocab,
              "{}: the {} tokenizer files have a vocabulary of {}, but meta.json says {}; re-run kolos prepare",
              token_dir, meta.tokenizer, tokenizer->vocab_size(), meta.vocab);
  return tokenizer;
}

}  // namespace kolos::data
