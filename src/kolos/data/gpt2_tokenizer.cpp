// GPT-2 byte-level BPE (Radford et al. 2019), written from its definition:
//  1. pre-tokenize the text with GPT-2's pattern
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     (matched by hand below; the character classes are JavaScript's, see unicode_class.h);
//  2. map each piece's bytes to the base symbols of the vocabulary (bytes_to_unicode: printable bytes stand for
//     themselves, the others for U+0100...);
//  3. merge adjacent symbols by rank (vocab.bpe line order), always the lowest-ranked pair first, all its
//     occurrences left to right, until no pair has a rank.
// Text that is not valid UTF-8 still round-trips: each stray byte is a character of class "other".
#include <array>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "kolos/core/error.h"
#include "kolos/data/file_io.h"
#include "kolos/data/tokenizer.h"
#include "kolos/data/unicode_class.h"

namespace kolos::data {

namespace {

// GPT-2's bytes_to_unicode(): byte -> the code point that stands for it in encoder.json and vocab.bpe.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> map{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) map[b] = printable[b] ? static_cast<char32_t>(b) : next++;
  return map;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

CharClass class_at(std::string_view text, size_t pos, int& length) {
  char32_t cp;
  length = decode_utf8(text, pos, cp);
  return cp == kInvalidCodePoint ? CharClass::kOther : char_class(cp);
}

// Byte length of the pre-token that GPT-2's pattern matches at `pos` (alternatives tried in order).
size_t match_pretoken(std::string_view text, size_t pos) {
  const size_t n = text.size();
  // 's 't 're 've 'm 'll 'd
  if (text[pos] == '\'' && pos + 1 < n) {
    const char c = text[pos + 1];
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return 2;
    if (pos + 2 < n) {
      const char c2 = text[pos + 2];
      if ((c == 'r' && c2 == 'e') || (c == 'v' && c2 == 'e') || (c == 'l' && c2 == 'l')) return 3;
    }
  }
  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class.
  int length;
  size_t start = pos;
  CharClass cls = class_at(text, pos, length);
  if (text[pos] == ' ' && pos + 1 < n) {
    int next_length;
    const CharClass next = class_at(text, pos + 1, next_length);
    if (next != CharClass::kSpace) start = pos + 1, cls = next, length = next_length;
  }
  if (cls != CharClass::kSpace) {
    size_t end = start + length;
    while (end < n && class_at(text, end, length) == cls) end += length;
    return end - pos;
  }
  // '\s+(?!\S)': the whitespace run, less its last character when a non-space follows; else '\s+'.
  size_t end = pos + length, last_start = pos;
  while (end < n && class_at(text, end, length) == CharClass::kSpace) last_start = end, end += length;
  if (end == n || last_start == pos) return end - pos;
  return last_start - pos;
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  explicit Gpt2Tokenizer(const std::string& dir) {
    const auto byte_to_cp = bytes_to_unicode();
    std::unordered_map<char32_t, unsigned char> cp_to_byte;
    for (int b = 0; b < 256; ++b) cp_to_byte[byte_to_cp[b]] = static_cast<unsigned char>(b);

    // encoder.json: {"symbol string": id}
    const std::string encoder_path = dir + "/encoder.json";
    nlohmann::json encoder;
    try {
      encoder = nlohmann::json::parse(read_whole_file(encoder_path, "gpt2 tokenizer: vocabulary"));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("gpt2 tokenizer: {} is not JSON ({})", encoder_path, e.what()));
    }
    KOLOS_CHECK(encoder.is_object() && !encoder.empty(), "gpt2 tokenizer: {} is not a JSON object of token ids",
                encoder_path);
    id_of_.reserve(encoder.size());
    token_bytes_.assign(encoder.size(), std::string());
    std::vector<bool> seen(encoder.size(), false);
    for (const auto& [symbol, value] : encoder.items()) {
      KOLOS_CHECK(value.is_number_integer() && value.get<int64_t>() >= 0 &&
                      value.get<int64_t>() < static_cast<int64_t>(encoder.size()) && !seen[value.get<int64_t>()],
                  "gpt2 tokenizer: {}: id of \"{}\" is {}, expected distinct ids 0..{}", encoder_path, symbol,
                  value.dump(), encoder.size() - 1);
      const auto id = value.get<int32_t>();
      seen[id] = true;
      id_of_[symbol] = id;
      std::string bytes;
      for (size_t pos = 0; pos < symbol.size();) {
        char32_t cp;
        pos += decode_utf8(symbol, pos, cp);
        const auto it = cp_to_byte.find(cp);
        KOLOS_CHECK(it != cp_to_byte.end(), "gpt2 tokenizer: {}: symbol \"{}\" has a character outside GPT-2's byte map",
                    encoder_path, symbol);
        bytes.push_back(static_cast<char>(it->second));
      }
      token_bytes_[id] = std::move(bytes);
    }
    const auto eot = id_of_.find("<|endoftext|>");
    KOLOS_CHECK(eot != id_of_.end(), "gpt2 tokenizer: {} has no \"<|endoftext|>\" token", encoder_path);
    eot_id_ = eot->second;
    for (int b = 0; b < 256; ++b) {
      std::string symbol;
      append_utf8(symbol, byte_to_cp[b]);
      const auto it = id_of_.find(symbol);
      KOLOS_CHECK(it != id_of_.end(), "gpt2 tokenizer: {} lacks the base symbol of byte {}", encoder_path, b);
      byte_id_[b] = it->second;
    }

    // vocab.bpe: "#version" line, then one merge "left right" per line, in rank order.
    const std::string merges_path = dir + "/vocab.bpe";
    const std::string merges = read_whole_file(merges_path, "gpt2 tokenizer: merges");
    size_t line_start = 0;
    int line_number = 0;
    int32_t rank = 0;
    while (line_start < merges.size()) {
      size_t line_end = merges.find('\n', line_start);
      if (line_end == std::string::npos) line_end = merges.size();
      std::string line = merges.substr(line_start, line_end - line_start);
      line_start = line_end + 1;
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (line_number == 1 && line.rfind("#version", 0) == 0)) continue;
      const size_t space = line.find(' ');
      KOLOS_CHECK(space != std::string::npos && space > 0 && line.find(' ', space + 1) == std::string::npos,
                  "gpt2 tokenizer: {} line {}: expected two symbols separated by one space, found \"{}\"", merges_path,
                  line_number, line);
      const std::string left = line.substr(0, space), right = line.substr(space + 1);
      const auto l = id_of_.find(left), r = id_of_.find(right), merged = id_of_.find(left + right);
      KOLOS_CHECK(l != id_of_.end() && r != id_of_.end() && merged != id_of_.end(),
                  "gpt2 tokenizer: {} line {}: \"{}\" merges symbols that {} does not have", merges_path, line_number,
                  line, encoder_path);
      merges_.emplace(pair_key(l->second, r->second), Merge{rank++, merged->second});
    }
    KOLOS_CHECK(!merges_.empty(), "gpt2 tokenizer: {} has no merges", merges_path);
  }

  std::string kind() const override { return "gpt2"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(token_bytes_.size()); }
  int32_t eot_id() const override { return eot_id_; }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 1);
    const std::string_view view(text);
    for (size_t pos = 0; pos < view.size();) {
      const size_t length = match_pretoken(view, pos);
      append_piece(view.substr(pos, length), ids);
      pos += length;
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    for (int32_t id : ids) {
      KOLOS_CHECK(id >= 0 && id < vocab_size(), "gpt2 tokenizer: token id {} is outside the vocabulary [0, {})", id,
                  vocab_size());
      text += token_bytes_[id];
    }
    return text;
  }

 private:
  struct Merge {
    int32_t rank, merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // Appends the BPE ids of one pre-token, from the cache when it was seen before.
  void append_piece(std::string_view piece, std::vector<int32_t>& ids) const {
    const std::string key(piece);
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> word(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) word[i] = byte_id_[static_cast<unsigned char>(piece[i])];
    bpe(word);
    ids.insert(ids.end(), word.begin(), word.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(key, std::move(word));
  }

  void bpe(std::vector<int32_t>& word) const {
    while (word.size() > 1) {
      const Merge* best = nullptr;
      uint64_t best_key = 0;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        const uint64_t key = pair_key(word[i], word[i + 1]);
        const auto it = merges_.find(key);
        if (it != merges_.end() && (!best || it->second.rank < best->rank)) best = &it->second, best_key = key;
      }
      if (!best) break;
      size_t out = 0;
      for (size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && pair_key(word[i], word[i + 1]) == best_key) {
          word[out++] = best->merged_id;
          i += 2;
        } else {
          word[out++] = word[i++];
        }
      }
      word.resize(out);
    }
  }

  static constexpr size_t kMaxCacheEntries = 1 << 20;

  std::unordered_map<std::string, int32_t> id_of_;
  std::vector<std::string> token_bytes_;  // id -> the bytes it stands for
  std::array<int32_t, 256> byte_id_{};
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t eot_id_ = 0;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir) { return std::make_unique<Gpt2Tokenizer>(dir); }

}  // namespace kolos::data
