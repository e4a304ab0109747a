#include "kolos/train/trainer.h"

#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kolos/checkpoint/checkpoint.h"
#include "kolos/core/error.h"
#include "kolos/core/log.h"
#include "kolos/core/timer.h"
#include "kolos/core/units.h"
#include "kolos/optim/schedule.h"
#include "kolos/train/gemm_bench.h"
#include "kolos/train/generate.h"
#include "kolos/train/metrics.h"

namespace fs = std::filesystem;

namespace kolos::train {

std::atomic<int> g_stop_signal{0};

namespace {

constexpr int64_t kAlign = 16;  // floats: 64 bytes

void on_signal(int sig) { g_stop_signal.store(sig); }

int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

int configure_threads(int64_t threads) {
  const int n = threads > 0 ? static_cast<int>(threads) : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, n));
  return at::get_num_threads();
}

Trainer::Trainer(Config config, RunOptions options) : config_(std::move(config)), options_(std::move(options)) {
  model_ = models::Model::create(config_.model);
  data::LoaderOptions lo;
  lo.path = config_.data.path;
  lo.synthetic = config_.data.synthetic;
  lo.vocab = config_.model.vocab;
  lo.seq_len = config_.model.seq_len;
  lo.batch_size = config_.train.batch_size;
  lo.grad_accum = config_.train.grad_accum;
  lo.dp = config_.parallel.dp;
  lo.dp_rank = 0;
  lo.seed = config_.train.seed;
  loader_ = std::make_unique<data::Loader>(lo);
  build_flat_buffers();
}

void Trainer::build_flat_buffers() {
  const auto specs = model_->param_specs();
  int64_t total = 0;
  for (const auto& s : specs) {
    const bool decay = s.is_embedding ? config_.optim.decay_embeddings
                                      : (s.decay || config_.optim.decay_norms_biases);
    slots_.push_back({s.name, total, s.shape, s.numel(), decay});
    total = align_up(total + s.numel());
  }
  flat_params_ = at::zeros({total}, at::kFloat);
  flat_grads_ = at::zeros({total}, at::kFloat);
  std::vector<at::Tensor> views;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& slot = slots_[i];
    at::Tensor p = flat_params_.narrow(0, slot.offset, slot.numel).view(slot.shape);
    p.copy_(nn::init_param(specs[i], config_.train.seed));
    p.set_requires_grad(true);
    p.mutable_grad() = flat_grads_.narrow(0, slot.offset, slot.numel).view(slot.shape);
    views.push_back(p);
  }
  model_->bind_params(std::move(views));
  optimizer_ = std::make_unique<optim::AdamW>(config_.optim, flat_params_, flat_grads_, slots_);
}

double Trainer::flops_per_token() const {
  const auto& m = config_.model;
  return 6.0 * static_cast<double>(model_->num_matmul_params()) +
         12.0 * static_cast<double>(m.layers * m.hidden * m.seq_len);
}

StepResult Trainer::train_step(int64_t step) {
  StepResult r;
  Timer step_timer;
  const int64_t accum = config_.train.grad_accum;
  model_->set_training(true);

  // 1. Fetch this step's micro-batches (the sampler fixes them from (seed, step)).
  std::vector<data::Batch> micro;
  for (int64_t k = 0; k < accum; ++k) micro.push_back(loader_->train_batch(step, k));

  // 2. Forward and backward per micro-batch; gradients accumulate in the flat buffer.
  flat_grads_.zero_();
  double loss_sum = 0;
  for (const auto& b : micro) {
    at::Tensor loss = model_->loss(b.input, b.target);
    loss_sum += loss.item<double>();
    (accum > 1 ? loss / static_cast<double>(accum) : loss).backward();
    r.tokens += b.input.numel();
  }
  r.loss = loss_sum / static_cast<double>(accum);
  r.fwd_bwd_ms = step_timer.ms();

  // 3. Reduce gradients across data-parallel ranks: one process, nothing to do.

  // 4. Clip with the global norm (folded into the optimizer's gradient scale).
  Timer optim_timer;
  r.grad_norm = flat_grads_.norm().item<double>();
  double scale = 1.0;
  if (config_.optim.grad_clip > 0 && r.grad_norm > config_.optim.grad_clip)
    scale = config_.optim.grad_clip / (r.grad_norm + 1e-6);

  // 5. Optimizer step with this step's learning rate.
  r.lr = optim::lr_at(config_.optim, step, config_.train.steps);
  optimizer_->step(r.lr, scale);
  r.optim_ms = optim_timer.ms();

  // 6. Metrics.
  r.step_ms = step_timer.ms();
  return r;
}

