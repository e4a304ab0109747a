// Deterministic batches of (input, target) token windows.
//
// Sampler rule (DESIGN "Parity"): optimizer step `step` (0-based) uses global batch `step`; its G = global_batch
// sample indices are a fixed function of (seed, step), and data-parallel rank r takes the r-th contiguous slice
// of G/dp samples; micro-step k of that rank takes the k-th contiguous slice of batch_size samples within it.
// A sample index i in [0, n_windows) is the window of seq_len+1 tokens starting at token i*seq_len... (windows
// are non-overlapping over the split; an epoch is a permutation of the windows, reshuffled each epoch with the
// seed), so the same step gives the same samples on any layout and after a resume.
//
// Concretely: global sample g = step·G + j (0 <= j < G) lies in epoch e = g / n_windows at position
// p = g % n_windows, and is window perm(seed, e)(p), where perm is a keyed Feistel bijection of [0, n_windows)
// (cycle-walking), so any step is computed directly, without replaying the ones before it.
//
// data.synthetic: no files; token i of split s is a hash of (seed, s, i) modulo `vocab` (unlearnable noise of
// entropy log2(vocab), for speed and parity runs). The train split is 2^40 tokens long, the validation split 2^16;
// one token counts as one byte.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "kolos/data/token_file.h"

namespace kolos::data {

struct Batch {
  at::Tensor input;   // (B, T) int64
  at::Tensor target;  // (B, T) int64, input shifted by one
};

struct LoaderOptions {
  std::string path;       // token directory (ignored when synthetic)
  bool synthetic = false;
  int64_t vocab = 0;      // model vocabulary: the token files' vocabulary must equal it
  int64_t seq_len = 0;    // T
  int64_t batch_size = 0; // B per micro-step
  int64_t grad_accum = 1;
  int64_t dp = 1, dp_rank = 0;
  int64_t seed = 0;
};

// Thread-safety: every method is const and may be called from several threads.
class Loader {
 public:
  // InputError when the token directory is missing/corrupt, its vocabulary differs from `vocab` (naming both
  // values and data.path / model.vocab), or the split is shorter than one window.
  explicit Loader(const LoaderOptions& options);

  // Micro-batch `micro` (0 <= micro < grad_accum) of optimizer step `step` for this rank.
  Batch train_batch(int64_t step, int64_t micro) const;
  // Validation batch `index` of batch_size windows: windows taken in order (no shuffle), batch i holding windows
  // i·B ... i·B+B-1 modulo the number of validation windows (so batches past the end wrap around).
  Batch val_batch(int64_t index) const;
  // Number of validation batches that cover the split once.
  int64_t val_batches() const;
  // UTF-8 bytes per validation token, averaged over the split (for bits per byte on a subset of batches).
  double val_bytes_per_token() const;
  const TokenMeta& meta() const { return meta_; }

 private:
  enum class Split { kTrain = 0, kVal = 1 };
  // The window (0 <= window < train_windows_) that global sample `global_sample` of the train split uses.
  int64_t sample_index(int64_t global_sample) const;
  // A batch of the given windows of a split (window w = tokens [w*T, w*T+T+1)).
  Batch windows(Split split, const std::vector<int64_t>& window_indices) const;
  void read_tokens(Split split, int64_t start, int64_t count, int64_t* out) const;

  LoaderOptions options_;
  TokenMeta meta_;
  std::unique_ptr<TokenFile> train_, val_;
  int64_t train_windows_ = 0, val_windows_ = 0;
};

}  // namespace kolos::data
