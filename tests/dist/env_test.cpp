// read_dist_env: rank, world and master from torchrun, mpirun and Slurm variables, and errors naming the variable.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>

#include "kolos/core/error.h"
#include "kolos/dist/env.h"

namespace kolos::dist {
namespace {

// Every variable read_dist_env looks at; the fixture clears them all, lets a test set some, and restores the
// process's values afterwards.
const char* const kVariables[] = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
    "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"};

class DistEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVariables) {
      if (const char* value = std::getenv(name)) saved_[name] = value;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kVariables) {
      const auto it = saved_.find(name);
      if (it != saved_.end()) setenv(name, it->second.c_str(), 1);
      else unsetenv(name);
    }
  }
  void set(const std::map<std::string, std::string>& values) {
    for (const auto& [name, value] : values) setenv(name.c_str(), value.c_str(), 1);
  }
  // The InputError message of read_dist_env(), or "" when it did not throw.
  std::string error() {
    try {
      read_dist_env();
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(DistEnvTest, SingleProcessWithoutVariables) {
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.launcher, "single");
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.local_rank, 0);
  EXPECT_EQ(env.local_world_size, 1);
  EXPECT_EQ(env.master_addr, "127.0.0.1");
  EXPECT_EQ(env.master_port, kDefaultMasterPort);
}

TEST_F(DistEnvTest, Torchrun) {
  set({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
       {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "12345"}});
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "node0");
  EXPECT_EQ(env.master_port, 12345);
}

