#include "kolos/train/trainer.h"

#include <malloc.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/checkpoint/checkpoint.h"
#include "kolos/core/alloc_counter.h"
#include "kolos/core/error.h"
#include "kolos/core/log.h"
#include "kolos/core/timer.h"
#include "kolos/core/units.h"
#include "kolos/dist/iface.h"
#include "kolos/dist/rendezvous.h"
#include "kolos/nn/param.h"
#include "kolos/optim/optimizer.h"
#include "kolos/optim/schedule.h"
#include "kolos/parallel/pipeline/simulator.h"
#include "kolos/parallel/pipeline/stages.h"
#include "kolos/parallel/sequence/sequence.h"
#include "kolos/train/gemm_bench.h"
#include "kolos/train/generate.h"
#include "kolos/train/metrics.h"

namespace fs = std::filesystem;

namespace kolos::train {

std::atomic<int> g_stop_signal{0};

namespace {

void on_signal(int sig) { g_stop_signal.store(sig); }

// total += part, for the nested {axis: {op: {phase: {calls, bytes}}}} objects of Ledger::to_json().
void add_comm(nlohmann::json& total, const nlohmann::json& part) {
  for (const auto& [axis, ops] : part.items())
    for (const auto& [op, phases] : ops.items())
      for (const auto& [phase, counts] : phases.items()) {
        auto& t = total[axis][op][phase];
        if (t.is_null()) t = {{"calls", 0}, {"bytes", 0}};
        t["calls"] = t.value("calls", int64_t{0}) + counts.at("calls").get<int64_t>();
        t["bytes"] = t.value("bytes", int64_t{0}) + counts.at("bytes").get<int64_t>();
      }
}

}  // namespace

AutocastScope::AutocastScope(bool enabled, at::ScalarType dtype) : enabled_(enabled) {
  if (!enabled_) return;
  was_enabled_ = at::autocast::is_cpu_enabled();
  was_dtype_ = at::autocast::get_autocast_cpu_dtype();
  if (at::autocast::increment_nesting() == 1) at::autocast::clear_cache();
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(dtype);
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_cpu_enabled(was_enabled_);
  at::autocast::set_autocast_cpu_dtype(was_dtype_);
}

int configure_threads(int64_t threads, int local_ranks) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int n = threads > 0 ? static_cast<int>(threads) : cores / std::max(1, local_ranks);
  at::set_num_threads(std::max(1, n));
  set_blas_threads(at::get_num_threads());  // OpenBLAS keeps its own pool, else 2 ranks run 4 threads on 2 cores
  return at::get_num_threads();
}

Trainer::Trainer(Config config, RunOptions options, dist::DistEnv env)
    : config_(std::move(config)), options_(std::move(options)), env_(std::move(env)) {
  plan_ = parallel::make_plan(config_, env_.world_size);
  if (env_.world_size > 1) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config_.dist.timeout_s * 1000));
    dist::Comm::Options co;
    co.timeout = timeout;
    co.iface = dist::resolve_gloo_interface(config_.dist.iface, env_.master_addr, env_.master_port);
    co.shm = config_.dist.shm;
    auto store = dist::connect_store(env_, timeout);
    mesh_ = dist::Mesh::create(store, env_.rank, env_.world_size,
                               dist::MeshShape{plan_.pp, plan_.dp, plan_.sp, plan_.tp}, co);
    ledger_ = &mesh_->ledger();
  } else {
    own_ledger_ = std::make_unique<dist::Ledger>();
    ledger_ = own_ledger_.get();
  }
  model_ = models::Model::create(config_.model);
  data::LoaderOptions lo;
  lo.path = config_.data.path;
  lo.synthetic = config_.data.synthetic;
  lo.vocab = config_.model.vocab;
  lo.seq_len = config_.model.seq_len;
  lo.batch_size = config_.train.batch_size;
  lo.grad_accum = config_.train.grad_accum;
  lo.dp = plan_.dp;
  lo.dp_rank = dp_rank();
  lo.seed = config_.train.seed;
  loader_ = std::make_unique<data::Loader>(lo);
  par_ = parallel::apply(*model_, config_, plan_, mesh_.get());
  if (options_.test_shard_cache_bytes >= 0) par_.data->shard_cache_for_test(options_.test_shard_cache_bytes);
  if (plan_.pp > 1) {
    count_cpu_allocations();  // the executor's activation bytes per stage
    pipe_ = std::make_unique<parallel::pipeline::Executor>(
        parallel::pipeline::make_schedule(plan_.pp_schedule, plan_.pp, static_cast<int>(config_.train.grad_accum),
                                          plan_.pp_virtual),
        stage(), &mesh_->comm("pp"));
    // A tied embedding lives on the stem's stage (0) and the head's (pp − 1): its gradient is complete only once
    // the two have added theirs, and the norm counts it once (on stage 0).
    const std::string tied = model_->tied_embedding();
    if (!tied.empty() && (stage() == 0 || stage() == plan_.pp - 1)) {
      tied_param_ = par_.data->param_index(tied);
      KOLOS_ASSERT(tied_param_ >= 0, "stage {} lacks the tied embedding {}", stage(), tied);
      par_.data->hold_gradient(tied_param_);
      if (stage() != 0) par_.data->exclude_from_norm(tied_param_);
    }
  }
  autocast_ = config_.train.dtype == "bf16";
  if (config_.train.dtype == "fp16") {
    optim::LossScalerOptions so;
    so.init_scale = config_.train.loss_scale_init;
    so.growth_interval = config_.train.loss_scale_growth_interval;
    so.hysteresis = config_.train.loss_scale_hysteresis;
    scaler_.emplace(so);
  }
}