std::pair<double, double> Trainer::evaluate(int64_t batches) {
  at::NoGradGuard no_grad;
  model_->set_training(false);
  const int64_t n = batches > 0 ? batches : loader_->val_batches();
  double nll = 0;
  int64_t tokens = 0;
  for (int64_t i = 0; i < n; ++i) {
    data::Batch b = loader_->val_batch(i);
    at::Tensor loss = model_->loss(b.input, b.target);
    nll += loss.item<double>() * static_cast<double>(b.target.numel());
    tokens += b.target.numel();
  }
  model_->set_training(true);
  const double val_loss = nll / static_cast<double>(tokens);
  const double bpb = val_loss / std::log(2.0) / loader_->val_bytes_per_token();
  return {val_loss, bpb};
}

void Trainer::save(int64_t step_done) {
  checkpoint::CheckpointData d;
  for (const auto& [name, t] : model_->params()) d.model[name] = t.detach();
  for (const auto& [name, t] : optimizer_->state_tensors()) d.optim[name] = t;
  d.optim["rng.cpu"] = at::detail::getDefaultCPUGenerator().get_state();
  d.state = {{"step", step_done},
             {"optimizer_steps", optimizer_->step_count()},
             {"tokens", tokens_seen_},
             {"elapsed_s", elapsed_s_},
             {"data_cursor", step_done},
             {"arch", config_.model.arch}};
  d.config_toml = dump_toml(config_);
  checkpoint::save_checkpoint(options_.out_dir, d, config_.train.keep_checkpoints);
}

void Trainer::restore(const std::string& dir) {
  checkpoint::CheckpointData d = checkpoint::load_checkpoint(dir);
  // The checkpoint must describe the same model.
  Config saved;
  apply_toml(saved, d.config_toml, dir + "/config.toml");
  validate(saved);
  KOLOS_CHECK(dump_toml(Config{saved.model}) == dump_toml(Config{config_.model}),
              "--resume: checkpoint {} was written for a different [model] section than the current config", dir);
  at::NoGradGuard no_grad;
  for (const auto& [name, t] : model_->params()) {
    auto it = d.model.find(name);
    KOLOS_CHECK(it != d.model.end(), "checkpoint {}: model.safetensors lacks parameter {}", dir, name);
    KOLOS_CHECK(it->second.sizes() == t.sizes() && it->second.scalar_type() == at::kFloat,
                "checkpoint {}: parameter {} has the wrong shape or dtype", dir, name);
    t.copy_(it->second);
  }
  std::vector<std::pair<std::string, at::Tensor>> state(d.optim.begin(), d.optim.end());
  optimizer_->load_state(state, d.state.value("optimizer_steps", int64_t{0}));
  auto rng = d.optim.find("rng.cpu");
  KOLOS_CHECK(rng != d.optim.end(), "checkpoint {}: optim.safetensors lacks rng.cpu", dir);
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  gen.set_state(rng->second);
  start_step_ = d.state["step"].get<int64_t>();
  tokens_seen_ = d.state.value("tokens", int64_t{0});
  elapsed_s_ = d.state.value("elapsed_s", 0.0);
}

