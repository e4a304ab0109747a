#include "kolos/memory/chunk_search.h"

#include <stdexcept>
#include <string>

namespace kolos::memory {

namespace {

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

}  // namespace

int64_t ChunkLayout::waste() const {
  int64_t w = 0;
  for (const auto& c : chunks) w += c.capacity - c.used;
  return w;
}

int64_t ChunkLayout::total_capacity() const {
  int64_t t = 0;
  for (const auto& c : chunks) t += c.capacity;
  return t;
}

ChunkLayout pack_chunks(const std::vector<int64_t>& numels, const std::vector<int>& blocks, int64_t chunk_size,
                        int group_size) {
  if (chunk_size < 1 || group_size < 1) throw std::invalid_argument("pack_chunks: chunk_size and group_size must be >= 1");
  if (!blocks.empty() && blocks.size() != numels.size())
    throw std::invalid_argument("pack_chunks: one block per parameter expected");
  const int64_t capacity = round_up(chunk_size, group_size);
  ChunkLayout layout;
  layout.slots.resize(numels.size());
  bool open = false;  // layout.chunks.back() is a regular chunk that may take more parameters
  for (size_t i = 0; i < numels.size(); ++i) {
    const int64_t n = numels[i];
    const int block = blocks.empty() ? 0 : blocks[i];
    if (n < 1) throw std::invalid_argument("pack_chunks: parameter " + std::to_string(i) + " has no elements");
    if (i > 0 && !blocks.empty() && block < blocks[i - 1])
      throw std::invalid_argument("pack_chunks: blocks must be non-decreasing (parameter " + std::to_string(i) + ")");
    if (open) {
      auto& c = layout.chunks.back();
      if (c.block != block || c.used + n > c.capacity) open = false;
    }
    if (n > capacity) {
      ChunkLayout::Chunk c;
      c.capacity = round_up(n, group_size);
      c.used = n;
      c.block = block;
      c.first_param = static_cast<int>(i);
      c.end_param = static_cast<int>(i) + 1;
      c.dedicated = true;
      layout.slots[i] = {static_cast<int>(layout.chunks.size()), 0};
      layout.chunks.push_back(c);
      open = false;  // the next parameter opens a regular chunk
      continue;
    }
    if (!open) {
      ChunkLayout::Chunk c;
      c.capacity = capacity;
      c.block = block;
      c.first_param = static_cast<int>(i);
      c.end_param = static_cast<int>(i);
      layout.chunks.push_back(c);
      open = true;
    }
    auto& c = layout.chunks.back();
    layout.slots[i] = {static_cast<int>(layout.chunks.size()) - 1, c.used};
    c.used += n;
    c.end_param = static_cast<int>(i) + 1;
  }
  return layout;
}

ChunkSearchResult search_chunk_size(const std::vector<int64_t>& numels, const std::vector<int>& blocks,
                                    const ChunkSearchOptions& options) {
  if (options.min_size < 1 || options.max_size < options.min_size || options.step < 1 || options.group_size < 1)
    throw std::invalid_argument("search_chunk_size: need 1 <= min_size <= max_size, step >= 1, group_size >= 1");
  ChunkSearchResult result;
  bool first = true;
  for (int64_t size = options.min_size; size <= options.max_size; size += options.step) {
    const ChunkLayout layout = pack_chunks(numels, blocks, size, options.group_size);
    ChunkSearchResult::Candidate c{size, layout.waste(), static_cast<int64_t>(layout.chunks.size())};
    result.candidates.push_back(c);
    if (first || c.waste < result.waste) {  // strictly less: ties keep the smaller size
      result.chunk_size = c.chunk_size;
      result.waste = c.waste;
      result.chunks = c.chunks;
      first = false;
    }
    if (options.max_size - size < options.step) break;  // no overflow past max_size
  }
  return result;
}

}  // namespace kolos::memory
