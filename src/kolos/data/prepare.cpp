// `kolos prepare`: text files -> a token directory (train/validation split, baselines). See token_file.h.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <unordered_map>

#include "kolos/core/error.h"
#include "kolos/data/file_io.h"
#include "kolos/data/token_file.h"
#include "kolos/data/tokenizer.h"

namespace kolos::data {

namespace {

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The pieces of the documents that fall into [begin, end) of their concatenation (separators not counted).
std::vector<std::string_view> slice_documents(const std::vector<std::string>& documents, int64_t begin, int64_t end) {
  std::vector<std::string_view> pieces;
  int64_t offset = 0;
  for (const std::string& doc : documents) {
    const int64_t doc_end = offset + static_cast<int64_t>(doc.size());
    const int64_t lo = std::max(begin, offset), hi = std::min(end, doc_end);
    // An empty document still counts as one document when it lies inside the range.
    if (lo < hi || (doc.empty() && offset >= begin && offset < end))
      pieces.emplace_back(std::string_view(doc).substr(lo - offset, std::max<int64_t>(hi - lo, 0)));
    offset = doc_end;
  }
  return pieces;
}

std::vector<int32_t> tokenize(const Tokenizer& tokenizer, const std::vector<std::string_view>& pieces) {
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i > 0) tokens.push_back(tokenizer.eot_id());
    const auto ids = tokenizer.encode(std::string(pieces[i]));
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  return tokens;
}

std::string to_bytes(const std::vector<int32_t>& tokens, const std::string& dtype) {
  std::string bytes;
  if (dtype == "uint16") {
    std::vector<uint16_t> ids(tokens.begin(), tokens.end());
    bytes.assign(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(uint16_t));
  } else {
    std::vector<uint32_t> ids(tokens.begin(), tokens.end());
    bytes.assign(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(uint32_t));
  }
  return bytes;
}

}  // namespace

TokenMeta prepare_tokens(const PrepareOptions& options) {
  KOLOS_CHECK(!options.inputs.empty(), "kolos prepare: no input files (give --input FILE...)");
  KOLOS_CHECK(!options.out_dir.empty(), "kolos prepare: no output directory (give --out DIR)");
  KOLOS_CHECK(options.val_fraction > 0 && options.val_fraction < 1,
              "kolos prepare: --val-fraction is {}, expected a number in (0, 1)", options.val_fraction);
  const std::string gpt2_dir = options.gpt2_dir.empty() ? ".cache/gpt2" : options.gpt2_dir;

  // 1. Inputs and tokenizer.
  std::vector<std::string> documents;
  int64_t total_bytes = 0;
  for (const std::string& input : options.inputs) {
    documents.push_back(read_whole_file(input, "input file"));
    total_bytes += static_cast<int64_t>(documents.back().size());
  }
  const auto tokenizer = make_tokenizer(options.tokenizer, gpt2_dir);

  // 2. Split: validation = the last val_fraction of the bytes, moved back to the start of the character it cuts.
  int64_t cut = total_bytes - static_cast<int64_t>(std::floor(static_cast<double>(total_bytes) * options.val_fraction));
  {
    int64_t offset = 0;
    for (const std::string& doc : documents) {
      const int64_t doc_end = offset + static_cast<int64_t>(doc.size());
      if (cut >= offset && cut < doc_end) {
        for (int back = 0; back < 3 && cut > offset && is_utf8_continuation(doc[cut - offset]); ++back) --cut;
        break;
      }
      offset = doc_end;
    }
  }
  KOLOS_CHECK(cut > 0 && cut < total_bytes,
              "kolos prepare: the inputs hold {} bytes, too few for a training and a validation split of {}",
              total_bytes, options.val_fraction);

  TokenMeta meta;
  meta.tokenizer = tokenizer->kind();
  meta.vocab = tokenizer->vocab_size();
  meta.dtype = meta.vocab <= 65536 ? "uint16" : "uint32";
  meta.train_bytes = cut;
  meta.val_bytes = total_bytes - cut;
  meta.sources = options.inputs;

  // 3. Tokenize each split on its own.
  const auto train = tokenize(*tokenizer, slice_documents(documents, 0, cut));
  const auto val = tokenize(*tokenizer, slice_documents(documents, cut, total_bytes));
  meta.train_tokens = static_cast<int64_t>(train.size());
  meta.val_tokens = static_cast<int64_t>(val.size());
  const Baselines baselines = compute_baselines(train, val, meta.vocab, meta.val_bytes);
  meta.unigram_bpb = baselines.unigram_bpb;
  meta.bigram_bpb = baselines.bigram_bpb;

  // 4. Write: the old meta.json goes first and the new one comes last, so a directory with a meta.json is complete.
  const std::string& dir = options.out_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  KOLOS_CHECK(!ec, "kolos prepare: cannot create output directory {} ({})", dir, ec.message());
  std::filesystem::remove(dir + "/meta.json", ec);
  if (meta.tokenizer == "gpt2") {
    meta.tokenizer_files = {"encoder.json", "vocab.bpe"};
    for (const auto& name : meta.tokenizer_files) copy_file_atomic(gpt2_dir + "/" + name, dir + "/" + name);
  } else if (meta.tokenizer == "sentencepiece") {
    meta.tokenizer_files = {"sentencepiece.model"};
    copy_file_atomic(options.tokenizer.substr(options.tokenizer.find(':') + 1), dir + "/sentencepiece.model");
  }
  write_file_atomic(dir + "/train.bin", to_bytes(train, meta.dtype));
  write_file_atomic(dir + "/val.bin", to_bytes(val, meta.dtype));
  write_token_meta(dir, meta);
  return meta;
}

