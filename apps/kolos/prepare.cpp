#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

namespace kolos::app {

int prepare_main(int argc, char** argv) {
  CLI::App app{"kolos prepare", "prepare"};
  if (!parse_args(app, argc, argv)) return 0;
  throw InputError("kolos prepare: not implemented yet");
}

}  // namespace kolos::app
