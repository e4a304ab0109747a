// The character classes that GPT-2's pre-tokenization regex needs (\p{L}, \p{N}, \s), as JavaScript's
// Unicode-aware regular expressions define them (the npm gpt-3-encoder reference runs under node).
#pragma once

#include <cstdint>
#include <string_view>

namespace kolos::data {

enum class CharClass : uint8_t { kOther = 0, kLetter, kNumber, kSpace };

// Class of a code point; surrogates and values past U+10FFFF are kOther.
CharClass char_class(char32_t code_point);

// Decodes one UTF-8 character of `text` at byte `pos` (< text.size()). Returns its length in bytes (1..4) and sets
// `code_point`; a byte that does not start a well-formed character (stray continuation, truncated or overlong
// sequence, surrogate, > U+10FFFF) is one character of length 1 with code_point = kInvalidCodePoint.
constexpr char32_t kInvalidCodePoint = 0xFFFFFFFF;
int decode_utf8(std::string_view text, size_t pos, char32_t& code_point);

}  // namespace kolos::data
