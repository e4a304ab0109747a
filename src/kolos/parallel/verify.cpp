#include "kolos/parallel/verify.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kolos/checkpoint/checkpoint.h"
#include "kolos/config/config.h"
#include "kolos/models/model.h"
#include "kolos/core/error.h"
#include "kolos/optim/optimizer.h"
#include "kolos/parallel/apply.h"
#include "kolos/parallel/pipeline/stages.h"
#include "kolos/parallel/plan.h"

extern char** environ;

namespace fs = std::filesystem;

namespace kolos::parallel {

namespace {

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!trim(item).empty()) out.push_back(trim(item));
  return out;
}

int64_t to_int(const std::string& value, const std::string& item, const std::string& layout) {
  try {
    size_t pos = 0;
    const int64_t v = std::stoll(value, &pos);
    if (pos == value.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw InputError(fmt::format("--layouts: layout \"{}\": item \"{}\" needs a whole number >= 0", layout, item));
}

// Runs argv with stdout and stderr into `log`; returns the exit status (128 + signal when killed).
int run_logged(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  KOLOS_CHECK(rc == 0, "kolos verify: cannot start {}: {}", argv[0], std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string last_error_line(const std::string& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line))
    if (!trim(line).empty()) last = line;
  return last;
}

std::map<int64_t, double> read_losses(const std::string& run_dir) {
  std::map<int64_t, double> losses;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("loss")) losses[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return losses;
}

checkpoint::TensorMap final_params(const std::string& run_dir) {
  auto latest = checkpoint::latest_checkpoint(run_dir);
  KOLOS_CHECK(latest.has_value(), "kolos verify: run {} left no checkpoint", run_dir);
  return checkpoint::load_checkpoint(*latest).model;
}

struct Outcome {
  double loss_rel = 0, param_rel = 0;
  std::string param_tensor;
  std::vector<std::pair<std::string, double>> over;  // parameter tensors beyond the tolerance
  std::string shards = "ok", ops = "ok";
  bool ok = true;
};

// ‖a − b‖ / ‖b‖ (0 when both are zero).
double rel(const at::Tensor& a, const at::Tensor& b) {
  const double d = (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>();
  const double r = b.to(at::kDouble).norm().item<double>();
  return r == 0 ? (d == 0 ? 0 : INFINITY) : d / r;
}

// What one pipeline stage runs (the whole model without pipeline parallelism), for the op counts and the shard
// check: its blocks (and how many of them are recomputed), whether it has the stem and the head, its messages per
// micro-batch to and from the other stages, and the parameter elements one of its tp ranks holds.
struct StageWork {
  int64_t blocks = 0, recomputed = 0;
  bool stem = true, head = true;
  int64_t act_sends = 0, act_recvs = 0;  // per micro-batch (gradients go the other way: as many)
  int64_t shape_sends = 0, shape_recvs = 0;  // per run: one per stage pair
  bool tied = false;  // exchanges the tied embedding's gradient with another stage once per step
  int64_t elements = 0;
  bool gpt = false;  // GPT-2 (biases, LayerNorm, a position table) rather than LLaMA
};

StageWork stage_work(const Config& config, const Plan& plan, int stage) {
  StageWork w;
  auto model = models::Model::create(config.model);
  const auto checkpointed = checkpointed_blocks(config);
  std::vector<models::Model::Segment> segments = {{0, config.model.layers, true, true}};
  if (plan.pp > 1) {
    segments = pipeline::stage_segments(config.model, plan.pp, plan.pp_virtual, config.parallel.pp_layers, stage);
    model->set_segments(segments);
  }
  w.stem = w.head = false;
  w.gpt = config.model.arch == "gpt2";
  const int V = plan.pp * plan.pp_virtual;
  for (size_t c = 0; c < segments.size(); ++c) {
    const auto& seg = segments[c];
    w.blocks += seg.end - seg.first;
    for (int64_t i = seg.first; i < seg.end; ++i) w.recomputed += checkpointed[i] ? 1 : 0;
    w.stem = w.stem || seg.stem;
    w.head = w.head || seg.head;
    if (plan.pp == 1) continue;
    const int u = static_cast<int>(c) * plan.pp + stage;
    w.act_sends += u < V - 1 ? 1 : 0;
    w.act_recvs += u > 0 ? 1 : 0;
  }
  if (plan.pp > 1) {
    w.shape_sends = stage < plan.pp - 1 || plan.pp_virtual > 1 ? 1 : 0;
    w.shape_recvs = stage > 0 || plan.pp_virtual > 1 ? 1 : 0;
    w.tied = !model->tied_embedding().empty() && (stage == 0 || stage == plan.pp - 1);
  }
  for (const auto& spec : model->param_specs()) {
    int64_t n = 1;
    for (int64_t d : spec.local_shape(plan.tp_layout())) n *= d;
    w.elements += n;
  }
  return w;
}

// The collectives each micro-step of training makes on the tp, sp and pp axes (op, phase) → calls, for a stage
// that runs `w` (the thread-rank tests in tests/parallel/ check the same counts and their bytes):
//   tp (1D):    forward one all-reduce per row-parallel output (2 per block) and per vocab-parallel embedding (the
//               stem), and 3 in the vocab-parallel loss (the head); backward one per column-parallel input (2 per
//               block) and the head's.
//   Megatron-SP: the all-reduces at block boundaries become an all-gather (forward, + the head's input) and a
//               reduce-scatter; backward the duals (the stem's slice: an all-gather); the sequence-sliced
//               gradients are summed once per step.
//   sp ring:    forward 2 sends (keys, values) per shift, p − 1 shifts per block; backward 2 (p − 1) + 2 p (the
//               gradient accumulators take one more shift home).
//   sp Ulysses: 4 all-to-alls per block (q, k, v and the output) in forward, 4 in backward.
//   pp:         per micro-batch one activation send per chunk that is not the last virtual stage (forward) and
//               one gradient send back per chunk that is not the first (backward), receives the duals; one shape
//               message per stage pair per run (forward); the tied embedding's gradient once per step each way
//               (backward); the squared gradient norm summed once per step (optimizer).
//   tp 2D (tensor/tp2d.h, on the grid's rows tp_row and columns tp_col, q = √tp): a Linear (GPT-2 4 per block with
//               biases, LLaMA 7 without) is q row and q column broadcasts forward, the same plus q row and q column
//               reduces backward; a bias or norm affine one column all-gather forward, one reduce-scatter backward;
//               a norm's statistics 2 row all-reduces forward (LayerNorm; RMSNorm 1), 1 backward. The stem: the
//               embedding's row reduce-scatter (all-gather backward) and, off the grid's diagonal, one send and one
//               receive on tp each way; GPT-2's position table one column all-gather (reduce-scatter backward).
//               The head: the final norm, the head's product (a Linear without bias), 3 row all-reduces in the
//               loss and one column all-reduce of the rows' means.
//   tp 2.5D (tensor/tp25d.h, tp_depth = d layers of a q × q grid, q = √(tp / d)): within each layer exactly the 2D
//               counts above on tp_row and tp_col (the layer's tokens are fewer, the calls the same; the transposes
//               off the layer's diagonal, on the layer's group, recorded under tp). Along the depth (tp_depth):
//               every use of a parameter piece all-reduces that piece's gradient once in backward (copy_to,
//               tp2d.h's grid_sharding) — per block GPT-2 12 (4 Linear weights, 4 biases, 2 LayerNorms' weight and
//               bias), LLaMA 9 (7 weights, 2 RMSNorm weights); the stem 1 (the token table; GPT-2 + the position
//               table); the head the final norm's pieces (GPT-2 2, LLaMA 1) and the head weight (the tied table
//               again, or lm_head): 1. Forward, one all-reduce of the layers' mean losses (in the head).
//   tp 3D (tensor/tp3d.h, a q × q × q cube, q = ∛tp): column Linears (GPT-2: qkv, fc; LLaMA: q, k, v, gate, up)
//               have K axis y, row Linears (the output projections) z. A Linear with K axis k and N axis n:
//               forward an all-gather of the input along n, of the weight along x, a reduce-scatter along k;
//               backward an all-gather of dY along k, the input's and the weight's all-gathers again,
//               reduce-scatters of dX along n and dW along x. A bias (GPT-2):
//               forward all-gathers along x then k, backward reduce-scatters along k then x. A norm: its statistics
//               all-reduced along y (LayerNorm 2, RMSNorm 1; backward 1), its vectors (stacked) gathered along x
//               then z (reduce-scattered back). The stem: the table's all-gather along x and the look-up's
//               reduce-scatter along z (duals in backward); GPT-2's position table as a norm's vectors. The head:
//               the final norm, a column Linear without bias; the loss 3 all-reduces along z and one each along x
//               and y.
// A block under activation checkpointing (`recomputed` of them) runs its forward again in backward, with its forward
// collectives (counted in the forward phase). So does the head (final norm, head product and loss) in the grid modes
// (2D, 2.5D, 3D: Model::final_loss recomputes it rather than keep its block of logits): its forward collectives
// count twice (`head_fwd`).
std::map<std::tuple<std::string, std::string, std::string>, int64_t> axis_ops(const Plan& plan, const StageWork& w,
                                                                             int64_t micro_steps, int64_t steps,
                                                                             int tp_coord) {
  std::map<std::tuple<std::string, std::string, std::string>, int64_t> want;
  const int64_t L = w.blocks, m = micro_steps, F = w.blocks + w.recomputed;  // block forwards per micro-step
  const int64_t stem = w.stem ? 1 : 0, head = w.head ? 1 : 0;
  const int64_t head_fwd = plan.tp_layout().grid ? 2 * head : head;
  if (plan.tp > 1 && plan.tp_mode == "3d") {
    const int64_t col = w.gpt ? 2 : 5, row = 2, col_b = w.gpt ? col : 0, row_b = w.gpt ? row : 0;
    const int64_t norms = 2, stats = w.gpt ? 2 : 1, wpe = w.gpt ? stem : 0;
    auto add = [&](const char* axis, const char* op, const char* phase, int64_t n) { want[{axis, op, phase}] += n; };
    // Blocks: forward F times, backward L times.
    add("tp_z", "all_gather", "forward", F * (col + row_b + norms));
    add("tp_y", "all_gather", "forward", F * (row + col_b));
    add("tp_x", "all_gather", "forward", F * (col + row + col_b + row_b + norms));
    add("tp_y", "reduce_scatter", "forward", F * col);
    add("tp_z", "reduce_scatter", "forward", F * row);
    add("tp_y", "all_reduce", "forward", F * norms * stats);
    add("tp_y", "all_gather", "backward", L * (col + row));  // dY of column Linears, the input of row ones
    add("tp_z", "all_gather", "backward", L * (row + col));  // dY of row Linears, the input of column ones
    add("tp_x", "all_gather", "backward", L * (col + row));  // the weights again
    add("tp_z", "reduce_scatter", "backward", L * (col + row_b + norms));
    add("tp_y", "reduce_scatter", "backward", L * (row + col_b));
    add("tp_x", "reduce_scatter", "backward", L * (col + row + col_b + row_b + norms));
    add("tp_y", "all_reduce", "backward", L * norms);
    // The stem: the table (x), the look-up's scatter (z); the position table as a norm's vectors.
    add("tp_x", "all_gather", "forward", stem + wpe);
    add("tp_z", "all_gather", "forward", wpe);
    add("tp_z", "reduce_scatter", "forward", stem);
    add("tp_x", "reduce_scatter", "backward", stem + wpe);
    add("tp_z", "reduce_scatter", "backward", wpe);
    add("tp_z", "all_gather", "backward", stem);
    // The head: the final norm, the head's column Linear (no bias), the loss.
    add("tp_y", "all_reduce", "forward", head_fwd * (stats + 1));
    add("tp_x", "all_gather", "forward", head_fwd * 2);
    add("tp_z", "all_gather", "forward", head_fwd * 2);
    add("tp_y", "reduce_scatter", "forward", head_fwd);
    add("tp_z", "all_reduce", "forward", head_fwd * 3);
    add("tp_x", "all_reduce", "forward", head_fwd);
    add("tp_y", "all_reduce", "backward", head);
    add("tp_z", "reduce_scatter", "backward", head * 2);
    add("tp_x", "reduce_scatter", "backward", head * 2);
    add("tp_y", "all_gather", "backward", head);
    add("tp_z", "all_gather", "backward", head);  // the head's input and weight again
    add("tp_x", "all_gather", "backward", head);
    for (auto& [key, n] : want) n *= m;
  } else if (plan.tp > 1 && (plan.tp_mode == "2d" || plan.tp_mode == "2.5d")) {
    const int64_t q = plan.tp_layout().q(), linears = w.gpt ? 4 : 7, affines = (w.gpt ? 4 : 0) + 2;
    const int64_t stats = w.gpt ? 2 : 1, wpe = w.gpt ? stem : 0;
    const int64_t in_layer = tp_coord % (q * q);  // 2.5D: the position in this rank's layer
    const int64_t transposes = in_layer / q != in_layer % q ? stem : 0;
    if (plan.tp_layout().depth > 1) {
      const int64_t block_pieces = w.gpt ? 12 : 9, final_norm = w.gpt ? 2 : 1;
      want[{"tp_depth", "all_reduce", "backward"}] =
          m * (block_pieces * L + (1 + wpe) * stem + (final_norm + 1) * head);
      want[{"tp_depth", "all_reduce", "forward"}] = m * head_fwd;
    }
    for (const char* axis : {"tp_row", "tp_col"}) {
      want[{axis, "broadcast", "forward"}] = m * q * (linears * F + head_fwd);
      want[{axis, "broadcast", "backward"}] = m * q * (linears * L + head);
      want[{axis, "reduce", "backward"}] = m * q * (linears * L + head);
    }
    want[{"tp_col", "all_gather", "forward"}] = m * (affines * F + wpe + head_fwd);
    want[{"tp_col", "reduce_scatter", "backward"}] = m * (affines * L + wpe + head);
    want[{"tp_row", "all_reduce", "forward"}] = m * (2 * stats * F + (stats + 3) * head_fwd);
    want[{"tp_row", "all_reduce", "backward"}] = m * (2 * L + head);
    want[{"tp_col", "all_reduce", "forward"}] = m * head_fwd;
    want[{"tp_row", "reduce_scatter", "forward"}] = m * stem;
    want[{"tp_row", "all_gather", "backward"}] = m * stem;
    for (const char* phase : {"forward", "backward"}) {
      want[{"tp", "send", phase}] = m * transposes;
      want[{"tp", "recv", phase}] = m * transposes;
    }
  } else if (plan.tp > 1 && !plan.megatron_sp) {
    want[{"tp", "all_reduce", "forward"}] = m * (2 * F + stem + 3 * head);
    want[{"tp", "all_reduce", "backward"}] = m * (2 * L + head);
  } else if (plan.tp > 1) {
    want[{"tp", "all_gather", "forward"}] = m * (2 * F + head);
    want[{"tp", "reduce_scatter", "forward"}] = m * 2 * F;
    want[{"tp", "all_reduce", "forward"}] = m * (stem + 3 * head);
    want[{"tp", "reduce_scatter", "backward"}] = m * (2 * L + head);
    want[{"tp", "all_gather", "backward"}] = m * (2 * L + stem);
    want[{"tp", "all_reduce", "backward"}] = steps;
  }
  if (plan.sp > 1 && plan.sp_mode == "ring") {
    want[{"sp", "send", "forward"}] = m * F * 2 * (plan.sp - 1);
    want[{"sp", "send", "backward"}] = m * L * (2 * (plan.sp - 1) + 2 * plan.sp);
  } else if (plan.sp > 1) {
    want[{"sp", "all_to_all", "forward"}] = m * F * 4;
    want[{"sp", "all_to_all", "backward"}] = m * L * 4;
  }
  if (plan.pp > 1) {
    const int64_t tied = w.tied ? steps : 0;
    want[{"pp", "send", "forward"}] = m * w.act_sends + w.shape_sends;
    want[{"pp", "recv", "forward"}] = m * w.act_recvs + w.shape_recvs;
    want[{"pp", "send", "backward"}] = m * w.act_recvs + tied;
    want[{"pp", "recv", "backward"}] = m * w.act_sends + tied;
    want[{"pp", "all_reduce", "optimizer"}] = steps;
  }
  return want;
}

void check_ranks(const Layout& layout, const Plan& plan, const std::vector<StageWork>& stages,
                 const std::string& run_dir, int64_t steps, int64_t states, Outcome& out) {
  for (int r = 0; r < layout.processes; ++r) {
    const fs::path path = fs::path(run_dir) / "ranks" / fmt::format("rank_{}.json", r);
    std::ifstream in(path);
    if (!in) {
      out.shards = fmt::format("rank {} wrote no report", r);
      out.ok = false;
      return;
    }
    const auto j = nlohmann::json::parse(in, nullptr, false);
    const auto& held = j["held"];
    const int64_t flat = held["flat_numel"], buckets = held["buckets"];
    const int stage = j.value("pp_stage", 0);
    if (stage < 0 || stage >= static_cast<int>(stages.size())) {
      out.shards = fmt::format("rank {} reports pipeline stage {} of {}", r, stage, stages.size());
      out.ok = false;
      return;
    }
    const StageWork& work = stages[stage];
    const int64_t elements = work.elements;
    // The ranks that train on other tokens (dp × sp) average gradients and share the ZeRO shards, on data_axis.
    const int dp = j.value("data_ranks", j["dp"].get<int>());
    const std::string axis = j.value("data_axis", std::string("dp"));
    const int zero = dp > 1 ? layout.zero : 0;
    const int64_t want_optim = zero >= 1 ? states * flat / dp : states * flat;
    const int64_t want_grad = zero >= 2 ? flat / dp : flat;
    const int64_t want_param = zero == 3 ? flat / dp : flat;  // zero 3: flat_numel is the chunks' total capacity
    if (held.value("param_elements", int64_t{-1}) != elements) {
      out.shards = fmt::format("rank {} holds {} parameter elements, its tp piece of its stage has {}", r,
                               held.value("param_elements", int64_t{-1}), elements);
      out.ok = false;
    }
    if (held["optim_numel"] != want_optim || held["grad_numel"] != want_grad || held["param_numel"] != want_param) {
      out.shards = fmt::format("rank {} holds params/grads/moments {}/{}/{}, the plan {}/{}/{}", r,
                               held["param_numel"].get<int64_t>(), held["grad_numel"].get<int64_t>(),
                               held["optim_numel"].get<int64_t>(), want_param, want_grad, want_optim);
      out.ok = false;
    }
    auto calls_on = [&](const std::string& on, const std::string& op, const std::string& phase) -> int64_t {
      const auto& c = j["comm"];
      if (!c.contains(on) || !c[on].contains(op) || !c[on][op].contains(phase)) return 0;
      return c[on][op][phase]["calls"].get<int64_t>();
    };
    // tp ranks are world-rank neighbours (dist/mesh.h): the tp coordinate is the rank modulo tp.
    for (const auto& [key, n] : axis_ops(plan, work, steps * layout.grad_accum, steps, r % plan.tp)) {
      const auto& [on, op, phase] = key;
      const int64_t got = calls_on(on, op, phase);
      if (got != n) {
        out.ops = fmt::format("rank {}: {} {} {} in {}, expected {}", r, got, on, op, phase, n);
        out.ok = false;
      }
    }
    if (dp == 1) continue;
    auto calls = [&](const char* op, const char* phase) { return calls_on(axis, op, phase); };
    const int64_t micro = zero >= 2 ? layout.grad_accum : 1;
    // zero 3 ("buckets" are the chunks): per micro-step an all-gather of every chunk in forward and, except the
    // chunks kept gathered (a tied embedding's), again in backward; a reduce-scatter of every chunk in backward.
    const int64_t kept = held.value("kept_chunks", int64_t{0});
    const std::map<std::pair<std::string, std::string>, int64_t> want = {
        {{"all_reduce", "backward"}, zero == 0 ? buckets * steps : 0},
        {{"reduce_scatter", "backward"}, zero >= 1 ? buckets * steps * micro : 0},
        {{"all_gather", "optimizer"}, zero == 1 || zero == 2 ? buckets * steps : 0},
        {{"all_gather", "forward"}, zero == 3 ? buckets * steps * micro : 0},
        {{"all_gather", "backward"}, zero == 3 ? (buckets - kept) * steps * micro : 0}};
    for (const auto& [key, n] : want) {
      const int64_t got = calls(key.first.c_str(), key.second.c_str());
      if (got != n) {
        out.ops = fmt::format("rank {}: {} {} {} in {}, expected {}", r, got, axis, key.first, key.second, n);
        out.ok = false;
      }
    }
  }
}

}  // namespace

std::vector<Layout> parse_layouts(const std::string& text, int64_t global_batch) {
  std::vector<Layout> layouts;
  for (const auto& item_list : split(text, ';')) {
    Layout l;
    l.text = item_list;
    int64_t dp = 1, tp = 1, sp = 1, pp = 1;
    for (const auto& item : split(item_list, ',')) {
      const auto eq = item.find('=');
      KOLOS_CHECK(eq != std::string::npos, "--layouts: layout \"{}\": item \"{}\" is not key=value", item_list, item);
      const std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
      if (key == "dp") dp = to_int(value, item, item_list);
      if (key == "tp") tp = to_int(value, item, item_list);
      if (key == "sp") sp = to_int(value, item, item_list);
      if (key == "pp") pp = to_int(value, item, item_list);
      if (key == "zero") l.zero = static_cast<int>(to_int(value, item, item_list));
      if (key == "grad_accum") {
        l.grad_accum = to_int(value, item, item_list);
        KOLOS_CHECK(l.grad_accum >= 1, "--layouts: layout \"{}\": grad_accum must be >= 1", item_list);
        continue;
      }
      // A bare key is a parallel.* key; verify() loads every layout's config first, so an unknown one is bad input
      // naming the layout and listing the known keys.
      l.overrides.push_back(key.find('.') == std::string::npos ? fmt::format("parallel.{}={}", key, value)
                                                               : fmt::format("{}={}", key, value));
    }
    KOLOS_CHECK(dp >= 1 && tp >= 1 && sp >= 1 && pp >= 1, "--layouts: layout \"{}\": degrees must be >= 1", item_list);
    l.processes = static_cast<int>(dp * tp * sp * pp);
    l.dp = static_cast<int>(dp);
    l.tp = static_cast<int>(tp);
    KOLOS_CHECK(global_batch % (dp * l.grad_accum) == 0,
                "--layouts: layout \"{}\": train.global_batch = {} does not split into dp × grad_accum = {} × {} "
                "micro-batches",
                item_list, global_batch, dp, l.grad_accum);
    l.batch_size = global_batch / (dp * l.grad_accum);
    layouts.push_back(l);
  }
  KOLOS_CHECK(!layouts.empty(), "--layouts: no layout given (expected e.g. \"dp=2;dp=2,zero=1\")");
  return layouts;
}

int verify(const VerifyOptions& options) {
  const Config base = load_config(options.config, options.overrides);
  const int64_t global_batch = base.train.global_batch;
  const auto layouts = parse_layouts(options.layouts, global_batch);
  // Every layout must make a valid Plan before anything runs (bad input is exit 2 naming the layout).
  std::vector<Plan> plans;
  std::vector<std::vector<StageWork>> works;  // per layout, per pipeline stage
  for (const auto& l : layouts) {
    std::vector<std::string> sets = options.overrides;
    sets.insert(sets.end(), l.overrides.begin(), l.overrides.end());
    sets.push_back(fmt::format("train.batch_size={}", l.batch_size));
    sets.push_back(fmt::format("train.grad_accum={}", l.grad_accum));
    sets.push_back(fmt::format("train.global_batch={}", global_batch));
    try {
      const Config config = load_config(options.config, sets, l.processes);
      plans.push_back(make_plan(config, l.processes));
      works.emplace_back();
      for (int stage = 0; stage < plans.back().pp; ++stage) works.back().push_back(stage_work(config, plans.back(), stage));
    } catch (const InputError& e) {
      throw InputError(fmt::format("--layouts: layout \"{}\": {}", l.text, e.what()));
    }
  }
  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  KOLOS_CHECK(!ec, "--out {}: cannot create the directory: {}", options.out_dir, ec.message());

  std::vector<std::string> common = {"--config", options.config};
  for (const auto& o : options.overrides) common.insert(common.end(), {"--set", o});
  for (const char* o : {"model.dropout=0", "train.log_every=1", "train.eval_every=0", "train.save_every=0",
                               "train.sample_tokens=0", "train.mfu=false", "train.threads=1", "train.keep_checkpoints=1"})
    common.insert(common.end(), {"--set", o});
  common.insert(common.end(), {"--set", fmt::format("train.global_batch={}", global_batch)});

  auto run = [&](const std::string& name, const std::vector<std::string>& prefix, const std::vector<std::string>& sets,
                 const std::string& what) {
    const std::string dir = (fs::path(options.out_dir) / name).string();
    fs::remove_all(dir, ec);
    std::vector<std::string> argv = prefix;
    argv.insert(argv.end(), {options.kolos_binary, "train"});
    argv.insert(argv.end(), common.begin(), common.end());
    for (const auto& s : sets) argv.insert(argv.end(), {"--set", s});
    argv.insert(argv.end(), {"--out", dir});
    fs::create_directories(dir, ec);
    const std::string log = dir + ".log";
    const int rc = run_logged(argv, log);
    if (rc != 0) {
      const std::string msg = fmt::format("kolos verify: {} failed with exit {}: {} (log: {})", what, rc,
                                          last_error_line(log), log);
      if (rc == exit_code::kBadInput) throw InputError(msg);
      if (rc == exit_code::kPeerFailed) throw PeerError(msg);
      throw std::runtime_error(msg);
    }
    return dir;
  };

  std::map<int64_t, std::string> references;  // by micro-batch size
  const bool gpt2 = base.model.arch == "gpt2";
  nlohmann::json results = nlohmann::json::array();
  bool all_ok = true;
  std::printf("%-28s %5s %12s %12s  %-26s %-6s %-6s %s\n", "layout", "procs", "loss rel", "param rel", "worst tensor",
              "shards", "ops", "result");
  std::fflush(stdout);
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Layout& l = layouts[i];
    if (!references.count(l.batch_size)) {
      references[l.batch_size] = run(fmt::format("reference_b{}", l.batch_size), {},
                                     {fmt::format("train.batch_size={}", l.batch_size),
                                      fmt::format("train.grad_accum={}", global_batch / l.batch_size)},
                                     fmt::format("the one-process reference (micro-batches of {})", l.batch_size));
    }
    std::vector<std::string> sets = l.overrides;
    sets.push_back(fmt::format("train.batch_size={}", l.batch_size));
    sets.push_back(fmt::format("train.grad_accum={}", l.grad_accum));
    const std::string dir = run(fmt::format("layout_{}", i),
                                {options.kolos_binary, "run", "-n", std::to_string(l.processes), "--"}, sets,
                                fmt::format("layout \"{}\"", l.text));
    const std::string& ref = references[l.batch_size];

    Outcome out;
    const auto ref_losses = read_losses(ref), losses = read_losses(dir);
    KOLOS_CHECK(!ref_losses.empty() && ref_losses.size() == losses.size(),
                "kolos verify: layout \"{}\" logged {} losses, the reference {}", l.text, losses.size(),
                ref_losses.size());
    for (const auto& [step, v] : ref_losses) {
      auto it = losses.find(step);
      const double d = it == losses.end() ? INFINITY : std::abs(it->second - v) / std::max(std::abs(v), 1e-30);
      out.loss_rel = std::max(out.loss_rel, d);
    }
    const auto ref_params = final_params(ref), params = final_params(dir);
    for (const auto& [name, t] : ref_params) {
      auto it = params.find(name);
      double d = INFINITY;
      if (it != params.end() && it->second.sizes() == t.sizes()) {
        const bool qkv_bias = gpt2 && name.size() > 14 && name.compare(name.size() - 14, 14, ".attn.qkv.bias") == 0;
        if (qkv_bias) {  // q and v thirds only
          const int64_t h = t.numel() / 3;
          d = std::max(rel(it->second.narrow(0, 0, h), t.narrow(0, 0, h)),
                       rel(it->second.narrow(0, 2 * h, h), t.narrow(0, 2 * h, h)));
        } else {
          d = rel(it->second, t);
        }
      }
      if (d > out.param_rel || out.param_tensor.empty()) {
        out.param_rel = d;
        out.param_tensor = name;
      }
      if (!(d <= options.tolerance)) out.over.emplace_back(name, d);
    }
    check_ranks(l, plans[i], works[i], dir, static_cast<int64_t>(ref_losses.size()), optim::state_buffers(base.optim),
                out);
    out.ok = out.ok && out.loss_rel <= options.tolerance && out.param_rel <= options.tolerance;
    all_ok = all_ok && out.ok;
    std::printf("%-28s %5d %12.3e %12.3e  %-26s %-6s %-6s %s\n", l.text.c_str(), l.processes, out.loss_rel,
                out.param_rel, out.param_tensor.c_str(), out.shards == "ok" ? "ok" : "WRONG",
                out.ops == "ok" ? "ok" : "WRONG", out.ok ? "ok" : "OUT OF TOLERANCE");
    for (const auto& [name, d] : out.over) std::printf("  out of tolerance: %s %.3e\n", name.c_str(), d);
    if (out.shards != "ok") std::printf("  shards: %s\n", out.shards.c_str());
    if (out.ops != "ok") std::printf("  ops: %s\n", out.ops.c_str());
    std::fflush(stdout);
    results.push_back({{"layout", l.text},
                       {"processes", l.processes},
                       {"loss_rel", out.loss_rel},
                       {"param_rel", out.param_rel},
                       {"param_tensor", out.param_tensor},
                       {"shards", out.shards},
                       {"ops", out.ops},
                       {"ok", out.ok}});
  }
  if (gpt2) std::printf("(GPT-2: the key third of h.*.attn.qkv.bias is left out: its true gradient is zero)\n");
  std::printf("%s\n", nlohmann::json({{"ok", all_ok}, {"tolerance", options.tolerance}, {"layouts", results}}).dump().c_str());
  std::fflush(stdout);
  return all_ok ? 0 : exit_code::kVerifyFailed;
}

}  // namespace kolos::parallel
