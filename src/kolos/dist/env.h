// Where this process stands in a distributed run: its rank, the world size, its place on its machine, and the
// rendezvous address (the master). Read once at start-up from the variables the launcher set:
//
//   launcher   detected by          rank / world / local rank / local world                     master
//   --------   -------------------  ----------------------------------------------------------  -------------------
//   torchrun   RANK or WORLD_SIZE   RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE               MASTER_ADDR, _PORT
//   (also `kolos run`, which sets the same variables)
//   mpirun     OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE        MASTER_ADDR, _PORT
//                                                                                                (the user sets them)
//   slurm      SLURM_PROCID         SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,                   MASTER_ADDR, else the
//                                   SLURM_NTASKS_PER_NODE, else SLURM_TASKS_PER_NODE[SLURM_NODEID] first host of
//                                                                                                SLURM_JOB_NODELIST
//   single     none of the above    0 / 1 / 0 / 1                                                127.0.0.1
//
// The first launcher whose detecting variable is set wins (torchrun, then mpirun, then Slurm), so `kolos run`
// inside a Slurm allocation is read as torchrun. MASTER_PORT defaults to 29500 (PyTorch's default) where the
// launcher does not give one (Slurm, a single process). A missing or inconsistent value (a rank not below the world
// size, a non-numeric count) throws kolos::InputError naming the variable.
#pragma once

#include <string>
#include <vector>

namespace kolos::dist {

constexpr int kDefaultMasterPort = 29500;

struct DistEnv {
  int rank = 0;              // global rank, 0 <= rank < world_size
  int world_size = 1;        // number of processes in the run
  int local_rank = 0;        // rank among the processes on this machine, 0 <= local_rank < local_world_size
  int local_world_size = 1;  // processes on this machine
  std::string master_addr = "127.0.0.1";  // host of rank 0's rendezvous store
  int master_port = kDefaultMasterPort;
  std::string launcher = "single";  // "torchrun", "mpirun", "slurm" or "single"
  // torchrun with its default (static) rendezvous: TORCHELASTIC_USE_AGENT_STORE=True says its agent serves the
  // store at the master address, so no rank may start one; keys then live under /worker/attempt_<restart_count>
  // (TORCHELASTIC_RESTART_COUNT), as PyTorch's own ranks use them.
  bool agent_store = false;
  int restart_count = 0;
};

// Reads the process environment (see the table above). Throws InputError on missing or inconsistent variables.
DistEnv read_dist_env();

// Slurm helpers, exposed for tests.
// The first host of a Slurm node list: "a,b" → "a"; "node[1-3,5]" → "node1"; "gpu[01-04]-ib" → "gpu01-ib".
// `variable` names the source in error messages.
std::string slurm_first_host(const std::string& nodelist, const std::string& variable = "SLURM_JOB_NODELIST");
// Expands SLURM_TASKS_PER_NODE ("2(x3),1") to one count per node ({2, 2, 2, 1}).
std::vector<int> slurm_tasks_per_node(const std::string& value, const std::string& variable = "SLURM_TASKS_PER_NODE");

}  // namespace kolos::dist