TEST_F(DistEnvTest, TorchrunAgentStore) {
  // torchrun's static rendezvous: its agent serves the store, keys per restart attempt.
  set({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29511"},
       {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RESTART_COUNT", "2"}});
  DistEnv env = read_dist_env();
  EXPECT_TRUE(env.agent_store);
  EXPECT_EQ(env.restart_count, 2);
  set({{"TORCHELASTIC_USE_AGENT_STORE", "False"}});
  env = read_dist_env();
  EXPECT_FALSE(env.agent_store);
}

TEST_F(DistEnvTest, TorchrunWinsOverSlurm) {
  set({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1000"}, {"SLURM_PROCID", "0"}});
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 1);
  // LOCAL_* unset: one machine.
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
}

TEST_F(DistEnvTest, TorchrunErrorsNameTheVariable) {
  set({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1000"}});
  EXPECT_NE(error().find("RANK=2 is not below WORLD_SIZE=2"), std::string::npos) << error();
  set({{"RANK", "x1"}});
  EXPECT_NE(error().find("RANK=\"x1\""), std::string::npos) << error();
  set({{"RANK", "1"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "2"}});
  EXPECT_NE(error().find("LOCAL_RANK=3"), std::string::npos) << error();
  set({{"LOCAL_RANK", "0"}, {"MASTER_PORT", "70000"}});
  EXPECT_NE(error().find("MASTER_PORT"), std::string::npos) << error();
  unsetenv("MASTER_PORT");
  EXPECT_NE(error().find("MASTER_PORT is not set"), std::string::npos) << error();
  unsetenv("WORLD_SIZE");
  EXPECT_NE(error().find("WORLD_SIZE is not set"), std::string::npos) << error();
}

TEST_F(DistEnvTest, Mpirun) {
  set({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29501"}});
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.launcher, "mpirun");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "10.0.0.1");
  EXPECT_EQ(env.master_port, 29501);
}

TEST_F(DistEnvTest, MpirunNeedsMasterAndConsistentValues) {
  set({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
  EXPECT_NE(error().find("MASTER_ADDR is not set"), std::string::npos) << error();
  EXPECT_NE(error().find("mpirun -x MASTER_ADDR"), std::string::npos) << error();
  set({{"MASTER_ADDR", "h"}, {"MASTER_PORT", "1234"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}});
  EXPECT_NE(error().find("OMPI_COMM_WORLD_LOCAL_SIZE=3 is larger than OMPI_COMM_WORLD_SIZE=2"), std::string::npos)
      << error();
  set({{"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "-1"}});
  EXPECT_NE(error().find("OMPI_COMM_WORLD_RANK=\"-1\""), std::string::npos) << error();
  set({{"OMPI_COMM_WORLD_RANK", "1"}});
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_NE(error().find("OMPI_COMM_WORLD_LOCAL_RANK is not set"), std::string::npos) << error();
}

TEST_F(DistEnvTest, SlurmWithTasksPerNodeAndNodeList) {
  set({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "2"},
       {"SLURM_TASKS_PER_NODE", "2(x3),1"}, {"SLURM_JOB_NODELIST", "gpu[03-05,9]"}});
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.launcher, "slurm");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 7);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 2);
  EXPECT_EQ(env.master_addr, "gpu03");
  EXPECT_EQ(env.master_port, kDefaultMasterPort);
}

TEST_F(DistEnvTest, SlurmNtasksPerNodeAndMasterFromEnvironment) {
  set({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}, {"SLURM_NTASKS_PER_NODE", "4"},
       {"SLURM_TASKS_PER_NODE", "3,1"}, {"SLURM_JOB_NODELIST", "a,b"}, {"MASTER_ADDR", "m"},
       {"MASTER_PORT", "4000"}});
  const DistEnv env = read_dist_env();
  EXPECT_EQ(env.local_world_size, 4);  // SLURM_NTASKS_PER_NODE wins
  EXPECT_EQ(env.master_addr, "m");
  EXPECT_EQ(env.master_port, 4000);
}

TEST_F(DistEnvTest, SlurmErrorsNameTheVariable) {
  set({{"SLURM_PROCID", "4"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}, {"SLURM_TASKS_PER_NODE", "2(x2)"},
       {"SLURM_NODEID", "1"}, {"SLURM_JOB_NODELIST", "n1,n2"}});
  EXPECT_NE(error().find("SLURM_PROCID=4 is not below SLURM_NTASKS=4"), std::string::npos) << error();
  set({{"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "2"}});
  EXPECT_NE(error().find("SLURM_LOCALID=2 is not below SLURM_TASKS_PER_NODE=2"), std::string::npos) << error();
  set({{"SLURM_LOCALID", "1"}, {"SLURM_TASKS_PER_NODE", "2(y2)"}});
  EXPECT_NE(error().find("SLURM_TASKS_PER_NODE=\"2(y2)\""), std::string::npos) << error();
  set({{"SLURM_TASKS_PER_NODE", "2(x2)"}, {"SLURM_NODEID", "2"}});
  EXPECT_NE(error().find("SLURM_NODEID=2"), std::string::npos) << error();
  set({{"SLURM_NODEID", "1"}});
  unsetenv("SLURM_JOB_NODELIST");
  EXPECT_NE(error().find("SLURM_JOB_NODELIST"), std::string::npos) << error();
  set({{"SLURM_JOB_NODELIST", "n1,n2"}, {"SLURM_NTASKS", "four"}});
  EXPECT_NE(error().find("SLURM_NTASKS=\"four\""), std::string::npos) << error();
}

TEST(DistEnvSlurm, FirstHostOfNodeList) {
  EXPECT_EQ(slurm_first_host("host1,host2"), "host1");
  EXPECT_EQ(slurm_first_host("single"), "single");
  EXPECT_EQ(slurm_first_host("prefix[1-3,5]"), "prefix1");
  EXPECT_EQ(slurm_first_host("prefix[7]"), "prefix7");
  EXPECT_EQ(slurm_first_host("gpu[01-04]-ib,cpu1"), "gpu01-ib");
  EXPECT_EQ(slurm_first_host("rack[2-3]-node[10-12]"), "rack2-node10");
  EXPECT_THROW(slurm_first_host("prefix[1-3"), InputError);
  EXPECT_THROW(slurm_first_host(""), InputError);
}

TEST(DistEnvSlurm, TasksPerNode) {
  EXPECT_EQ(slurm_tasks_per_node("4"), (std::vector<int>{4}));
  EXPECT_EQ(slurm_tasks_per_node("2(x3)"), (std::vector<int>{2, 2, 2}));
  EXPECT_EQ(slurm_tasks_per_node("2(x3),1,4(x2)"), (std::vector<int>{2, 2, 2, 1, 4, 4}));
  EXPECT_THROW(slurm_tasks_per_node(""), InputError);
  EXPECT_THROW(slurm_tasks_per_node("2(x)"), InputError);
  EXPECT_THROW(slurm_tasks_per_node("0"), InputError);
  EXPECT_THROW(slurm_tasks_per_node("2,,1"), InputError);
}

}  // namespace
}  // namespace kolos::dist
