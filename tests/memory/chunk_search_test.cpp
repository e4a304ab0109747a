// Chunk layout (pack_chunks) on hand-worked cases, and the chunk-size search against an independent waste count:
// the searched size wastes no more padding than any candidate it considered (issue 4, "Chunk size").
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

#include "kolos/memory/chunk_search.h"

namespace kolos::memory {
namespace {

// The packing rule of chunk_search.h written out again, as plainly as possible: the padding of a layout.
int64_t reference_waste(const std::vector<int64_t>& numels, const std::vector<int>& blocks, int64_t chunk_size,
                        int group) {
  const int64_t cap = (chunk_size + group - 1) / group * group;
  int64_t waste = 0, used = -1;  // used < 0: no open chunk
  int block = -1;
  for (size_t i = 0; i < numels.size(); ++i) {
    const int b = blocks.empty() ? 0 : blocks[i];
    if (used >= 0 && (b != block || used + numels[i] > cap)) {
      waste += cap - used;
      used = -1;
    }
    if (numels[i] > cap) {
      waste += (numels[i] + group - 1) / group * group - numels[i];
      continue;
    }
    if (used < 0) used = 0;
    used += numels[i];
    block = b;
  }
  if (used >= 0) waste += cap - used;
  return waste;
}

TEST(ChunkLayout, PacksWholeParametersInOrder) {
  // 3 + 5 fill the first chunk of 8; 2 opens the second; 7 does not fit beside it and opens the third.
  const ChunkLayout l = pack_chunks({3, 5, 2, 7}, {}, 8, 1);
  ASSERT_EQ(l.chunks.size(), 3u);
  EXPECT_EQ(l.chunks[0].used, 8);
  EXPECT_EQ(l.chunks[1].used, 2);
  EXPECT_EQ(l.chunks[2].used, 7);
  EXPECT_EQ(l.waste(), 0 + 6 + 1);
  EXPECT_EQ(l.slots[1].chunk, 0);
  EXPECT_EQ(l.slots[1].offset, 3);
  EXPECT_EQ(l.slots[2].chunk, 1);
  EXPECT_EQ(l.slots[3].chunk, 2);
  EXPECT_EQ(l.slots[3].offset, 0);
  EXPECT_EQ(l.chunks[1].first_param, 2);
  EXPECT_EQ(l.chunks[1].end_param, 3);
}

TEST(ChunkLayout, LargeParameterGetsItsOwnChunkAndCapacitiesAreMultiplesOfTheGroup) {
  // Group 4: the chunk size 7 becomes a capacity of 8; the 10-element parameter gets a chunk of 12 (waste 2); the
  // 3-element one a regular chunk of 8 (waste 5).
  const ChunkLayout l = pack_chunks({10, 3}, {}, 7, 4);
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_TRUE(l.chunks[0].dedicated);
  EXPECT_EQ(l.chunks[0].capacity, 12);
  EXPECT_FALSE(l.chunks[1].dedicated);
  EXPECT_EQ(l.chunks[1].capacity, 8);
  EXPECT_EQ(l.waste(), 2 + 5);
  EXPECT_EQ(l.total_capacity(), 20);
}

TEST(ChunkLayout, ChunksNeverSpanBlocks) {
  const ChunkLayout l = pack_chunks({2, 2, 2}, {0, 0, 1}, 8, 2);
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_EQ(l.chunks[0].block, 0);
  EXPECT_EQ(l.chunks[0].used, 4);
  EXPECT_EQ(l.chunks[1].block, 1);
  EXPECT_EQ(l.waste(), 4 + 6);
  EXPECT_THROW(pack_chunks({2, 2}, {1, 0}, 8, 1), std::invalid_argument);  // blocks out of order
  EXPECT_THROW(pack_chunks({2, 0}, {}, 8, 1), std::invalid_argument);     // an empty parameter
}

TEST(ChunkSearch, HandWorkedCandidates) {
  // {4, 4, 4} at sizes 4, 8, 12: wastes 0 (three full chunks), 4 ([4 4] [4 .]), 0 (one full chunk). Ties go to
  // the smaller size.
  ChunkSearchOptions o;
  o.min_size = 4;
  o.max_size = 12;
  o.step = 4;
  const ChunkSearchResult r = search_chunk_size({4, 4, 4}, {}, o);
  ASSERT_EQ(r.candidates.size(), 3u);
  EXPECT_EQ(r.candidates[0].waste, 0);
  EXPECT_EQ(r.candidates[1].waste, 4);
  EXPECT_EQ(r.candidates[2].waste, 0);
  EXPECT_EQ(r.chunk_size, 4);
  EXPECT_EQ(r.waste, 0);
  EXPECT_EQ(r.chunks, 3);
  o.step = 0;
  EXPECT_THROW(search_chunk_size({4}, {}, o), std::invalid_argument);
}

// The parameters of a GPT-2-like model (the parity shapes: 8 layers, hidden 64, ffn 256, vocabulary 261,
// sequence 32) in registration order, with their blocks: 0 embeddings, 1..8 transformer blocks, 9 final norm.
void gpt_params(std::vector<int64_t>& numels, std::vector<int>& blocks) {
  const int64_t h = 64, f = 256, V = 261, T = 32;
  numels = {V * h, T * h};
  blocks = {0, 0};
  for (int l = 1; l <= 8; ++l)
    for (int64_t n : {h, h, h * 3 * h, 3 * h, h * h, h, h, h, h * f, f, f * h, h}) {
      numels.push_back(n);
      blocks.push_back(l);
    }
  numels.push_back(h);
  numels.push_back(h);
  blocks.push_back(9);
  blocks.push_back(9);
}

TEST(ChunkSearch, SearchedSizeWastesNoMoreThanAnyCandidate) {
  std::vector<int64_t> numels;
  std::vector<int> blocks;
  gpt_params(numels, blocks);
  for (int group : {1, 2, 4}) {
    ChunkSearchOptions o;
    o.min_size = 4096;
    o.max_size = 65536;
    o.step = 64;
    o.group_size = group;
    const ChunkSearchResult r = search_chunk_size(numels, blocks, o);
    ASSERT_EQ(r.candidates.size(), static_cast<size_t>((65536 - 4096) / 64 + 1));
    EXPECT_EQ(r.waste, reference_waste(numels, blocks, r.chunk_size, group));
    EXPECT_EQ(r.waste, pack_chunks(numels, blocks, r.chunk_size, group).waste());
    for (const auto& c : r.candidates) {
      ASSERT_EQ(c.waste, reference_waste(numels, blocks, c.chunk_size, group)) << "size " << c.chunk_size;
      EXPECT_LE(r.waste, c.waste) << "size " << c.chunk_size;
    }
    // Not a degenerate win: fixed sizes one would pick by hand waste more.
    for (int64_t fixed : {int64_t{4096}, int64_t{16384}, int64_t{65536}})
      EXPECT_LE(r.waste, reference_waste(numels, blocks, fixed, group));
    // The total is what the layout stores: parameters plus waste.
    int64_t total = 0;
    for (int64_t n : numels) total += n;
    EXPECT_EQ(pack_chunks(numels, blocks, r.chunk_size, group).total_capacity(), total + r.waste);
  }
}

}  // namespace
}  // namespace kolos::memory