nlohmann::json Trainer::train() {
  const auto& t = config_.train;
  const int threads = configure_threads(t.threads);
  // The MFU denominator; measured before seeding, since it draws random matrices from the default generator.
  GemmBenchOptions gemm_options;
  gemm_options.warmup = 1;
  gemm_options.repeats = 3;
  gemm_options.bf16 = false;
  const double peak_flops = run_gemm_bench(2048, threads, gemm_options).fp32_gflops * 1e9;
  at::manual_seed(static_cast<uint64_t>(t.seed));
  Progress progress(t.steps);

  if (options_.write_run_dir) {
    std::error_code ec;
    fs::create_directories(options_.out_dir, ec);
    KOLOS_CHECK(!ec, "--out {}: cannot create the run directory: {}", options_.out_dir, ec.message());
    if (options_.resume) {
      if (auto latest = checkpoint::latest_checkpoint(options_.out_dir)) {
        restore(*latest);
        progress.message(fmt::format("resuming from {} (step {})", *latest, start_step_));
      } else {
        progress.message(fmt::format("no checkpoint in {}: starting fresh", options_.out_dir));
      }
    }
    std::ofstream(fs::path(options_.out_dir) / "config.toml") << dump_toml(config_);
  }
  std::optional<MetricsWriter> metrics;
  if (options_.write_run_dir) metrics.emplace(options_.out_dir, start_step_);

  const double fpt = flops_per_token();
  progress.message(fmt::format("model {}: {:.2f}M parameters, {} threads, batch {}x{}x{} of {} tokens", config_.model.arch,
                               model_->num_params() / 1e6, threads, t.batch_size, t.grad_accum, config_.parallel.dp,
                               config_.model.seq_len));

  g_stop_signal.store(0);
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);

  Timer run_timer;
  const int64_t end_step = options_.stop_after > 0 ? std::min(t.steps, options_.stop_after) : t.steps;
  double last_loss = 0, window_tokens = 0, window_s = 0;
  std::optional<std::pair<double, double>> last_eval;
  int64_t step = start_step_;
  int stop_signal = 0;
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
      nlohmann::json rec = {{"step", done},
                            {"loss", r.loss},
                            {"lr", r.lr},
                            {"grad_norm", r.grad_norm},
                            {"tokens", tokens_seen_},
                            {"tokens_per_s", tps},
                            {"step_ms", r.step_ms},
                            {"mfu", tps * fpt / peak_flops},
                            {"peak_rss_mb", peak_rss_bytes() / 1048576.0},
                            {"comm", nlohmann::json::object()}};
      if (eval_now) {
        last_eval = evaluate(t.eval_batches);
        rec["val_loss"] = last_eval->first;
        rec["val_bpb"] = last_eval->second;
        progress.message(fmt::format("step {}: val_loss {:.4f}, val_bpb {:.4f}", done, last_eval->first,
                                     last_eval->second));
      }
      if (metrics) metrics->write(rec);
      const double steps_in_window = std::max<double>(1, window_tokens / static_cast<double>(r.tokens));
      progress.update(done, r.loss, r.lr, tps, (end_step - done) * window_s / steps_in_window);
      window_tokens = 0;
      window_s = 0;
    }
    if (options_.write_run_dir && t.save_every > 0 && done % t.save_every == 0 && done != end_step) {
      elapsed_s_ += run_timer.seconds();
      run_timer.reset();
      save(done);
    }
    if ((stop_signal = g_stop_signal.load()) != 0) {
      ++step;
      break;
    }
  }
  elapsed_s_ += run_timer.seconds();
  progress.finish();
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);

  const bool finished = step >= t.steps;
  if (options_.write_run_dir) save(step);
  if (stop_signal != 0) {
    progress.message(fmt::format("stopped by signal {} at step {}; checkpoint written, resume with --resume",
                                 stop_signal, step));
    throw Interrupted(128 + stop_signal);
  }

  nlohmann::json summary = {{"steps", step},
                            {"finished", finished},
                            {"loss", last_loss},
                            {"tokens", tokens_seen_},
                            {"tokens_per_s", tokens_seen_ / std::max(elapsed_s_, 1e-9)},
                            {"elapsed_s", elapsed_s_},
                            {"params", model_->num_params()},
                            {"peak_rss_mb", peak_rss_bytes() / 1048576.0}};
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
  if (finished && t.sample_tokens > 0 && !config_.data.synthetic) {
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
  std::printf("%s\n", summary.dump().c_str());
  std::fflush(stdout);
  return summary;
}

}  // namespace kolos::train
