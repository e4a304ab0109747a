// kolos verify: parity of parallel layouts against one process (DESIGN "Parity").
//
// For each layout ("dp=2,zero=1"), the same model is trained on the same global batch with the same initial weights
// (dropout forced to 0), once under the layout (its processes started with `kolos run`) and once as the reference:
// one process whose micro-batches are the layout's (batch_size = global_batch / (dp · grad_accum), grad_accum =
// global_batch / batch_size). Compared:
//   loss    |Δ| / |ref| at every logged step, the largest reported;
//   params  ‖Δ‖₂ / ‖ref‖₂ per tensor of the final checkpoints, the largest reported with its name. GPT-2's
//           attention key bias (the middle third of h.*.attn.qkv.bias) has an identically zero true gradient, so
//           Adam turns rounding into O(lr) steps there: it is left out of the comparison (named in the table);
//   shards  each rank's report (RUN/ranks/rank_R.json) holds exactly the Plan's share: at zero ≥ 1 the optimizer
//           moments are 2·flat/dp elements, at zero 2 the gradients flat/dp; otherwise the whole;
//   ops     the ledger's dp calls over the run are the algorithm's: per step and bucket one all-reduce in backward
//           (zero 0), or one reduce-scatter in backward (per micro-step at zero 2) and one all-gather in the
//           optimizer phase (zero 1, 2), and nothing else on the dp axis in backward.
// Tolerances (fp32): loss and params 1e-5.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kolos::parallel {

struct VerifyOptions {
  std::string config = "parity";        // recipe name or TOML file
  std::vector<std::string> overrides;   // --set, applied to every run
  std::string layouts = "dp=2;dp=2,zero=1;dp=2,zero=2";
  std::string out_dir = "runs/verify";  // one sub-directory per run, replaced
  std::string kolos_binary;             // the kolos executable (this one)
  double tolerance = 1e-5;
};

// One layout: its `key=value` items as config overrides (a bare key is parallel.<key>; grad_accum is train's) and
// its process count. InputError naming the layout and the item when an item is malformed or the global batch does
// not split; unknown keys are found when verify() loads each layout's config.
struct Layout {
  std::string text;                    // as given
  std::vector<std::string> overrides;  // section.key=value
  int processes = 1;
  int dp = 1, tp = 1, zero = 0;
  int64_t batch_size = 0, grad_accum = 1;
};
std::vector<Layout> parse_layouts(const std::string& text, int64_t global_batch);

// Runs everything, prints the table (and a JSON line last) and returns the exit code: 0 all within tolerance,
// 4 some layout out of tolerance or failing its shard / op checks; 2 / 3 when a run failed with that code.
int verify(const VerifyOptions& options);

}  // namespace kolos::parallel