Trainer::~Trainer() {
  par_.data.reset();  // waits for its collectives before the mesh goes
}

void Trainer::all_reduce_data(at::Tensor& values, dist::ReduceOp op) {
  if (mesh_ && plan_.dp * plan_.sp > 1) mesh_->data().all_reduce(values, op);
}

data::Batch Trainer::sequence_slice(const data::Batch& batch) const {
  if (plan_.sp == 1) return batch;
  const at::Tensor pos =
      parallel::sequence::sequence_positions(plan_.sp_mode, batch.input.size(1), plan_.sp, mesh_->coord("sp"));
  return {batch.input.index_select(1, pos), batch.target.index_select(1, pos)};
}

void Trainer::all_reduce_world(at::Tensor& values, dist::ReduceOp op) {
  if (mesh_) mesh_->world().all_reduce(values, op);
}

std::vector<std::vector<double>> Trainer::gather_world(const std::vector<double>& mine) {
  const at::Tensor local = at::tensor(mine, at::kDouble);
  if (!mesh_) return {mine};
  const int n = mesh_->world().size();
  at::Tensor all = at::empty({n, static_cast<int64_t>(mine.size())}, at::kDouble);
  {
    dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
    mesh_->world().all_gather(local, all);
  }
  std::vector<std::vector<double>> out(n);
  for (int r = 0; r < n; ++r) {
    const at::Tensor row = all[r].contiguous();
    out[r].assign(row.data_ptr<double>(), row.data_ptr<double>() + row.numel());
  }
  return out;
}

double Trainer::flops_per_token() const {
  const auto& m = config_.model;
  return 6.0 * static_cast<double>(model_->num_matmul_params()) +
         12.0 * static_cast<double>(m.layers * m.hidden * m.seq_len);
}

