// metrics.jsonl of a run directory (one JSON object per logged step, DESIGN "Run directory") and the live
// progress line.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace kolos::train {

class MetricsWriter {
 public:
  // Opens RUN_DIR/metrics.jsonl for appending. Lines of steps after `resume_step` (left by a run that died
  // after logging them) are dropped first, so a resumed run does not repeat steps.
  MetricsWriter(const std::string& run_dir, int64_t resume_step);
  // Appends one line and flushes it.
  void write(const nlohmann::json& record);

 private:
  std::string path_;
};

// The progress line: "step 120/1000 | loss 2.3456 | lr 1.00e-03 | 12.3k tok/s | ETA 3m12s". On a terminal it
// is redrawn in place; otherwise printed as a line each time.
class Progress {
 public:
  // A disabled Progress prints nothing (ranks other than 0).
  explicit Progress(int64_t total_steps, bool enabled = true);
  void update(int64_t step, double loss, double lr, double tokens_per_s, double eta_s);
  // Prints a message on its own line (clearing the progress line first on a terminal).
  void message(const std::string& text);
  void finish();

 private:
  int64_t total_;
  bool tty_;
  bool enabled_;
  bool dirty_ = false;
};

std::string format_duration(double seconds);

}  // namespace kolos::train