Baselines compute_baselines(const std::vector<int32_t>& train, const std::vector<int32_t>& val, int64_t vocab,
                            int64_t val_bytes) {
  KOLOS_ASSERT(vocab > 0 && val_bytes > 0, "baselines need a vocabulary and validation bytes (got {}, {})", vocab,
               val_bytes);
  const auto check_id = [&](int32_t id) { KOLOS_ASSERT(id >= 0 && id < vocab, "token id {} outside [0, {})", id, vocab); };
  std::vector<int64_t> count(vocab, 0), first_count(vocab, 0);
  std::unordered_map<uint64_t, int64_t> pair_count;
  const auto pair_key = [](int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); };
  for (size_t i = 0; i < train.size(); ++i) {
    check_id(train[i]);
    ++count[train[i]];
    if (i + 1 < train.size()) {
      ++first_count[train[i]];
      ++pair_count[pair_key(train[i], train[i + 1])];
    }
  }
  const double denominator = static_cast<double>(train.size()) + static_cast<double>(vocab);
  const auto log2_unigram = [&](int32_t id) { return std::log2((static_cast<double>(count[id]) + 1) / denominator); };

  Baselines out;
  double unigram_bits = 0;
  for (int32_t id : val) {
    check_id(id);
    unigram_bits -= log2_unigram(id);
  }
  out.unigram_bpb = unigram_bits / static_cast<double>(val_bytes);
  if (val.empty()) return out;

  // Distinct validation bigrams with their multiplicity, so each k of the grid costs one pass over them.
  struct Bigram {
    double pair, first, p_uni;
    int64_t times;
  };
  std::unordered_map<uint64_t, Bigram> bigrams;
  for (size_t i = 1; i < val.size(); ++i) {
    auto [it, fresh] = bigrams.try_emplace(pair_key(val[i - 1], val[i]));
    if (fresh) {
      const auto pc = pair_count.find(it->first);
      it->second = Bigram{pc == pair_count.end() ? 0.0 : static_cast<double>(pc->second),
                          static_cast<double>(first_count[val[i - 1]]), std::exp2(log2_unigram(val[i])), 0};
    }
    ++it->second.times;
  }
  const double first_bits = -log2_unigram(val[0]);
  double best_bits = INFINITY;
  for (int i = -8; i <= 16; ++i) {
    const double k = std::pow(10.0, i / 4.0);
    double bits = first_bits;
    for (const auto& [key, b] : bigrams) bits -= b.times * std::log2((b.pair + k * b.p_uni) / (b.first + k));
    best_bits = std::min(best_bits, bits);
  }
  out.bigram_bpb = best_bits / static_cast<double>(val_bytes);
  return out;
}

}  // namespace kolos::data