StepResult Trainer::train_step(int64_t step) {
  StepResult r;
  r.step_start = std::chrono::steady_clock::now();
  Timer step_timer;
  const int64_t accum = config_.train.grad_accum;
  auto& dp = *par_.data;
  model_->set_training(true);
  // The tier's figures since the end of the last step when its update was left in flight (it moved bytes since),
  // else since now.
  const parallel::DataParallel::MemoryFigures tier_before = in_flight_mark_ ? *in_flight_mark_ : dp.memory_figures();
  in_flight_mark_.reset();

  // 1. Fetch this rank's micro-batches (the sampler fixes them from (seed, step, dp rank)).
  std::vector<data::Batch> micro;
  for (int64_t k = 0; k < accum; ++k) micro.push_back(loader_->train_batch(step, k));
  for (const auto& b : micro) r.tokens += b.input.numel() * plan_.dp;
  for (auto& b : micro) b = sequence_slice(b);

  // 2. Forward (bf16: under autocast) and backward of the loss × the loss scale (fp16) per micro-batch; the hooks
  //    launch the bucket reductions during backward.
  // 3. end_micro() waits for them.
  dp.begin_step();
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  const bool inject_inf = std::find(options_.test_inf_grad_steps.begin(), options_.test_inf_grad_steps.end(),
                                    step) != options_.test_inf_grad_steps.end();
  double loss_sum = 0;
  auto objective = [&](const at::Tensor& loss) {
    at::Tensor o = accum > 1 ? loss / static_cast<double>(accum) : loss;
    return scaler_ ? o * loss_scale : o;
  };
  if (pipe_) {
    // The stage's schedule: forwards and backwards of its chunks on the micro-batches, with the messages between
    // stages; the data-parallel reductions are armed for the stage's last backward, and launched at Reduce.
    std::vector<parallel::pipeline::MicroBatch> batches;
    for (const auto& b : micro) batches.push_back({b.input, b.target});
    parallel::pipeline::Callbacks cb;
    cb.forward = [this](int, int chunk, const at::Tensor& x, const at::Tensor& target) {
      return forward_chunk(chunk, x, target);
    };
    cb.objective = objective;
    cb.before_backward = [&](int k, int K) {
      dp.begin_micro(k, K);
      if (k == K - 1) {
        if (inject_inf) dp.inject_inf_for_test();
        r.backward_start = std::chrono::steady_clock::now();
      }
    };
    cb.after_backward = [&](int k, int K) {
      if (k < K - 1) dp.end_micro();
      if (k == K - 1) r.backward_end = std::chrono::steady_clock::now();
    };
    cb.reduce = [&] {
      dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kBackward);
      sync_tied_gradient();
      dp.end_micro();
    };
    loss_sum = pipe_->run(batches, cb);
    if (pipe_stats_.size() < kPipelineStatsSteps) pipe_stats_.push_back(pipe_->stats());
    // The losses are on the last stage: every stage gets them (rank 0 logs).
    at::Tensor l = at::full({1}, loss_sum, at::kDouble);
    dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
    mesh_->comm("pp").all_reduce(l);
    loss_sum = l.item<double>();
  } else {
    for (int64_t k = 0; k < accum; ++k) {
      const auto& b = micro[k];
      dp.begin_micro(k, accum);
      if (inject_inf && k == accum - 1) dp.inject_inf_for_test();
      at::Tensor loss;
      const int64_t live_before = cpu_live_bytes();
      {
        dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kForward);
        AutocastScope autocast(autocast_);
        loss = model_->loss(b.input, b.target);
      }
      r.activation_bytes = std::max(r.activation_bytes, cpu_live_bytes() - live_before);
      loss_sum += loss.item<double>();
      {
        dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kBackward);
        r.backward_start = std::chrono::steady_clock::now();
        objective(loss).backward();
        r.backward_end = std::chrono::steady_clock::now();
        dp.end_micro();
      }
    }
  }
  at::Tensor loss_t = at::full({1}, loss_sum / static_cast<double>(accum), at::kDouble);
  all_reduce_data(loss_t, dist::ReduceOp::kAvg);  // sp ranks: means over equal numbers of tokens
  r.loss = loss_t.item<double>();
  r.fwd_bwd_ms = step_timer.ms();

  // 4. fp16: all ranks agree whether any gradient overflowed (inf/NaN); an overflow skips the step everywhere.
  //    Clip with the global norm of the unscaled gradients; 1/S and the clipping factor fold into the optimizer's
  //    gradient scale.
  Timer optim_timer;
  const double wait_before_optim = dp.offloading() ? dp.memory_figures().io_wait_ms : 0.0;
  r.grad_norm = dp.grad_norm();
  if (pipe_) {  // each stage's norm covers its parameters (a tied embedding counted on one stage)
    at::Tensor sq = at::full({1}, r.grad_norm * r.grad_norm, at::kDouble);
    dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOptimizer);
    mesh_->comm("pp").all_reduce(sq);
    r.grad_norm = std::sqrt(sq.item<double>());
  }
  r.grad_norm /= loss_scale;
  r.lr = optim::lr_at(config_.optim, step, config_.train.steps);
  bool apply = true;
  if (scaler_) {
    at::Tensor overflow = at::full({1}, std::isfinite(r.grad_norm) ? 0.0 : 1.0, at::kDouble);
    {
      dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOptimizer);
      all_reduce_world(overflow, dist::ReduceOp::kMax);
    }
    apply = scaler_->update(overflow.item<double>() > 0);
    r.skipped = !apply;
    r.loss_scale = scaler_->scale();
  }
  double scale = 1.0 / loss_scale;
  if (config_.optim.grad_clip > 0 && r.grad_norm > config_.optim.grad_clip)
    scale *= config_.optim.grad_clip / (r.grad_norm + 1e-6);

  // 5. Optimizer step with this step's learning rate (ZeRO: on the shard, then the all-gather). A skipped step
  //    leaves parameters and optimizer state as they are; the next begin_step() drops its gradients.
  if (apply) dp.optimizer_step(r.lr, scale);
  r.optim_ms = optim_timer.ms();

  // Under a memory budget the heap's free pages go back to the system after every step: kolos's main() never trims
  // the heap (warm pages for the next step's activations), and freed blocks of varying sizes (gradients of tens of
  // MB) fragment it, so the peak RSS grew step after step (a 2B model under 2 GiB: 1750, 1946, 2063 MiB).
  if (!config_.memory.budget.empty()) malloc_trim(0);

  // 6. Metrics.
  r.step_ms = step_timer.ms();
  if ((r.offload = dp.offloading())) {
    const parallel::DataParallel::MemoryFigures f = dp.memory_figures();
    tier_figures(r, tier_before, f);
    r.io_wait_optim_ms = f.io_wait_ms - wait_before_optim;
    if (dp.optimizer_step_in_flight()) in_flight_mark_ = f;
  }
  return r;
}

void Trainer::tier_figures(StepResult& r, const parallel::DataParallel::MemoryFigures& before,
                           const parallel::DataParallel::MemoryFigures& f) {
  r.mem_compute = f.compute;
  r.mem_host = f.host;
  r.mem_nvme = f.nvme;
  r.chunk_moves = f.moves - before.moves;
  r.io_bytes = f.io_bytes - before.io_bytes;
  r.io_wait_ms = f.io_wait_ms - before.io_wait_ms;
  r.mem_cached = f.cached;
  r.cache_hits = f.cache_hits - before.cache_hits;
}

StepResult Trainer::finish_optimizer_step() {
  StepResult r;
  parallel::DataParallel& dp = *par_.data;
  if (!in_flight_mark_) {  // no update was left in flight (or a later step counted it): nothing to add
    dp.finish_optimizer_step();
    return r;
  }
  const parallel::DataParallel::MemoryFigures before = *in_flight_mark_;
  in_flight_mark_.reset();
  r.offload = true;
  Timer timer;
  dp.finish_optimizer_step();
  r.step_ms = r.optim_ms = timer.ms();
  tier_figures(r, before, dp.memory_figures());
  r.io_wait_optim_ms = r.io_wait_ms;
  return r;
}

