// `kolos plot RUN_DIR [--out FILE.png]`: training/validation loss and tokens/s of a run, drawn by gnuplot.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/kolos/commands.h"
#include "kolos/core/error.h"

extern char** environ;

namespace kolos::app {

namespace {

namespace fs = std::filesystem;

struct MetricsPoint {
  int64_t step = 0;
  std::optional<double> loss, tokens_per_s, val_loss;
};

// A number, or nothing when the key is absent or null (nlohmann writes a NaN loss as null: a diverged run still
// plots). Anything else is a malformed line.
std::optional<double> optional_number(const nlohmann::json& record, const char* key, const std::string& where) {
  const auto it = record.find(key);
  if (it == record.end() || it->is_null()) return std::nullopt;
  KOLOS_CHECK(it->is_number(), "{}: \"{}\" must be a number, found {}", where, key, it->dump());
  return it->get<double>();
}

// Reads metrics.jsonl: one JSON object per line with "step" and optionally loss, tokens_per_s, val_loss. A last
// line without its newline may be one that the trainer is still writing: it is skipped when it does not parse.
std::vector<MetricsPoint> read_metrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KOLOS_CHECK(in, "cannot read {}: {}", path, std::strerror(errno));
  std::vector<MetricsPoint> points;
  std::string line;
  for (int line_number = 1; std::getline(in, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, line_number);
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      if (in.eof()) {
        std::fprintf(stderr, "kolos plot: skipping the incomplete last line %s\n", where.c_str());
        break;
      }
      throw InputError(fmt::format("{}: not a JSON object: {}", where, e.what()));
    }
    KOLOS_CHECK(record.is_object(), "{}: expected a JSON object per line, found {}", where, record.dump());
    const auto step = record.find("step");
    KOLOS_CHECK(step != record.end() && step->is_number_integer(), "{}: \"step\" must be an integer, found {}",
                where, step == record.end() ? std::string("nothing") : step->dump());
    MetricsPoint p;
    p.step = step->get<int64_t>();
    p.loss = optional_number(record, "loss", where);
    p.tokens_per_s = optional_number(record, "tokens_per_s", where);
    p.val_loss = optional_number(record, "val_loss", where);
    points.push_back(p);
  }
  return points;
}

// A gnuplot single-quoted string: only the quote itself needs escaping (doubled).
std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// A temporary directory for gnuplot's data and script, removed on scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "kolos-plot-XXXXXX").string();
    KOLOS_CHECK(mkdtemp(pattern.data()) != nullptr, "kolos plot: cannot create a temporary directory: {}",
                std::strerror(errno));
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Writes (step, value) rows of the points that have the value; returns how many.
int write_series(const std::string& path, const std::vector<MetricsPoint>& points,
                 std::optional<double> MetricsPoint::*value) {
  std::ofstream out(path);
  int rows = 0;
  for (const auto& p : points) {
    if (!(p.*value) || !std::isfinite(*(p.*value))) continue;
    out << p.step << ' ' << fmt::format("{}", *(p.*value)) << '\n';
    ++rows;
  }
  KOLOS_CHECK(out.good(), "kolos plot: cannot write {}", path);
  return rows;
}

// Runs `gnuplot script`; InputError with gnuplot's message when it fails (the output path is the usual culprit).
void run_gnuplot(const std::string& script, const std::string& log, const std::string& png) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string program = "gnuplot";
  char* argv[] = {program.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  KOLOS_CHECK(rc == 0, "kolos plot: cannot run gnuplot ({}); install it (Debian: apt-get install gnuplot-nox)",
              std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::ifstream log_in(log);
  const std::string message((std::istreambuf_iterator<char>(log_in)), {});
  // posix_spawnp reports a missing program as exit status 127 of the child.
  KOLOS_CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 127),
              "kolos plot: cannot run gnuplot; install it (Debian: apt-get install gnuplot-nox)");
  KOLOS_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && fs::exists(png),
              "kolos plot: gnuplot could not write {}: {}", png, message.empty() ? "(no message)" : message);
}

}  // namespace

