#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

namespace kolos::app {

int plot_main(int argc, char** argv) {
  CLI::App app{"kolos plot", "plot"};
  if (!parse_args(app, argc, argv)) return 0;
  throw InputError("kolos plot: not implemented yet");
}

}  // namespace kolos::app
