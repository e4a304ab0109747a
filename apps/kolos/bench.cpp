#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

namespace kolos::app {

int bench_main(int argc, char** argv) {
  CLI::App app{"kolos bench", "bench"};
  if (!parse_args(app, argc, argv)) return 0;
  throw InputError("kolos bench: not implemented yet");
}

}  // namespace kolos::app
