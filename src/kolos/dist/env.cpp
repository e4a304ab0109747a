#include "kolos/dist/env.h"

#include <charconv>
#include <cstdlib>
#include <optional>

#include "kolos/core/error.h"

namespace kolos::dist {

namespace {

std::optional<std::string> get(const char* name) {
  const char* value = std::getenv(name);
  if (!value) return std::nullopt;
  return std::string(value);
}

// A non-negative integer, the whole string; `what` names the source (a variable) in the error.
int parse_count(const std::string& text, const std::string& what) {
  int value = -1;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  KOLOS_CHECK(!text.empty() && ec == std::errc() && ptr == end && value >= 0,
              "{}=\"{}\": expected a non-negative integer", what, text);
  return value;
}

int require_int(const char* name, const std::string& launcher) {
  const auto value = get(name);
  KOLOS_CHECK(value.has_value(), "{} is not set, but the {} variables are (set it, or unset the others)", name,
              launcher);
  return parse_count(*value, name);
}

int int_or(const char* name, int fallback) {
  const auto value = get(name);
  return value ? parse_count(*value, name) : fallback;
}

int parse_port(const std::string& text, const char* name) {
  const int port = parse_count(text, name);
  KOLOS_CHECK(port >= 1 && port <= 65535, "{}={}: expected a TCP port between 1 and 65535", name, port);
  return port;
}

// MASTER_ADDR / MASTER_PORT, each required (when `required`) or defaulted.
void read_master(DistEnv& env, bool required, const std::string& hint) {
  const auto addr = get("MASTER_ADDR");
  const auto port = get("MASTER_PORT");
  KOLOS_CHECK(addr || !required, "MASTER_ADDR is not set: {}", hint);
  KOLOS_CHECK(port || !required, "MASTER_PORT is not set: {}", hint);
  if (addr) {
    KOLOS_CHECK(!addr->empty(), "MASTER_ADDR is empty: expected the host name or address of rank 0");
    env.master_addr = *addr;
  }
  if (port) env.master_port = parse_port(*port, "MASTER_PORT");
}

void check_consistent(const DistEnv& env, const char* rank_var, const char* world_var, const char* local_rank_var,
                      const char* local_world_var) {
  KOLOS_CHECK(env.world_size >= 1, "{}={}: expected at least 1 process", world_var, env.world_size);
  KOLOS_CHECK(env.rank < env.world_size, "{}={} is not below {}={}", rank_var, env.rank, world_var, env.world_size);
  KOLOS_CHECK(env.local_world_size >= 1, "{}={}: expected at least 1 process per machine", local_world_var,
              env.local_world_size);
  KOLOS_CHECK(env.local_world_size <= env.world_size, "{}={} is larger than {}={}", local_world_var,
              env.local_world_size, world_var, env.world_size);
  KOLOS_CHECK(env.local_rank < env.local_world_size, "{}={} is not below {}={}", local_rank_var, env.local_rank,
              local_world_var, env.local_world_size);
}

DistEnv read_torchrun() {
  DistEnv env;
  env.launcher = "torchrun";
  env.rank = require_int("RANK", "torchrun (RANK/WORLD_SIZE)");
  env.world_size = require_int("WORLD_SIZE", "torchrun (RANK/WORLD_SIZE)");
  // Set by hand with only RANK and WORLD_SIZE: all processes on one machine.
  env.local_rank = int_or("LOCAL_RANK", env.rank);
  env.local_world_size = int_or("LOCAL_WORLD_SIZE", env.world_size);
  check_consistent(env, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
  read_master(env, env.world_size > 1, "torchrun and `kolos run` set it; set it by hand when setting RANK yourself");
  // torchrun's static rendezvous: its agent already serves the store at MASTER_ADDR:MASTER_PORT.
  env.agent_store = get("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  env.restart_count = int_or("TORCHELASTIC_RESTART_COUNT", 0);
  return env;
}

DistEnv read_mpirun() {
  DistEnv env;
  env.launcher = "mpirun";
  const std::string who = "mpirun (OMPI_COMM_WORLD_*)";
  env.rank = require_int("OMPI_COMM_WORLD_RANK", who);
  env.world_size = require_int("OMPI_COMM_WORLD_SIZE", who);
  env.local_rank = require_int("OMPI_COMM_WORLD_LOCAL_RANK", who);
  env.local_world_size = require_int("OMPI_COMM_WORLD_LOCAL_SIZE", who);
  check_consistent(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "OMPI_COMM_WORLD_LOCAL_SIZE");
  read_master(env, env.world_size > 1,
              "under mpirun, pass the rendezvous address, e.g. `mpirun -x MASTER_ADDR=host0 -x MASTER_PORT=29500`");
  return env;
}

DistEnv read_slurm() {
  DistEnv env;
  env.launcher = "slurm";
  const std::string who = "Slurm (SLURM_PROCID)";
  env.rank = require_int("SLURM_PROCID", who);
  env.world_size = get("SLURM_NTASKS") ? require_int("SLURM_NTASKS", who) : require_int("SLURM_NPROCS", who);
  env.local_rank = require_int("SLURM_LOCALID", who);
  if (const auto per_node = get("SLURM_NTASKS_PER_NODE")) {
    env.local_world_size = parse_count(*per_node, "SLURM_NTASKS_PER_NODE");
  } else if (const auto tasks = get("SLURM_TASKS_PER_NODE")) {
    const std::vector<int> counts = slurm_tasks_per_node(*tasks);
    int node = 0;
    if (const auto node_id = get("SLURM_NODEID")) {
      node = parse_count(*node_id, "SLURM_NODEID");
    } else {
      for (int c : counts)
        KOLOS_CHECK(c == counts[0], "SLURM_TASKS_PER_NODE=\"{}\" differs between nodes and SLURM_NODEID is not set",
                    *tasks);
    }
    KOLOS_CHECK(node < static_cast<int>(counts.size()), "SLURM_NODEID={} is not below the {} nodes of "
                "SLURM_TASKS_PER_NODE=\"{}\"", node, counts.size(), *tasks);
    env.local_world_size = counts[node];
  } else {
    KOLOS_CHECK(false, "neither SLURM_NTASKS_PER_NODE nor SLURM_TASKS_PER_NODE is set, but SLURM_PROCID is");
  }
  check_consistent(env, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                   get("SLURM_NTASKS_PER_NODE") ? "SLURM_NTASKS_PER_NODE" : "SLURM_TASKS_PER_NODE");
  if (get("MASTER_ADDR")) {
    read_master(env, false, "");
  } else {
    const char* list_var = get("SLURM_JOB_NODELIST") ? "SLURM_JOB_NODELIST" : "SLURM_NODELIST";
    const auto list = get(list_var);
    KOLOS_CHECK(list || env.world_size == 1,
                "neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: cannot tell where rank 0 runs");
    if (list) env.master_addr = slurm_first_host(*list, list_var);
    if (const auto port = get("MASTER_PORT")) env.master_port = parse_port(*port, "MASTER_PORT");
  }
  return env;
}

}  // namespace

std::string slurm_first_host(const std::string& nodelist, const std::string& variable) {
  // The first entry: up to the first comma outside brackets.
  std::string entry;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    entry += c;
  }
  // Replace each bracket group by its first element: "[01-04,7]" → "01".
  std::string host;
  for (size_t i = 0; i < entry.size();) {
    if (entry[i] != '[') {
      host += entry[i++];
      continue;
    }
    const size_t close = entry.find(']', i);
    KOLOS_CHECK(close != std::string::npos, "{}=\"{}\": unclosed '['", variable, nodelist);
    const std::string group = entry.substr(i + 1, close - i - 1);
    const std::string first = group.substr(0, group.find_first_of(",-"));
    KOLOS_CHECK(!first.empty(), "{}=\"{}\": empty range in brackets", variable, nodelist);
    host += first;
    i = close + 1;
  }
  KOLOS_CHECK(!host.empty(), "{}=\"{}\": expected host names such as \"node1,node2\" or \"node[1-3]\"", variable,
              nodelist);
  return host;
}

std::vector<int> slurm_tasks_per_node(const std::string& value, const std::string& variable) {
  std::vector<int> counts;
  size_t start = 0;
  while (start <= value.size()) {
    size_t end = value.find(',', start);
    if (end == std::string::npos) end = value.size();
    const std::string item = value.substr(start, end - start);
    const size_t paren = item.find('(');
    int repeat = 1;
    std::string count_text = item;
    if (paren != std::string::npos) {
      KOLOS_CHECK(item.size() > paren + 3 && item.compare(paren, 2, "(x") == 0 && item.back() == ')',
                  "{}=\"{}\": expected counts such as \"2(x3),1\"", variable, value);
      count_text = item.substr(0, paren);
      repeat = parse_count(item.substr(paren + 2, item.size() - paren - 3), variable + " repeat");
    }
    const int count = parse_count(count_text, variable);
    KOLOS_CHECK(count >= 1 && repeat >= 1 && repeat <= 1000000, "{}=\"{}\": expected counts and repeats from 1",
                variable, value);
    counts.insert(counts.end(), repeat, count);
    start = end + 1;
  }
  return counts;
}

DistEnv read_dist_env() {
  if (get("RANK") || get("WORLD_SIZE")) return read_torchrun();
  if (get("OMPI_COMM_WORLD_RANK") || get("OMPI_COMM_WORLD_SIZE")) return read_mpirun();
  if (get("SLURM_PROCID")) return read_slurm();
  DistEnv env;
  read_master(env, false, "");
  return env;
}

}  // namespace kolos::dist
