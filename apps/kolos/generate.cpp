#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

namespace kolos::app {

int generate_main(int argc, char** argv) {
  CLI::App app{"kolos generate", "generate"};
  if (!parse_args(app, argc, argv)) return 0;
  throw InputError("kolos generate: not implemented yet");
}

}  // namespace kolos::app
