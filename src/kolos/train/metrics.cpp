#include "kolos/train/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "kolos/core/error.h"

namespace kolos::train {

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t resume_step)
    : path_((std::filesystem::path(run_dir) / "metrics.jsonl").string()) {
  std::vector<std::string> kept;
  bool dropped = false;
  {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", int64_t{0}) > resume_step) {
        dropped = true;
        continue;
      }
      kept.push_back(line);
    }
  }
  if (resume_step == 0) {  // a fresh run starts a fresh file
    kept.clear();
    dropped = true;
  }
  if (dropped) {
    std::ofstream out(path_, std::ios::trunc);
    for (const auto& l : kept) out << l << "\n";
    KOLOS_CHECK(out.good(), "cannot write {}", path_);
  }
}

void MetricsWriter::write(const nlohmann::json& record) {
  std::ofstream out(path_, std::ios::app);
  out << record.dump() << "\n";
  out.flush();
  KOLOS_CHECK(out.good(), "cannot write {} (disk full?)", path_);
}

std::string format_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

Progress::Progress(int64_t total_steps, bool enabled)
    : total_(total_steps), tty_(::isatty(STDOUT_FILENO) != 0), enabled_(enabled) {}

void Progress::update(int64_t step, double loss, double lr, double tokens_per_s, double eta_s) {
  if (!enabled_) return;
  const std::string rate = tokens_per_s >= 1e3 ? fmt::format("{:.1f}k", tokens_per_s / 1e3)
                                               : fmt::format("{:.0f}", tokens_per_s);
  const std::string line = fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | {} tok/s | ETA {}", step, total_,
                                       loss, lr, rate, format_duration(eta_s));
  if (tty_) {
    std::printf("\r\033[K%s", line.c_str());
    dirty_ = true;
  } else {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

void Progress::message(const std::string& text) {
  if (!enabled_) return;
  if (dirty_) std::printf("\r\033[K");
  std::printf("%s\n", text.c_str());
  dirty_ = false;
  std::fflush(stdout);
}

void Progress::finish() {
  if (dirty_) std::printf("\n");
  dirty_ = false;
  std::fflush(stdout);
}

}  // namespace kolos::train