std::pair<double, double> Trainer::evaluate(int64_t batches) {
  at::NoGradGuard no_grad;
  model_->set_training(false);
  const int64_t n = batches > 0 ? batches : loader_->val_batches();
  // The dp ranks split the batches and sum.
  const int64_t rank = dp_rank();
  double nll = 0, tokens = 0;
  parallel::pipeline::Callbacks cb;
  cb.forward = [this](int, int chunk, const at::Tensor& x, const at::Tensor& target) {
    return forward_chunk(chunk, x, target);
  };
  // Pipeline: the loss is on the last stage, which alone counts the batch.
  const bool counts = !pipe_ || stage() == plan_.pp - 1;
  // ZeRO-3 gathers the parameters collectively in every forward: each dp rank runs as many forwards (the last round
  // padded with batch 0, not counted).
  const bool collective_forward = par_.data->zero() == 3;
  const int64_t end = collective_forward ? (n + plan_.dp - 1) / plan_.dp * plan_.dp : n;
  for (int64_t i = rank; i < end; i += plan_.dp) {
    data::Batch b = sequence_slice(loader_->val_batch(i < n ? i : 0));
    double loss = 0;
    if (pipe_) {
      loss = pipe_->forward_only({b.input, b.target}, cb);
    } else {
      AutocastScope autocast(autocast_);
      loss = model_->loss(b.input, b.target).item<double>();
    }
    if (!counts || i >= n) continue;
    nll += loss * static_cast<double>(b.target.numel());
    tokens += static_cast<double>(b.target.numel());
  }
  model_->set_training(true);
  at::Tensor sums = at::tensor({nll, tokens}, at::kDouble);
  if (pipe_) {
    dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
    mesh_->comm("pp").all_reduce(sums);
  }
  all_reduce_data(sums, dist::ReduceOp::kSum);
  const double val_loss = sums[0].item<double>() / sums[1].item<double>();
  const double bpb = val_loss / std::log(2.0) / loader_->val_bytes_per_token();
  return {val_loss, bpb};
}

void Trainer::seed_rng(int64_t step) {
  // dp rank 0 draws like one process; the others from their own streams (dropout masks differ across samples).
  const int64_t rank = dp_rank();
  if (rank == 0 && step == 0) {
    at::manual_seed(static_cast<uint64_t>(config_.train.seed));
  } else {
    at::manual_seed(nn::derive_seed(config_.train.seed, fmt::format("rng.dp_rank.{}.step.{}", rank, step)));
  }
}

void Trainer::save(int64_t step_done) {
  checkpoint::CheckpointData d;
  // Whole tensors, whatever the layout: every rank joins the gathers, rank 0 writes.
  for (const auto& [name, t] : par_.data->optimizer_state()) d.optim[name] = t;
  for (const auto& [name, t] : par_.data->whole_params()) d.model[name] = t;
  if (pipe_) gather_stages(d);
  if (!is_rank0()) return;
  d.optim["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
  d.state = {{"step", step_done},
             {"optimizer_steps", par_.data->optimizer_steps()},
             {"tokens", tokens_seen_},
             {"elapsed_s", elapsed_s_},
             {"data_cursor", step_done},
             {"arch", config_.model.arch},
             {"optimizer", optim::rule_options(config_.optim)},
             {"layout", plan_.describe()},
             {"world_size", env_.world_size}};
  if (scaler_) d.state["loss_scaler"] = scaler_->state();
  d.config_toml = dump_toml(config_);
  checkpoint::save_checkpoint(options_.out_dir, d, config_.train.keep_checkpoints);
}

void Trainer::restore(const std::string& dir) {
  checkpoint::CheckpointData d = checkpoint::load_checkpoint(dir);
  // The checkpoint must describe the same model; the layout may differ (tensors are whole).
  Config saved;
  apply_toml(saved, d.config_toml, dir + "/config.toml");
  validate(saved, d.state.value("world_size", int64_t{1}));
  KOLOS_CHECK(dump_toml(Config{saved.model}) == dump_toml(Config{config_.model}),
              "--resume: checkpoint {} was written for a different [model] section than the current config", dir);
  // The optimizer must be the same rule with the same options (its state means nothing to another); the schedule
  // keys and grad_clip may change. Older checkpoints have no "optimizer" entry: their config.toml says it.
  const nlohmann::json saved_rule = d.state.value("optimizer", optim::rule_options(saved.optim));
  const nlohmann::json rule = optim::rule_options(config_.optim);
  KOLOS_CHECK(saved_rule.value("name", "") == config_.optim.name,
              "--resume: checkpoint {} was written with optim.name = \"{}\", the config has \"{}\"; resume with the "
              "same optimizer or start a fresh run in another --out",
              dir, saved_rule.value("name", ""), config_.optim.name);
  for (const auto& [key, value] : rule.items()) {
    const nlohmann::json was = saved_rule.value(key, nlohmann::json());
    KOLOS_CHECK(was == value,
                "--resume: checkpoint {} was written with optim.{} = {}, the config has {}; resume with the same "
                "value (the optimizer state depends on it) or start a fresh run in another --out",
                dir, key, was.dump(), value.dump());
  }
  par_.data->load_whole_params(d.model, fmt::format("checkpoint {}: model.safetensors", dir));
  std::vector<std::pair<std::string, at::Tensor>> state(d.optim.begin(), d.optim.end());
  par_.data->load_optimizer_state(state, d.state.value("optimizer_steps", int64_t{0}));
  start_step_ = d.state["step"].get<int64_t>();
  tokens_seen_ = d.state.value("tokens", int64_t{0});
  elapsed_s_ = d.state.value("elapsed_s", 0.0);
  // A checkpoint of an fp32 or bf16 run has no scaler state: an fp16 run resumed from it starts a fresh scale.
  if (scaler_ && d.state.contains("loss_scaler"))
    scaler_->load_state(d.state["loss_scaler"], fmt::format("checkpoint {}: state", dir));
  auto rng = d.optim.find("rng.cpu");
  KOLOS_CHECK(rng != d.optim.end(), "checkpoint {}: optim.safetensors lacks rng.cpu", dir);
  if (dp_rank() == 0) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(rng->second);
  } else {
    seed_rng(start_step_);
  }
}

