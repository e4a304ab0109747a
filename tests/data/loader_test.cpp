// The loader's sampler against its rule (loader.h): a step's global batch depends only on (seed, step); dp ranks
// and micro-steps are contiguous slices of it; each epoch visits every window once; targets are inputs shifted by
// one; and bad token directories are named in the error.
#include "kolos/data/loader.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <random>
#include <set>

#include "kolos/core/error.h"
#include "tests/support.h"

namespace kolos::data {
namespace {

constexpr int64_t kSeqLen = 16;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A byte-token directory over random bytes, so that every window's content is unique.
class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("loader");
    std::mt19937 rng(2);
    std::string text(20000, '\0');
    for (char& c : text) c = static_cast<char>(rng() % 256);
    write_text(*dir_ / "in.txt", text);
    PrepareOptions o;
    o.inputs = {*dir_ / "in.txt"};
    o.tokenizer = "byte";
    o.out_dir = path();
    prepare_tokens(o);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string path() { return *dir_ / "tokens"; }

  static LoaderOptions options(int64_t batch_size, int64_t grad_accum = 1, int64_t dp = 1, int64_t dp_rank = 0) {
    LoaderOptions o;
    o.path = path();
    o.vocab = 261;
    o.seq_len = kSeqLen;
    o.batch_size = batch_size;
    o.grad_accum = grad_accum;
    o.dp = dp;
    o.dp_rank = dp_rank;
    o.seed = 1234;
    return o;
  }

  // Window index of each row, found by content in the split's file; -1 when the row is no window.
  static std::vector<int64_t> window_ids(const Batch& batch, const std::string& file_name) {
    const TokenMeta meta = read_token_meta(path());
    TokenFile file(path() + "/" + file_name, meta.dtype);
    const int64_t n_windows = (file.size() - 1) / kSeqLen;
    std::map<std::vector<int64_t>, int64_t> by_content;
    for (int64_t w = 0; w < n_windows; ++w) {
      std::vector<int64_t> tokens(kSeqLen + 1);
      file.read(w * kSeqLen, kSeqLen + 1, tokens.data());
      by_content[tokens] = w;
    }
    std::vector<int64_t> ids;
    for (int64_t b = 0; b < batch.input.size(0); ++b) {
      std::vector<int64_t> row(batch.input[b].data_ptr<int64_t>(), batch.input[b].data_ptr<int64_t>() + kSeqLen);
      row.push_back(batch.target[b][kSeqLen - 1].item<int64_t>());
      const auto it = by_content.find(row);
      ids.push_back(it == by_content.end() ? -1 : it->second);
    }
    return ids;
  }

