// The byte tokenizer: ids 0..255 are the bytes themselves, 256..260 the specials listed in tokenizer.h.
#include <array>

#include "kolos/core/error.h"
#include "kolos/data/tokenizer.h"

namespace kolos::data {

namespace {

constexpr std::array<const char*, 5> kSpecials = {"<|endoftext|>", "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"};
constexpr int32_t kBytes = 256;

class ByteTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "byte"; }
  int64_t vocab_size() const override { return kBytes + static_cast<int64_t>(kSpecials.size()); }
  int32_t eot_id() const override { return kBytes; }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    text.reserve(ids.size());
    for (int32_t id : ids) {
      KOLOS_CHECK(id >= 0 && id < vocab_size(), "byte tokenizer: token id {} is outside the vocabulary [0, {})", id,
                  vocab_size());
      if (id < kBytes) text.push_back(static_cast<char>(id));
      else text += kSpecials[id - kBytes];
    }
    return text;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace kolos::data