at::Tensor Trainer::forward_chunk(int chunk, const at::Tensor& x, const at::Tensor& target) {
  AutocastScope autocast(autocast_);
  return model_->forward_segment(static_cast<size_t>(chunk), x, target);
}

void Trainer::sync_tied_gradient() {
  if (tied_param_ < 0) return;
  at::NoGradGuard no_grad;
  at::Tensor g = par_.data->local_grad(tied_param_);
  KOLOS_ASSERT(g.defined() && g.is_contiguous(), "the tied embedding has no contiguous gradient");
  auto& pp = mesh_->comm("pp");
  const int peer = stage() == 0 ? plan_.pp - 1 : 0;
  at::Tensor other = at::empty_like(g);
  constexpr int kTiedTag = 6;
  dist::Handle sent = pp.send_async(g, peer, kTiedTag);
  pp.recv(other, peer, kTiedTag);
  sent.wait();
  g.add_(other);  // the same sum on both stages (addition commutes)
}

void Trainer::gather_stages(checkpoint::CheckpointData& d) {
  if (mesh_->coord("dp") != 0 || mesh_->coord("sp") != 0 || mesh_->coord("tp") != 0) return;
  // The pp group of world rank 0. Stage s sends its parameters, then its optimizer state, in the order of its
  // param_specs(), as one flat fp32 tensor; rank 0 derives that order from the stage split.
  auto& pp = mesh_->comm("pp");
  dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
  std::vector<std::string> kinds;
  for (const auto& [kind, buffer] : par_.data->optimizer().state()) kinds.push_back(kind);
  auto order = [&](int s) {
    auto m = models::Model::create(config_.model);
    m->set_segments(parallel::pipeline::stage_segments(config_.model, plan_.pp, plan_.pp_virtual,
                                                        config_.parallel.pp_layers, s));
    std::vector<std::pair<std::string, std::vector<int64_t>>> out;
    const auto specs = m->param_specs();
    for (const auto& spec : specs) out.emplace_back("model:" + spec.name, spec.shape);
    for (const auto& spec : specs)
      for (const auto& kind : kinds) out.emplace_back("optim:" + kind + "." + spec.name, spec.shape);
    return out;
  };
  constexpr int kCheckpointTag = 7;
  if (stage() != 0) {
    std::vector<at::Tensor> parts;
    for (const auto& [name, shape] : order(stage())) {
      const bool model = name.rfind("model:", 0) == 0;
      const std::string key = name.substr(6);
      parts.push_back((model ? d.model.at(key) : d.optim.at(key)).reshape({-1}).to(at::kFloat));
    }
    pp.send(at::cat(parts), 0, kCheckpointTag);
    return;
  }
  for (int s = 1; s < plan_.pp; ++s) {
    const auto names = order(s);
    int64_t total = 0;
    for (const auto& [name, shape] : names) total += c10::multiply_integers(shape);
    at::Tensor flat = at::empty({total}, at::kFloat);
    pp.recv(flat, s, kCheckpointTag);
    int64_t at = 0;
    for (const auto& [name, shape] : names) {
      const int64_t n = c10::multiply_integers(shape);
      at::Tensor t = flat.narrow(0, at, n).view(shape).clone();
      at += n;
      if (name.rfind("model:", 0) == 0) {
        d.model.emplace(name.substr(6), t);  // a tied embedding: stage 0's copy (the same values)
      } else {
        d.optim.emplace(name.substr(6), t);
      }
    }
  }
}

