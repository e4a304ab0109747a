// kolos train: trains a model from a recipe or TOML file with --set overrides into a run directory.
#include "apps/kolos/commands.h"
#include "kolos/config/config.h"
#include "kolos/core/error.h"
#include "kolos/dist/env.h"
#include "kolos/parallel/pipeline/schedule.h"
#include "kolos/parallel/pipeline/simulator.h"
#include "kolos/parallel/plan.h"
#include "kolos/train/trainer.h"

namespace kolos::app {

int train_main(int argc, char** argv) {
  CLI::App app{"Train a model. With no arguments: the tiny recipe on the demo corpus into runs/tiny.", "train"};
  std::string config_name;
  std::vector<std::string> overrides;
  std::string out_dir;
  bool resume = false;
  int64_t stop_after = 0;
  app.add_option("--config", config_name, "recipe name (configs/NAME.toml, built in) or TOML file; default: tiny");
  app.add_option("--set", overrides, "override one key: section.key=value (repeatable)")->take_all()->allow_extra_args(false);
  app.add_option("--out", out_dir, "run directory (default: runs/<recipe name>)");
  app.add_flag("--resume", resume, "continue from the latest complete checkpoint in --out, or start fresh and say so");
  app.add_option("--stop-after", stop_after, "stop (with a checkpoint) after this many steps, without changing the schedule")
      ->check(CLI::NonNegativeNumber);
  bool print_schedule = false;
  app.add_flag("--print-schedule", print_schedule,
               "draw the pipeline schedule of the config (parallel.pp, pp_schedule, pp_virtual; train.grad_accum "
               "micro-batches) as a text timeline per stage, with equal costs and backward = 2 × forward, and exit");
  if (!parse_args(app, argc, argv)) return 0;

  std::optional<std::string> source;
  if (!config_name.empty()) source = config_name;
  // With more than one process (kolos run, torchrun, mpirun, srun) the layout is checked against the world size.
  const dist::DistEnv env = dist::read_dist_env();
  if (print_schedule) {
    // Needs no processes: the layout is checked for the world it describes (dp = 1 unless set).
    std::vector<std::string> probe = overrides;
    probe.push_back("parallel.dp=1");
    const Config shape = load_config(source, probe);
    const int64_t dp = load_config(source, overrides, shape.parallel.pp * shape.parallel.sp * shape.parallel.tp)
                           .parallel.dp;
    const int world = static_cast<int>(shape.parallel.pp * shape.parallel.sp * shape.parallel.tp * dp);
    const Config config = load_config(source, overrides, world);
    const parallel::Plan plan = parallel::make_plan(config, world);
    const auto schedule = parallel::pipeline::make_schedule(plan.pp_schedule, plan.pp,
                                                            static_cast<int>(config.train.grad_accum), plan.pp_virtual);
    const auto costs = parallel::pipeline::Costs::equal(plan.pp, plan.pp_virtual, 1.0, 2.0);
    std::printf("%s", parallel::pipeline::draw(schedule, parallel::pipeline::simulate(schedule, costs)).c_str());
    return 0;
  }
  Config config = load_config(source, overrides, env.world_size);
  train::RunOptions options;
  if (out_dir.empty()) {
    std::string stem = config_name.empty() ? "tiny" : config_name;
    const auto slash = stem.find_last_of('/');
    if (slash != std::string::npos) stem = stem.substr(slash + 1);
    const auto dot = stem.rfind(".toml");
    if (dot != std::string::npos) stem = stem.substr(0, dot);
    out_dir = "runs/" + stem;
  }
  options.out_dir = out_dir;
  options.resume = resume;
  options.stop_after = stop_after;
  train::Trainer trainer(std::move(config), options, env);
  trainer.train();
  return 0;
}

}  // namespace kolos::app