  static test::TempDir* dir_;
};
test::TempDir* LoaderTest::dir_ = nullptr;

void expect_equal(const Batch& a, const Batch& b) {
  EXPECT_TRUE(at::equal(a.input, b.input));
  EXPECT_TRUE(at::equal(a.target, b.target));
}

TEST_F(LoaderTest, SameSeedAndStepGiveTheSameBatch) {
  const Loader a(options(4, 2)), b(options(4, 2));
  for (int64_t step : {0, 1, 7, 500, 100000})
    for (int64_t micro = 0; micro < 2; ++micro) expect_equal(a.train_batch(step, micro), b.train_batch(step, micro));
  auto other_seed = options(4, 2);
  other_seed.seed = 99;
  EXPECT_FALSE(at::equal(Loader(other_seed).train_batch(0, 0).input, a.train_batch(0, 0).input));
  EXPECT_FALSE(at::equal(a.train_batch(1, 0).input, a.train_batch(0, 0).input));
}

TEST_F(LoaderTest, BatchShapesAndShiftedTargets) {
  const Loader loader(options(3));
  const Batch batch = loader.train_batch(5, 0);
  ASSERT_EQ(batch.input.sizes(), (std::vector<int64_t>{3, kSeqLen}));
  ASSERT_EQ(batch.target.sizes(), (std::vector<int64_t>{3, kSeqLen}));
  EXPECT_EQ(batch.input.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(batch.input.narrow(1, 1, kSeqLen - 1), batch.target.narrow(1, 0, kSeqLen - 1)));
  for (int64_t id : window_ids(batch, "train.bin")) EXPECT_GE(id, 0) << "a row that is no window of train.bin";
}

// dp ranks' micro-batches, concatenated in (rank, micro) order, are the single-process global batch.
TEST_F(LoaderTest, RanksAndMicroStepsSliceTheGlobalBatch) {
  const Loader whole(options(8));
  const Loader accum(options(2, 4));
  const Loader rank0(options(2, 2, 2, 0)), rank1(options(2, 2, 2, 1));
  for (int64_t step = 0; step < 12; ++step) {
    const Batch ref = whole.train_batch(step, 0);
    std::vector<at::Tensor> accum_inputs, dp_inputs, dp_targets;
    for (int64_t micro = 0; micro < 4; ++micro) accum_inputs.push_back(accum.train_batch(step, micro).input);
    for (const Loader* rank : {&rank0, &rank1})
      for (int64_t micro = 0; micro < 2; ++micro) {
        const Batch b = rank->train_batch(step, micro);
        dp_inputs.push_back(b.input);
        dp_targets.push_back(b.target);
      }
    EXPECT_TRUE(at::equal(at::cat(accum_inputs), ref.input)) << "step " << step;
    EXPECT_TRUE(at::equal(at::cat(dp_inputs), ref.input)) << "step " << step;
    EXPECT_TRUE(at::equal(at::cat(dp_targets), ref.target)) << "step " << step;
  }
}

// With one sample per step, steps 0..n-1 are epoch 0: every window exactly once; the next epoch is reshuffled.
TEST_F(LoaderTest, EachEpochVisitsEveryWindowOnce) {
  const Loader loader(options(1));
  const TokenMeta meta = read_token_meta(path());
  const int64_t n_windows = (meta.train_tokens - 1) / kSeqLen;
  std::vector<at::Tensor> inputs, targets;
  for (int64_t step = 0; step < 2 * n_windows; ++step) {
    const Batch b = loader.train_batch(step, 0);
    inputs.push_back(b.input);
    targets.push_back(b.target);
  }
  const Batch all{at::cat(inputs), at::cat(targets)};
  const auto ids = window_ids(all, "train.bin");
  const std::vector<int64_t> epoch0(ids.begin(), ids.begin() + n_windows), epoch1(ids.begin() + n_windows, ids.end());
  for (const auto& epoch : {epoch0, epoch1}) {
    const std::set<int64_t> distinct(epoch.begin(), epoch.end());
    EXPECT_EQ(static_cast<int64_t>(distinct.size()), n_windows);
    EXPECT_EQ(*distinct.begin(), 0);
    EXPECT_EQ(*distinct.rbegin(), n_windows - 1);
  }
  EXPECT_NE(epoch0, epoch1);
  std::vector<int64_t> in_order(n_windows);
  for (int64_t w = 0; w < n_windows; ++w) in_order[w] = w;
  EXPECT_NE(epoch0, in_order);
}

TEST_F(LoaderTest, ValidationBatchesAreInOrderAndWrap) {
  const Loader loader(options(4));
  const TokenMeta meta = read_token_meta(path());
  const int64_t n_windows = (meta.val_tokens - 1) / kSeqLen;
  EXPECT_EQ(loader.val_batches(), (n_windows + 3) / 4);
  EXPECT_DOUBLE_EQ(loader.val_bytes_per_token(), static_cast<double>(meta.val_bytes) / meta.val_tokens);
  for (int64_t index : {int64_t{0}, int64_t{1}, loader.val_batches() - 1, loader.val_batches()}) {
    const auto ids = window_ids(loader.val_batch(index), "val.bin");
    for (int64_t b = 0; b < 4; ++b) EXPECT_EQ(ids[b], (index * 4 + b) % n_windows) << "batch " << index;
  }
}

TEST_F(LoaderTest, BadDirectoriesAreNamed) {
  auto o = options(2);
  o.vocab = 50257;
  try {
    Loader loader(o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model.vocab"), std::string::npos) << what;
    EXPECT_NE(what.find("261"), std::string::npos) << what;
    EXPECT_NE(what.find("50257"), std::string::npos) << what;
  }
  o = options(2);
  o.path = path() + "-missing";
  try {
    Loader loader(o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("data.path " + o.path), std::string::npos) << e.what();
  }
  o = options(2);
  o.seq_len = 100000;
  EXPECT_THROW(Loader{o}, InputError);

  // A .bin that disagrees with meta.json.
  test::TempDir copy("loader-bad");
  const std::string bad = copy / "tokens";
  std::filesystem::copy(path(), bad);
  std::filesystem::resize_file(bad + "/train.bin", std::filesystem::file_size(bad + "/train.bin") - 2);
  o = options(2);
  o.path = bad;
  try {
    Loader loader(o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(bad + "/train.bin"), std::string::npos) << e.what();
  }
  std::filesystem::remove(bad + "/meta.json");
  try {
    Loader loader(o);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(bad + "/meta.json"), std::string::npos) << e.what();
  }
}

TEST(SyntheticLoader, ReproducibleTokensInRangeWithoutFiles) {
  LoaderOptions o;
  o.synthetic = true;
  o.path = "/nonexistent";
  o.vocab = 97;
  o.seq_len = 32;
  o.batch_size = 4;
  o.seed = 5;
  const Loader a(o), b(o);
  expect_equal(a.train_batch(3, 0), b.train_batch(3, 0));
  expect_equal(a.val_batch(2), b.val_batch(2));
  const Batch batch = a.train_batch(1000000, 0);
  EXPECT_GE(batch.input.min().item<int64_t>(), 0);
  EXPECT_LT(batch.input.max().item<int64_t>(), 97);
  EXPECT_GT(std::get<0>(at::_unique(batch.input)).numel(), 50);  // not a constant
  EXPECT_TRUE(at::equal(batch.input.narrow(1, 1, 31), batch.target.narrow(1, 0, 31)));
  EXPECT_FALSE(at::equal(a.train_batch(0, 0).input, a.val_batch(0).input));
  o.seed = 6;
  EXPECT_FALSE(at::equal(Loader(o).train_batch(3, 0).input, a.train_batch(3, 0).input));
  EXPECT_EQ(a.meta().vocab, 97);
  EXPECT_GT(a.val_batches(), 0);

  // The sampler rule holds for synthetic data too.
  o.seed = 5;
  o.batch_size = 2;
  o.dp = 2;
  o.dp_rank = 1;
  LoaderOptions whole = o;
  whole.batch_size = 4;
  whole.dp = 1;
  whole.dp_rank = 0;
  EXPECT_TRUE(at::equal(Loader(o).train_batch(3, 0).input, Loader(whole).train_batch(3, 0).input.narrow(0, 2, 2)));
}

}  // namespace
}  // namespace kolos::data