nlohmann::json Trainer::pipeline_report() {
  const auto& schedule = pipe_->schedule();
  const int p = schedule.stages;
  const int64_t steps = static_cast<int64_t>(pipe_stats_.size());
  // Per step: activation bytes, then (begin, end) of every instruction of the longest list (shorter lists padded).
  size_t longest = 0;
  for (const auto& list : schedule.instructions) longest = std::max(longest, list.size());
  const int64_t fields = 1 + 2 * static_cast<int64_t>(longest);
  at::Tensor mine = at::zeros({steps, fields}, at::kDouble);
  for (int64_t i = 0; i < steps; ++i) {
    const auto& st = pipe_stats_[i];
    at::Tensor step_row = mine[i];
    auto row = step_row.accessor<double, 1>();
    row[0] = static_cast<double>(st.activation_bytes);
    for (size_t k = 0; k < st.begin_at.size(); ++k) {
      row[1 + 2 * k] = st.begin_at[k];
      row[2 + 2 * k] = st.end_at[k];
    }
  }
  at::Tensor all = at::empty({p, steps, fields}, at::kDouble);
  {
    dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
    mesh_->comm("pp").all_gather(mine, all);
  }
  auto a = all.accessor<double, 3>();
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  std::vector<std::vector<double>> measured(p), simulated(p);
  std::vector<double> latency, send, receive;
  std::vector<double> activation(p, 0.0);
  for (int64_t i = 0; i < steps; ++i) {
    parallel::pipeline::Measured m;
    for (int s = 0; s < p; ++s) {
      activation[s] = std::max(activation[s], a[s][i][0]);
      const size_t n = schedule.instructions[s].size();
      m.begin_at.emplace_back(n);
      m.end_at.emplace_back(n);
      for (size_t k = 0; k < n; ++k) {
        m.begin_at[s][k] = a[s][i][1 + 2 * k];
        m.end_at[s][k] = a[s][i][2 + 2 * k];
      }
    }
    if (i == 0) continue;  // warm-up
    const auto costs = parallel::pipeline::measured_costs(schedule, m);
    const auto timeline = parallel::pipeline::simulate(schedule, costs);
    const auto idle = parallel::pipeline::measured_idle(schedule, m);
    latency.push_back(costs.p2p_latency);
    send.push_back(costs.send);
    receive.push_back(costs.receive);
    for (int s = 0; s < p; ++s) {
      measured[s].push_back(idle[s]);
      simulated[s].push_back(timeline.bubble(s));
    }
  }
  nlohmann::json out = {{"schedule", schedule.name}, {"stages", p}, {"micro_batches", schedule.micro_batches},
                        {"chunks", schedule.chunks}, {"steps_measured", std::max<int64_t>(steps - 1, 0)},
                        {"max_held", pipe_->max_held()}, {"p2p_latency_s", median(latency)},
                        {"send_s", median(send)}, {"receive_s", median(receive)}};
  for (int s = 0; s < p; ++s) {
    out["measured_idle"].push_back(median(measured[s]));
    out["simulated_idle"].push_back(median(simulated[s]));
    out["activation_bytes"].push_back(activation[s]);
  }
  return out;
}

nlohmann::json Trainer::comm_trace(const StepResult& r) const {
  using us = std::chrono::microseconds;
  auto rel = [&](std::chrono::steady_clock::time_point t) -> nlohmann::json {
    if (t == std::chrono::steady_clock::time_point{}) return nullptr;
    return std::chrono::duration_cast<us>(t - r.step_start).count();
  };
  nlohmann::json events = nlohmann::json::array();
  for (const auto& e : ledger_->events())
    events.push_back({{"axis", e.axis}, {"op", e.op}, {"phase", dist::phase_name(e.phase)}, {"bytes", e.bytes},
                      {"start_us", rel(e.start)}, {"end_us", rel(e.end)}});
  nlohmann::json out = {{"backward_start_us", rel(r.backward_start)},
                        {"first_block_grad_us", rel(par_.data->first_block_ready())},
                        {"backward_end_us", rel(r.backward_end)},
                        {"events", events}};
  if (par_.data->zero() == 3) {  // the prefetch check: which chunk is whose, when each block began computing
    out["chunk_blocks"] = par_.data->chunk_blocks();
    nlohmann::json starts = nlohmann::json::array();
    for (const auto& t : par_.data->block_forward_start()) starts.push_back(rel(t));
    out["block_forward_us"] = starts;
  }
  return out;
}

void Trainer::write_rank_report() {
  if (!options_.write_run_dir) return;
  const fs::path dir = fs::path(options_.out_dir) / "ranks";
  std::error_code ec;
  fs::create_directories(dir, ec);
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& b : par_.data->buckets())
    buckets.push_back({{"offset", b.offset}, {"numel", b.numel}, {"params", b.end_param - b.first_param}});
  nlohmann::json report = {{"rank", env_.rank},
                           {"world_size", env_.world_size},
                           {"layout", plan_.describe()},
                           {"dp", plan_.dp},
                           {"data_ranks", par_.data->dp()},  // dp × sp: gradients averaged, ZeRO sharded over them
                           {"data_axis", plan_.sp > 1 ? "dp_sp" : "dp"},
                           {"zero", par_.data->zero()},
                           {"dp_rank", dp_rank()},
                           {"pp_stage", stage()},
                           {"params", model_->num_params()},
                           {"held", par_.data->report().to_json()},
                           {"bucket_list", buckets},
                           {"comm", comm_total_}};
  if (pipe_) report["pipeline"] = pipeline_report();
  const fs::path path = dir / fmt::format("rank_{}.json", env_.rank);
  const fs::path tmp = dir / fmt::format(".rank_{}.json.tmp", env_.rank);
  std::ofstream(tmp) << report.dump(1) << "\n";
  fs::rename(tmp, path, ec);
}

