#include "kolos/parallel/pipeline/stages.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "kolos/core/error.h"

namespace kolos::parallel::pipeline {

namespace {

std::vector<int64_t> parse_counts(const std::string& text, int64_t V, int64_t L) {
  std::vector<int64_t> counts;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    int64_t n = 0;
    size_t used = 0;
    try {
      n = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    KOLOS_CHECK(used > 0 && used == item.size() && n >= 1,
                "config key parallel.pp_layers = \"{}\": item \"{}\" is not a whole number >= 1 (expected one block "
                "count per virtual stage, e.g. \"3,3,2\")",
                text, item);
    counts.push_back(n);
    start = comma + 1;
  }
  KOLOS_CHECK(static_cast<int64_t>(counts.size()) == V,
              "config key parallel.pp_layers = \"{}\": {} counts, expected one per virtual stage: pp × pp_virtual = {}",
              text, counts.size(), V);
  int64_t sum = 0;
  for (int64_t n : counts) sum += n;
  KOLOS_CHECK(sum == L, "config key parallel.pp_layers = \"{}\": the counts sum to {}, model.layers is {}", text, sum,
              L);
  return counts;
}

// Contiguous split of L equal blocks into V parts (each >= 1 block), the last part carrying `tail` more cost,
// minimising the largest part; among the best, the one whose earlier parts are as large as possible.
std::vector<int64_t> balance(int64_t L, int64_t V, double block, double tail) {
  std::vector<int64_t> counts(V, 1);
  double best = std::numeric_limits<double>::infinity();
  // The last part gets k blocks; the others split L − k as evenly as possible (earlier parts the larger).
  for (int64_t k = 1; k <= L - (V - 1); ++k) {
    const int64_t rest = L - k, parts = V - 1;
    const double last = k * block + tail;
    const double others = parts > 0 ? static_cast<double>((rest + parts - 1) / parts) * block : 0.0;
    const double cost = std::max(last, others);
    if (parts == 0 && k != L) continue;
    if (cost < best) {
      best = cost;
      for (int64_t i = 0; i < parts; ++i) counts[i] = rest / parts + (i < rest % parts ? 1 : 0);
      counts[V - 1] = k;
    }
  }
  return counts;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> split_layers(const ModelConfig& model, int pp, int virtual_stages,
                                                      const std::string& pp_layers) {
  const int64_t V = static_cast<int64_t>(pp) * virtual_stages, L = model.layers;
  KOLOS_CHECK(L >= V,
              "parallel.pp = {} with pp_virtual = {}: {} virtual stages need at least as many blocks, model.layers is {}",
              pp, virtual_stages, V, L);
  std::vector<int64_t> counts;
  if (!pp_layers.empty()) {
    counts = parse_counts(pp_layers, V, L);
  } else {
    const double C = static_cast<double>(model.hidden), F = static_cast<double>(model.ffn_hidden);
    const int64_t kv = model.kv_heads > 0 ? model.kv_heads : model.heads;
    const double attn = C * C * 2 + 2 * C * (C / model.heads * kv);
    const double mlp = (model.arch == "llama" ? 3 : 2) * C * F;
    counts = balance(L, V, attn + mlp, static_cast<double>(model.vocab) * C);
  }
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t at = 0;
  for (int64_t n : counts) {
    ranges.emplace_back(at, at + n);
    at += n;
  }
  return ranges;
}

std::vector<models::Model::Segment> stage_segments(const ModelConfig& model, int pp, int virtual_stages,
                                                   const std::string& pp_layers, int stage) {
  const auto ranges = split_layers(model, pp, virtual_stages, pp_layers);
  const int V = pp * virtual_stages;
  std::vector<models::Model::Segment> segments;
  for (int c = 0; c < virtual_stages; ++c) {
    const int u = c * pp + stage;
    models::Model::Segment s;
    s.first = ranges[u].first;
    s.end = ranges[u].second;
    s.stem = u == 0;
    s.head = u == V - 1;
    segments.push_back(s);
  }
  return segments;
}

}  // namespace kolos::parallel::pipeline
