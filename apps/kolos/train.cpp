#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

namespace kolos::app {

int train_main(int argc, char** argv) {
  CLI::App app{"kolos train", "train"};
  if (!parse_args(app, argc, argv)) return 0;
  throw InputError("kolos train: not implemented yet");
}

}  // namespace kolos::app
