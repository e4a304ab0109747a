#include "kolos/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kolos/core/error.h"

namespace fs = std::filesystem;

namespace kolos::checkpoint {

namespace {

constexpr int kFormatVersion = 1;

void write_file_synced(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    KOLOS_CHECK(f.good(), "checkpoint: cannot write {} (disk full or no permission?)", path);
  }
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KOLOS_CHECK(f.good(), "checkpoint: cannot read {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// step_N directories under `ckpt_root`, sorted by N.
std::vector<std::pair<int64_t, fs::path>> list_steps(const fs::path& ckpt_root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(ckpt_root, ec)) return out;
  for (const auto& e : fs::directory_iterator(ckpt_root, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step_", 0) != 0) continue;
    try {
      size_t pos = 0;
      const int64_t n = std::stoll(name.substr(5), &pos);
      if (pos == name.size() - 5) out.emplace_back(n, e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const CheckpointData& data, int64_t keep) {
  KOLOS_ASSERT(data.state.contains("step"), "checkpoint state without a step");
  const int64_t step = data.state["step"].get<int64_t>();
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const std::string name = "step_" + std::to_string(step);
  const fs::path tmp = root / (".tmp-" + name);
  const fs::path final_dir = root / name;
  std::error_code ec;
  fs::create_directories(root, ec);
  KOLOS_CHECK(!ec, "checkpoint: cannot create {}: {}", root.string(), ec.message());
  for (const auto& e : fs::directory_iterator(root, ec))  // leftovers of an interrupted save
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path(), ec);
  fs::create_directories(tmp, ec);
  KOLOS_CHECK(!ec, "checkpoint: cannot create {}: {}", tmp.string(), ec.message());

  save_safetensors((tmp / "model.safetensors").string(), data.model, {{"format", "kolos"}});
  save_safetensors((tmp / "optim.safetensors").string(), data.optim, {{"format", "kolos"}});
  write_file_synced((tmp / "config.toml").string(), data.config_toml);
  nlohmann::json state = data.state;
  state["format_version"] = kFormatVersion;
  write_file_synced((tmp / "state.json").string(), state.dump(2) + "\n");
  fsync_dir(tmp.string());

  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  KOLOS_CHECK(!ec, "checkpoint: cannot rename {} to {}: {}", tmp.string(), final_dir.string(), ec.message());
  const std::string latest_tmp = (root / ".latest.tmp").string();
  write_file_synced(latest_tmp, name + "\n");
  fs::rename(latest_tmp, root / "latest", ec);
  KOLOS_CHECK(!ec, "checkpoint: cannot update {}: {}", (root / "latest").string(), ec.message());
  fsync_dir(root.string());

  if (keep > 0) {
    auto steps = list_steps(root);
    for (size_t i = 0; i + keep < steps.size(); ++i) fs::remove_all(steps[i].second, ec);
  }
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (fs::exists(root / "latest", ec)) {
    std::string name = read_file((root / "latest").string());
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    if (fs::exists(root / name / "state.json", ec)) return (root / name).string();
  }
  auto steps = list_steps(root);  // pointer missing or stale: the newest complete directory
  for (auto it = steps.rbegin(); it != steps.rend(); ++it)
    if (fs::exists(it->second / "state.json", ec)) return it->second.string();
  return std::nullopt;
}

CheckpointData load_checkpoint(const std::string& path, std::string* resolved_dir) {
  std::string dir = path;
  std::error_code ec;
  KOLOS_CHECK(fs::is_directory(dir, ec), "checkpoint {}: no such directory", path);
  if (!fs::exists(fs::path(dir) / "state.json", ec)) {
    auto latest = latest_checkpoint(dir);
    KOLOS_CHECK(latest.has_value(), "checkpoint {}: neither a checkpoint (no state.json) nor a run directory with checkpoints", path);
    dir = *latest;
  }
  if (resolved_dir) *resolved_dir = dir;
  CheckpointData data;
  const std::string state_path = (fs::path(dir) / "state.json").string();
  try {
    data.state = nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("checkpoint: {} is not valid JSON: {}", state_path, e.what()));
  }
  KOLOS_CHECK(data.state.is_object() && data.state.contains("step") && data.state["step"].is_number_integer(),
              "checkpoint: {} has no integer \"step\"", state_path);
  KOLOS_CHECK(data.state.value("format_version", 0) == kFormatVersion,
              "checkpoint: {} has format_version {}, expected {}", state_path, data.state.value("format_version", 0),
              kFormatVersion);
  data.config_toml = read_file((fs::path(dir) / "config.toml").string());
  data.model = load_safetensors((fs::path(dir) / "model.safetensors").string());
  data.optim = load_safetensors((fs::path(dir) / "optim.safetensors").string());
  return data;
}

}  // namespace kolos::checkpoint
