#include "kolos/core/cli.h"

#include "kolos/core/error.h"

namespace kolos {

bool parse_args(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::CallForAllHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::ParseError& e) {
    throw InputError(fmt::format("kolos {}: {} (see kolos {} --help)", app.get_name(), e.what(), app.get_name()));
  }
  return true;
}

}  // namespace kolos
