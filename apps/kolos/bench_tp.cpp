// kolos bench tp: 1D, 2D, 2.5D and 3D tensor parallelism on the same model and rank count. For each mode that the
// rank count allows (2D: a square; 2.5D: d·q² with d ≥ 2; 3D: a cube) it starts `kolos run -n N -- kolos bench
// train --per-rank` with parallel.tp = N and that mode, and once the same model in one process, and reports per rank
// (the largest over the ranks) the parameter bytes, the activation bytes (the CPU allocator's live bytes a forward
// adds: what autograd keeps for backward, counted by kolos itself) and the bytes its collectives move per step,
// each also as a fraction of one process's — next to the fraction the algorithm predicts. Step times only where
// the ranks fit the cores (DESIGN "Speed": more processes than cores time the scheduler, not the algorithm).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/core/subprocess.h"

namespace kolos::app {

namespace {

struct Mode {
  std::string name;     // 1d, 2d, 2.5d, 3d
  int q = 1, depth = 1;  // grid side / cube edge; 2.5D depth
  std::string skipped;  // why the rank count does not allow it (empty: runs)
  // The fraction of one process's parameters and activations each rank holds, as the algorithm has it. 1D splits
  // the matrices (1/t) but keeps the hidden state between the blocks whole on every rank (and the norms, biases of
  // row Linears and the position table), so neither of its fractions is one number: none is given (NaN).
  double param_share() const {
    return name == "1d" ? NAN : name == "3d" ? 1.0 / (q * q * q) : 1.0 / (q * q);
  }
  double activation_share() const {
    return name == "1d" ? NAN : name == "2d" ? 1.0 / (q * q) : name == "2.5d" ? 1.0 / (depth * q * q)
                                                                               : 1.0 / (q * q * q);
  }
};

Mode plan_mode(const std::string& name, int t) {
  Mode m{name};
  auto root = [t](int power) {  // the largest q with q^power <= t
    int q = 1;
    while (std::lround(std::pow(q + 1, power)) <= t) ++q;
    return q;
  };
  if (name == "1d") return m;
  if (name == "2d") {
    m.q = root(2);
    if (m.q * m.q != t) m.skipped = fmt::format("{} ranks are not a square q²", t);
  } else if (name == "2.5d") {  // the widest grid (q ≥ 2: q = 1 is only data parallelism) with a depth of at least 2
    for (m.q = root(2); m.q >= 2 && (t % (m.q * m.q) != 0 || t / (m.q * m.q) < 2); --m.q) {
    }
    if (m.q >= 2) m.depth = t / (m.q * m.q);
    if (m.q < 2) m.skipped = fmt::format("{} ranks are not d·q² with d ≥ 2, q ≥ 2", t);
  } else if (name == "3d") {
    m.q = root(3);
    if (m.q * m.q * m.q != t) m.skipped = fmt::format("{} ranks are not a cube q³", t);
  } else {
    throw InputError(fmt::format("kolos bench tp: --modes has \"{}\"; expected 1d, 2d, 2.5d or 3d", name));
  }
  return m;
}

std::string shell_quoted(const std::string& s) { return "'" + s + "'"; }

}  // namespace

int bench_tp_main(int argc, char** argv) {
  CLI::App app{"Compare 1D, 2D, 2.5D and 3D tensor parallelism on one model and rank count: parameter, activation "
               "and collective bytes per rank (counted by kolos), step time where the ranks fit the cores.",
               "bench tp"};
  int ranks = 4;
  std::string modes_text = "1d,2d,2.5d,3d", config = "gpt2-small";
  std::vector<std::string> overrides;
  int64_t steps = 2, warmup = 1;
  app.add_option("--ranks", ranks, "tensor-parallel ranks (processes on this machine; default 4)")
      ->check(CLI::Range(2, 64));
  app.add_option("--modes", modes_text, "comma-separated modes (default 1d,2d,2.5d,3d; those the ranks allow run)");
  app.add_option("--config", config, "recipe or TOML file (default gpt2-small with the shapes below)");
  app.add_option("--set", overrides,
                 "override one key: section.key=value (repeatable; default model 2 × 256, 8 heads, ffn 1024, vocab "
                 "4096, sequence 128, batch 8)");
  app.add_option("--steps", steps, "timed steps (default 2)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first (default 1)")->check(CLI::NonNegativeNumber);
  if (!parse_args(app, argc, argv)) return 0;

  const std::string self = self_executable("kolos bench tp");
  std::vector<std::string> sets = {"model.layers=2", "model.hidden=256", "model.heads=8", "model.kv_heads=0",
                                   "model.ffn_hidden=1024", "model.vocab=4096", "model.seq_len=128",
                                   "train.batch_size=8", "model.dropout=0", "train.threads=1", "parallel.dp=1"};
  sets.insert(sets.end(), overrides.begin(), overrides.end());
  std::string common = "bench train --per-rank --config " + shell_quoted(config) + " --steps " + std::to_string(steps) +
                       " --warmup " + std::to_string(warmup);
  for (const auto& s : sets) common += " --set " + shell_quoted(s);

  std::vector<Mode> modes;
  size_t start = 0;
  while (start <= modes_text.size()) {
    const size_t end = std::min(modes_text.find(',', start), modes_text.size());
    modes.push_back(plan_mode(modes_text.substr(start, end - start), ranks));
    start = end + 1;
  }
  const bool timed = ranks <= static_cast<int>(std::thread::hardware_concurrency());

  std::printf("kolos bench tp: %d ranks, %s\n", ranks, common.c_str());
  std::fflush(stdout);
  const nlohmann::json one = run_json_command(fmt::format("{} {} 2>&1", shell_quoted(self), common), "kolos bench tp");
  auto first = [](const nlohmann::json& r, const char* key) { return r["per_rank"][key][0].get<double>(); };
  const double whole_params = first(one, "param_bytes"), whole_act = first(one, "activation_bytes");
  std::printf("one process: %.0f parameter bytes, %.0f activation bytes, %.1f ms/step\n\n", whole_params, whole_act,
              one["step_ms_median"].get<double>());
  std::printf("| mode | grid | parameter bytes/rank | × one process (algorithm) | activation bytes/rank | "
              "× one process (algorithm) | collective bytes/step/rank | step ms |\n|---|---|---|---|---|---|---|---|\n");
  nlohmann::json results = nlohmann::json::array();
  for (const Mode& m : modes) {
    const std::string grid = m.name == "1d"     ? fmt::format("{}", ranks)
                             : m.name == "2d"   ? fmt::format("{0}×{0}", m.q)
                             : m.name == "2.5d" ? fmt::format("{0}×{0}×{1} (q×q×d)", m.q, m.depth)
                                                : fmt::format("{0}×{0}×{0}", m.q);
    if (!m.skipped.empty()) {
      std::printf("| %s | — | %s | | | | | |\n", m.name.c_str(), m.skipped.c_str());
      results.push_back({{"mode", m.name}, {"skipped", m.skipped}});
      continue;
    }
    std::string cmd = fmt::format("{} run -n {} -- {} {} --set parallel.tp={} --set parallel.tp_mode={}", shell_quoted(self),
                                  ranks, shell_quoted(self), common, ranks, m.name);
    if (m.name == "2.5d") cmd += fmt::format(" --set parallel.tp_depth={}", m.depth);
    const nlohmann::json r = run_json_command(cmd + " 2>&1", "kolos bench tp");
    const auto& pr = r["per_rank"];
    auto most = [&](const char* key) {
      double v = 0;
      for (const auto& x : pr[key]) v = std::max(v, x.get<double>());
      return v;
    };
    const double params = most("param_bytes"), act = most("activation_bytes"), comm = most("comm_bytes_per_step");
    const double ms = r["step_ms_median"].get<double>();
    auto share = [](double f) { return std::isnan(f) ? std::string("—") : fmt::format("{:.4f}", f); };
    auto number = [](double f) { return std::isnan(f) ? nlohmann::json() : nlohmann::json(f); };
    std::printf("| %s | %s | %.0f | %.4f (%s) | %.0f | %.4f (%s) | %.0f | %s |\n", m.name.c_str(), grid.c_str(),
                params, params / whole_params, share(m.param_share()).c_str(), act, act / whole_act,
                share(m.activation_share()).c_str(), comm,
                timed ? fmt::format("{:.1f}", ms).c_str() : "— (ranks > cores)");
    std::fflush(stdout);
    results.push_back({{"mode", m.name},
                       {"q", m.q},
                       {"depth", m.depth},
                       {"param_bytes_per_rank", params},
                       {"param_fraction", params / whole_params},
                       {"param_fraction_algorithm", number(m.param_share())},
                       {"activation_bytes_per_rank", act},
                       {"activation_fraction", act / whole_act},
                       {"activation_fraction_algorithm", number(m.activation_share())},
                       {"comm_bytes_per_step_per_rank", comm},
                       {"step_ms", timed ? nlohmann::json(ms) : nlohmann::json()},
                       {"per_rank", pr}});
  }
  nlohmann::json out = {{"bench", "tp"},
                        {"ranks", ranks},
                        {"one_process", {{"param_bytes", whole_params}, {"activation_bytes", whole_act}}},
                        {"modes", results}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace kolos::app
