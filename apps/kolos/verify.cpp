// kolos verify: trains the parity model (or --config) on one process and under each layout and compares.
#include "apps/kolos/commands.h"
#include "kolos/core/error.h"
#include "kolos/core/subprocess.h"
#include "kolos/parallel/verify.h"

namespace kolos::app {

int verify_main(int argc, char** argv) {
  CLI::App app{
      "Check parallel layouts against one process: trains --config (default: the parity recipe) on one process and "
      "under each layout, prints the largest relative loss and parameter differences per layout, checks each rank's "
      "shards and collective counts, and exits 4 if any layout is out of tolerance. Runs the processes of each "
      "layout on this machine with `kolos run`.",
      "verify"};
  parallel::VerifyOptions o;
  app.add_option("--layouts", o.layouts,
                 "layouts separated by ';', each a ','-list of key=value: dp, tp, sp, pp, zero, grad_accum, other "
                 "parallel.* keys by name, or section.key (default \"dp=2;dp=2,zero=1;dp=2,zero=2\")");
  app.add_option("--config", o.config, "recipe name or TOML file (default: parity)");
  app.add_option("--set", o.overrides, "override one key of every run: section.key=value (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  app.add_option("--out", o.out_dir, "directory for the runs and their logs (default runs/verify; replaced)");
  app.add_option("--tolerance", o.tolerance, "largest relative difference allowed (default 1e-5)")
      ->check(CLI::PositiveNumber);
  if (!parse_args(app, argc, argv)) return 0;
  o.kolos_binary = self_executable("kolos verify");
  return parallel::verify(o);
}

}  // namespace kolos::app
