// Rendezvous: the c10d TCPStore every rank of a run meets at (rank 0 serves it at MASTER_ADDR:MASTER_PORT).
#pragma once

#include <chrono>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "kolos/dist/env.h"

namespace kolos::dist {

// Rank 0 listens on env.master_port (unless torchrun's agent already does: env.agent_store); every rank (rank 0
// included) connects to env.master_addr. Returns once this
// rank is connected (not waiting for the others: the first collective does). A master that cannot be reached within
// `timeout`, or a port rank 0 cannot bind, throws PeerError naming the rank and the address.
c10::intrusive_ptr<c10d::Store> connect_store(const DistEnv& env, std::chrono::milliseconds timeout);

}  // namespace kolos::dist
