// Chunk layout and chunk-size search (DESIGN "Chunks"; Gemini's search_utils, reference/colossalai.md §1(a)).
//
// The packing rule, shared by the search and by ChunkManager so that the search measures the very layout that is
// built. Parameters (sizes in elements, in registration order) are placed one after the other:
//   - a chunk holds whole parameters back to back; a parameter never spans chunks;
//   - a chunk never spans blocks: the first parameter of a new block opens a new chunk (a block's chunks are then
//     gathered and released together, and no chunk is needed by two blocks);
//   - a parameter that does not fit in the room left in the open chunk closes it and opens a new one;
//   - a parameter larger than the chunk capacity gets a chunk of its own ("dedicated"), of capacity
//     round_up(numel, group_size).
// Regular chunks all have capacity round_up(chunk_size, group_size): one size, so released buffers are reused and a
// placement policy moves uniform units. Every capacity is a multiple of group_size, so a chunk splits into
// group_size equal contiguous shards (rank r owns [r·cap/n, (r+1)·cap/n)).
//
// Waste = Σ over chunks (capacity − elements used): the padding that is stored (in shards) and communicated (every
// gather and gradient reduction moves whole chunks). The search picks the candidate with the least waste.
#pragma once

#include <cstdint>
#include <vector>

namespace kolos::memory {

// Where the parameters went.
struct ChunkLayout {
  struct Chunk {
    int64_t capacity = 0;  // elements, a multiple of the group size
    int64_t used = 0;      // elements holding parameters (the rest is zero padding at the end)
    int block = 0;
    int first_param = 0, end_param = 0;  // parameters [first_param, end_param) in registration order
    bool dedicated = false;              // one parameter larger than the chunk size
  };
  struct Slot {
    int chunk = 0;
    int64_t offset = 0;  // elements from the start of the chunk
  };
  std::vector<Chunk> chunks;
  std::vector<Slot> slots;  // per parameter
  int64_t waste() const;
  int64_t total_capacity() const;
};

// Packs `numels` (each > 0) with the rule above. `blocks`: the block of each parameter, non-decreasing; empty means
// one block. chunk_size > 0, group_size >= 1. std::invalid_argument on bad arguments (a caller bug).
ChunkLayout pack_chunks(const std::vector<int64_t>& numels, const std::vector<int>& blocks, int64_t chunk_size,
                        int group_size);

struct ChunkSearchOptions {
  int64_t min_size = 1 << 20;  // elements; candidates are min_size, min_size + step, ... <= max_size
  int64_t max_size = 32 << 20;
  int64_t step = 1024;
  int group_size = 1;          // the dp (ZeRO) group size: every capacity is a multiple of it
};

struct ChunkSearchResult {
  struct Candidate {
    int64_t chunk_size = 0;  // the candidate as given (capacity = round_up(chunk_size, group_size))
    int64_t waste = 0;
    int64_t chunks = 0;
  };
  int64_t chunk_size = 0;  // the best candidate: least waste; on a tie, the smallest size (least resident memory)
  int64_t waste = 0;
  int64_t chunks = 0;
  std::vector<Candidate> candidates;  // every candidate considered, in increasing size
};

// Tries every candidate size in [min_size, max_size] at `step` with pack_chunks. Smaller chunks waste less but cost
// more (and smaller) collectives: min_size bounds that. std::invalid_argument when min_size < 1, max_size < min_size
// or step < 1 (the caller validates user input first).
ChunkSearchResult search_chunk_size(const std::vector<int64_t>& numels, const std::vector<int>& blocks,
                                    const ChunkSearchOptions& options);

}  // namespace kolos::memory