int plot_main(int argc, char** argv) {
  CLI::App app{"Draws a run's training and validation loss (top) and tokens/s (bottom) against the step, from\n"
               "RUN_DIR/metrics.jsonl, into a PNG (by default RUN_DIR/loss.png). Needs gnuplot.",
               "plot"};
  std::string run_dir, out;
  app.add_option("RUN_DIR", run_dir, "run directory (the --out of kolos train)")->required();
  app.add_option("--out", out, "PNG file to write (default: RUN_DIR/loss.png)");
  if (!parse_args(app, argc, argv)) return 0;

  // 1. Read the metrics.
  KOLOS_CHECK(fs::is_directory(run_dir), "kolos plot: run directory {} does not exist", run_dir);
  const std::string metrics = (fs::path(run_dir) / "metrics.jsonl").string();
  KOLOS_CHECK(fs::is_regular_file(metrics), "kolos plot: {} not found (is {} the --out of a kolos train run?)",
              metrics, run_dir);
  const std::vector<MetricsPoint> points = read_metrics(metrics);
  if (out.empty()) out = (fs::path(run_dir) / "loss.png").string();

  // 2. One data file per series, so that gnuplot never sees a missing value.
  ScratchDir scratch;
  const int train_rows = write_series(scratch / "loss.dat", points, &MetricsPoint::loss);
  const int val_rows = write_series(scratch / "val_loss.dat", points, &MetricsPoint::val_loss);
  const int speed_rows = write_series(scratch / "tokens_per_s.dat", points, &MetricsPoint::tokens_per_s);
  KOLOS_CHECK(train_rows + val_rows > 0, "kolos plot: {} has no loss values to plot ({} records)", metrics,
              points.size());

  // 3. The gnuplot script: pngcairo where gnuplot has it, the plain png terminal otherwise.
  std::string loss_plot;
  if (train_rows > 0)
    loss_plot += fmt::format("{} using 1:2 with lines lw 2 lc rgb '#1f77b4' title 'training'",
                             gnuplot_quote(scratch / "loss.dat"));
  if (val_rows > 0)
    loss_plot += fmt::format("{}{} using 1:2 with linespoints pt 7 ps 0.8 lw 2 lc rgb '#d62728' title 'validation'",
                             loss_plot.empty() ? "" : ", ", gnuplot_quote(scratch / "val_loss.dat"));
  const std::string speed_plot =
      speed_rows > 0 ? fmt::format("plot {} using 1:2 with lines lw 2 lc rgb '#2ca02c' title 'tokens/s'",
                                   gnuplot_quote(scratch / "tokens_per_s.dat"))
                     : "set label 1 'no tokens_per_s in the metrics' at graph 0.5, 0.5 center\n"
                       "plot [0:1] [0:1] NaN notitle";
  const std::string script = fmt::format(
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {{\n"
      "  set terminal pngcairo size 1000,800 noenhanced font 'sans,10'\n"
      "}} else {{\n"
      "  set terminal png size 1000,800 noenhanced\n"
      "}}\n"
      "set output {out}\n"
      "set multiplot layout 2,1 title {title}\n"
      "set grid\n"
      "set key top right\n"
      "set xlabel 'step'\n"
      "set ylabel 'loss'\n"
      "plot {loss_plot}\n"
      "set ylabel 'tokens/s'\n"
      "set yrange [0:*]\n"
      "{speed_plot}\n"
      "unset multiplot\n"
      "unset output\n",
      fmt::arg("out", gnuplot_quote(out)), fmt::arg("title", gnuplot_quote(run_dir)),
      fmt::arg("loss_plot", loss_plot), fmt::arg("speed_plot", speed_plot));
  {
    std::ofstream script_file(scratch / "plot.gp");
    script_file << script;
    KOLOS_CHECK(script_file.good(), "kolos plot: cannot write {}", scratch / "plot.gp");
  }

  // 4. Draw. A stale PNG must not pass for the new one.
  std::error_code ec;
  fs::remove(out, ec);
  run_gnuplot(scratch / "plot.gp", scratch / "gnuplot.log", out);
  std::printf("kolos plot: wrote %s (%d training steps, %d evaluations, %d with tokens/s)\n", out.c_str(),
              train_rows, val_rows, speed_rows);
  return 0;
}

}  // namespace kolos::app
