#include "kolos/data/loader.h"

#include <filesystem>

#include "kolos/core/error.h"

namespace kolos::data {

namespace {

constexpr int64_t kSyntheticTrainTokens = int64_t{1} << 40;
constexpr int64_t kSyntheticValTokens = int64_t{1} << 16;

// splitmix64's finalizer: a bijection of 64-bit words whose output bits each depend on all input bits.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) {
  return mix(mix(mix(a + 0x9E3779B97F4A7C15ULL) ^ b) + c);
}

// A keyed pseudo-random permutation of [0, n): a balanced Feistel network over the smallest 2h-bit domain that holds
// n (at most 4n values), walking the cycle until the value lands inside [0, n).
int64_t permute(int64_t x, int64_t n, uint64_t key) {
  if (n <= 1) return 0;
  int half_bits = 1;
  while ((int64_t{1} << (2 * half_bits)) < n) ++half_bits;
  const uint64_t mask = (uint64_t{1} << half_bits) - 1;
  constexpr int kRounds = 6;
  auto value = static_cast<uint64_t>(x);
  do {
    uint64_t left = value >> half_bits, right = value & mask;
    for (int round = 0; round < kRounds; ++round) {
      const uint64_t next = left ^ (mix(key ^ (right + (static_cast<uint64_t>(round) << 56))) & mask);
      left = right;
      right = next;
    }
    value = (left << half_bits) | right;
  } while (value >= static_cast<uint64_t>(n));
  return static_cast<int64_t>(value);
}

}  // namespace

Loader::Loader(const LoaderOptions& options) : options_(options) {
  KOLOS_CHECK(options.seq_len > 0, "model.seq_len is {}, expected a positive sequence length", options.seq_len);
  KOLOS_CHECK(options.batch_size > 0, "train.batch_size is {}, expected a positive number", options.batch_size);
  KOLOS_CHECK(options.grad_accum > 0, "train.grad_accum is {}, expected a positive number", options.grad_accum);
  KOLOS_CHECK(options.dp > 0 && options.dp_rank >= 0 && options.dp_rank < options.dp,
              "data-parallel rank {} of {}: expected 0 <= rank < dp", options.dp_rank, options.dp);
  KOLOS_CHECK(options.vocab > 0, "model.vocab is {}, expected a positive vocabulary size", options.vocab);

  if (options.synthetic) {
    meta_.tokenizer = "synthetic";
    meta_.vocab = options.vocab;
    meta_.dtype = "uint32";
    meta_.train_tokens = meta_.train_bytes = kSyntheticTrainTokens;
    meta_.val_tokens = meta_.val_bytes = kSyntheticValTokens;
  } else {
    KOLOS_CHECK(!options.path.empty(), "data.path is empty: expected a token directory (kolos prepare --out DIR), "
                                       "or set data.synthetic = true");
    KOLOS_CHECK(std::filesystem::is_directory(options.path),
                "data.path {}: no such directory (create it with kolos prepare --out {})", options.path, options.path);
    try {
      meta_ = read_token_meta(options.path);
    } catch (const InputError& e) {
      throw InputError(fmt::format("data.path: {}", e.what()));
    }
    KOLOS_CHECK(meta_.vocab == options.vocab,
                "data.path {}: the token files' vocabulary is {} ({} tokenizer) but model.vocab is {}; set model.vocab "
                "= {} or prepare the data with a matching tokenizer",
                options.path, meta_.vocab, meta_.tokenizer, options.vocab, meta_.vocab);
    train_ = std::make_unique<TokenFile>(options.path + "/train.bin", meta_.dtype, meta_.train_tokens);
    val_ = std::make_unique<TokenFile>(options.path + "/val.bin", meta_.dtype, meta_.val_tokens);
  }
  train_windows_ = (meta_.train_tokens - 1) / options.seq_len;
  val_windows_ = (meta_.val_tokens - 1) / options.seq_len;
  KOLOS_CHECK(train_windows_ > 0 && val_windows_ > 0,
              "data.path {}: {} train / {} validation tokens, fewer than one window of model.seq_len + 1 = {} tokens",
              options.path, meta_.train_tokens, meta_.val_tokens, options.seq_len + 1);
}

int64_t Loader::sample_index(int64_t global_sample) const {
  const int64_t epoch = global_sample / train_windows_, position = global_sample % train_windows_;
  const uint64_t key = hash3(static_cast<uint64_t>(options_.seed), static_cast<uint64_t>(epoch), 0x5A3D1E);
  return permute(position, train_windows_, key);
}

Batch Loader::train_batch(int64_t step, int64_t micro) const {
  KOLOS_ASSERT(step >= 0 && micro >= 0 && micro < options_.grad_accum, "train_batch({}, {}) with grad_accum {}", step,
               micro, options_.grad_accum);
  const int64_t B = options_.batch_size;
  const int64_t global_batch = B * options_.grad_accum * options_.dp;
  const int64_t first = step * global_batch + options_.dp_rank * B * options_.grad_accum + micro * B;
  std::vector<int64_t> window_indices(B);
  for (int64_t b = 0; b < B; ++b) window_indices[b] = sample_index(first + b);
  return windows(Split::kTrain, window_indices);
}

Batch Loader::val_batch(int64_t index) const {
  KOLOS_ASSERT(index >= 0, "val_batch({})", index);
  const int64_t B = options_.batch_size;
  std::vector<int64_t> window_indices(B);
  for (int64_t b = 0; b < B; ++b) window_indices[b] = (index * B + b) % val_windows_;
  return windows(Split::kVal, window_indices);
}

int64_t Loader::val_batches() const { return (val_windows_ + options_.batch_size - 1) / options_.batch_size; }

double Loader::val_bytes_per_token() const {
  return static_cast<double>(meta_.val_bytes) / static_cast<double>(meta_.val_tokens);
}

Batch Loader::windows(Split split, const std::vector<int64_t>& window_indices) const {
  const int64_t B = static_cast<int64_t>(window_indices.size()), T = options_.seq_len;
  at::Tensor input = at::empty({B, T}, at::kLong), target = at::empty({B, T}, at::kLong);
  std::vector<int64_t> tokens(T + 1);
  int64_t* in = input.data_ptr<int64_t>();
  int64_t* tg = target.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    read_tokens(split, window_indices[b] * T, T + 1, tokens.data());
    std::copy(tokens.begin(), tokens.end() - 1, in + b * T);
    std::copy(tokens.begin() + 1, tokens.end(), tg + b * T);
  }
  return {input, target};
}

void Loader::read_tokens(Split split, int64_t start, int64_t count, int64_t* out) const {
  if (!options_.synthetic) {
    (split == Split::kTrain ? train_ : val_)->read(start, count, out);
    return;
  }
  const auto vocab = static_cast<uint64_t>(options_.vocab);
  for (int64_t i = 0; i < count; ++i)
    out[i] = static_cast<int64_t>(hash3(static_cast<uint64_t>(options_.seed), static_cast<uint64_t>(split),
                                        static_cast<uint64_t>(start + i)) % vocab);
}

}  // namespace kolos::data