nlohmann::json Trainer::train() {
  const auto& t = config_.train;
  const bool rank0 = is_rank0();
  const int threads = configure_threads(t.threads, env_.local_world_size);
  // The MFU denominator, summed over the ranks (measured concurrently, as they train); measured before seeding,
  // since it draws random matrices from the default generator.
  double peak_flops = 0;
  if (t.mfu) {
    GemmBenchOptions gemm_options;
    gemm_options.warmup = 1;
    gemm_options.repeats = 3;
    gemm_options.bf16 = false;
    at::Tensor rate = at::full({1}, run_gemm_bench(2048, threads, gemm_options).fp32_gflops * 1e9, at::kDouble);
    all_reduce_world(rate, dist::ReduceOp::kSum);
    peak_flops = rate.item<double>();
  }
  seed_rng(0);
  Progress progress(t.steps, rank0);

  if (options_.write_run_dir) {
    std::error_code ec;
    if (rank0) fs::create_directories(options_.out_dir, ec);
    KOLOS_CHECK(!ec, "--out {}: cannot create the run directory: {}", options_.out_dir, ec.message());
    if (options_.resume) {
      if (auto latest = checkpoint::latest_checkpoint(options_.out_dir)) {
        restore(*latest);
        progress.message(fmt::format("resuming from {} (step {})", *latest, start_step_));
      } else {
        progress.message(fmt::format("no checkpoint in {}: starting fresh", options_.out_dir));
      }
    }
    if (rank0) std::ofstream(fs::path(options_.out_dir) / "config.toml") << dump_toml(config_);
  }
  std::optional<MetricsWriter> metrics;
  if (options_.write_run_dir && rank0) metrics.emplace(options_.out_dir, start_step_);

  const double fpt = flops_per_token();
  progress.message(fmt::format("model {}: {:.2f}M parameters; {} ({} process{}, {} threads each); batch {}x{}x{} of "
                               "{} tokens",
                               config_.model.arch, model_->num_params() / 1e6, plan_.describe(), env_.world_size,
                               env_.world_size > 1 ? "es" : "", threads, t.batch_size, t.grad_accum, plan_.dp,
                               config_.model.seq_len));

  g_stop_signal.store(0);
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);

  Timer run_timer;
  const int64_t end_step = options_.stop_after > 0 ? std::min(t.steps, options_.stop_after) : t.steps;
  double last_loss = 0, window_tokens = 0, window_s = 0;
  std::optional<std::pair<double, double>> last_eval;
  // train.early_stop and train.target_val_loss: every rank evaluates the same val_loss, so all stop together.
  double best_val = INFINITY;
  int64_t evals_since_best = 0;
  std::string stopped_early;
  int64_t step = start_step_;
  int stop_signal = 0;
  ledger_->reset();
  for (; step < end_step; ++step) {
    StepResult r = train_step(step);
    tokens_seen_ += r.tokens;
    last_loss = r.loss;
    window_tokens += r.tokens;
    window_s += r.step_ms / 1e3;
    const int64_t done = step + 1;
    const bool log_now = done % t.log_every == 0 || done == end_step;
    const bool eval_now = t.eval_every > 0 && done % t.eval_every == 0 && done != t.steps;
    if (log_now || eval_now) {
      const double tps = window_tokens / std::max(window_s, 1e-9);
      at::Tensor rss = at::full({1}, static_cast<double>(peak_rss_bytes()), at::kDouble);
      all_reduce_world(rss, dist::ReduceOp::kMax);
      const nlohmann::json comm = ledger_->to_json();
      nlohmann::json rec = {{"step", done},
                            {"loss", r.loss},
                            {"lr", r.lr},
                            {"grad_norm", r.grad_norm},
                            {"tokens", tokens_seen_},
                            {"tokens_per_s", tps},
                            {"step_ms", r.step_ms},
                            {"mfu", peak_flops > 0 ? tps * fpt / peak_flops : 0.0},
                            {"peak_rss_mb", rss.item<double>() / 1048576.0},
                            {"comm", comm}};
      if (r.offload) {  // rank 0's figures of this step
        rec["mem_bytes"] = {{"compute", r.mem_compute}, {"host", r.mem_host}, {"nvme", r.mem_nvme}};
        rec["chunk_moves"] = r.chunk_moves;
        rec["io_bytes"] = r.io_bytes;
        rec["io_gbps"] = static_cast<double>(r.io_bytes) / std::max(r.step_ms, 1e-6) / 1e6;
        if (par_.data->auto_placement()) {
          rec["mem_bytes"]["cache"] = r.mem_cached;
          rec["cache_hits"] = r.cache_hits;
        }
      }
      if (scaler_) {
        rec["loss_scale"] = r.loss_scale;
        rec["skipped_steps"] = scaler_->skipped_steps();
      }
      if (t.trace_comm) rec["comm_trace"] = comm_trace(r);
      add_comm(comm_total_, comm);
      if (eval_now) {
        last_eval = evaluate(t.eval_batches);
        rec["val_loss"] = last_eval->first;
        rec["val_bpb"] = last_eval->second;
        progress.message(fmt::format("step {}: val_loss {:.4f}, val_bpb {:.4f}", done, last_eval->first,
                                     last_eval->second));
        const double val = last_eval->first;
        evals_since_best = val < best_val ? 0 : evals_since_best + 1;
        best_val = std::min(best_val, val);
        if (t.target_val_loss > 0 && val <= t.target_val_loss) {
          stopped_early = fmt::format("val_loss {:.4f} reached train.target_val_loss {}", val, t.target_val_loss);
        } else if (t.early_stop > 0 && evals_since_best >= t.early_stop) {
          stopped_early = fmt::format("{} evaluations without a new best val_loss (best {:.4f}; train.early_stop)",
                                      evals_since_best, best_val);
        }
      }
      ledger_->reset();
      if (metrics) metrics->write(rec);
      const double steps_in_window = std::max<double>(1, window_tokens / static_cast<double>(r.tokens));
      progress.update(done, r.loss, r.lr, tps, (end_step - done) * window_s / steps_in_window);
      window_tokens = 0;
      window_s = 0;
    }
    if (!stopped_early.empty()) {
      ++step;
      break;
    }
    if (options_.write_run_dir && t.save_every > 0 && done % t.save_every == 0 && done != end_step) {
      elapsed_s_ += run_timer.seconds();
      run_timer.reset();
      save(done);
    }
    // Every rank stops at the same step: a signal seen by any rank stops all.
    at::Tensor stop = at::full({1}, static_cast<double>(g_stop_signal.load()), at::kDouble);
    if (mesh_) {
      dist::Ledger::PhaseScope phase(ledger(), dist::Phase::kOther);
      all_reduce_world(stop, dist::ReduceOp::kMax);
    }
    if ((stop_signal = static_cast<int>(stop.item<double>())) != 0) {
      ++step;
      break;
    }
  }
  par_.data->finish_optimizer_step();  // the last update's error (a full disk) surfaces here, not in a destructor
  elapsed_s_ += run_timer.seconds();
  progress.finish();
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  add_comm(comm_total_, ledger_->to_json());
  ledger_->reset();

  const bool finished = step >= t.steps || !stopped_early.empty();
  if (!stopped_early.empty()) progress.message(fmt::format("stopped early at step {}: {}", step, stopped_early));
  if (options_.write_run_dir) save(step);
  write_rank_report();
  if (stop_signal != 0) {
    progress.message(fmt::format("stopped by signal {} at step {}; checkpoint written, resume with --resume",
                                 stop_signal, step));
    throw Interrupted(128 + stop_signal);
  }

  at::Tensor rss = at::full({1}, static_cast<double>(peak_rss_bytes()), at::kDouble);
  all_reduce_world(rss, dist::ReduceOp::kMax);
  nlohmann::json summary = {{"steps", step},
                            {"finished", finished},
                            {"loss", last_loss},
                            {"tokens", tokens_seen_},
                            {"tokens_per_s", tokens_seen_ / std::max(elapsed_s_, 1e-9)},
                            {"elapsed_s", elapsed_s_},
                            {"params", model_->num_params()},
                            {"world_size", env_.world_size},
                            {"layout", plan_.describe()},
                            {"peak_rss_mb", rss.item<double>() / 1048576.0}};
  if (!stopped_early.empty()) summary["stopped_early"] = stopped_early;
  if (!config_.memory.budget.empty()) {  // memory.budget: the largest rank's peak RSS against it
    const int64_t budget = parse_bytes(config_.memory.budget, "config key memory.budget");
    summary["memory_budget_mb"] = static_cast<double>(budget) / 1048576.0;
    summary["within_budget"] = rss.item<double>() <= static_cast<double>(budget);
    if (!summary["within_budget"].get<bool>())
      progress.message(fmt::format("warning: peak RSS {:.0f} MiB exceeds memory.budget = \"{}\"",
                                   rss.item<double>() / 1048576.0, config_.memory.budget));
  }
  if (scaler_) {
    summary["loss_scale"] = scaler_->scale();
    summary["skipped_steps"] = scaler_->skipped_steps();
  }
  if (finished && options_.final_eval) {
    auto [vl, bpb] = evaluate(t.eval_batches);
    summary["val_loss"] = vl;
    summary["val_bpb"] = bpb;
    if (!config_.data.synthetic) {
      summary["unigram_bpb"] = loader_->meta().unigram_bpb;
      summary["bigram_bpb"] = loader_->meta().bigram_bpb;
    }
    if (metrics) {
      nlohmann::json rec = {{"step", step}, {"val_loss", vl}, {"val_bpb", bpb}};
      metrics->write(rec);
    }
    progress.message(fmt::format("final: val_loss {:.4f}, val_bpb {:.4f}", vl, bpb));
  }
  // Sampling runs the model on rank 0 alone: not with tensor, sequence or pipeline parallelism, whose forward needs
  // every rank of the group.
  const bool split_model = plan_.tp > 1 || plan_.sp > 1 || plan_.pp > 1 || par_.data->zero() == 3;
  if (finished && t.sample_tokens > 0 && !config_.data.synthetic && split_model && rank0)
    progress.message("sample: skipped (not yet supported with tensor, sequence or pipeline parallelism or ZeRO-3)");
  if (finished && t.sample_tokens > 0 && !config_.data.synthetic && !split_model && rank0) {
    auto tokenizer = data::load_tokenizer(config_.data.path);
    SampleOptions so;
    so.tokens = t.sample_tokens;
    so.temperature = 0.8;
    so.top_k = 40;
    so.seed = static_cast<uint64_t>(t.seed);
    std::vector<int32_t> prompt = tokenizer->encode(t.sample_prompt);
    if (prompt.empty()) prompt.push_back(tokenizer->eot_id());
    const std::string text = t.sample_prompt + tokenizer->decode(sample(*model_, prompt, so));
    progress.message("sample:\n" + text + "\n");
  }
  if (options_.write_run_dir) summary["run_dir"] = options_.out_dir;
  if (rank0) {
    std::printf("%s\n", summary.dump().c_str());
    std::fflush(stdout);
  }
  return summary;
}

}  // namespace kolos::train
