// Pipeline schedules as instruction lists (DESIGN "Pipeline"): a schedule says, for every pipeline stage, the exact
// sequence of computations and point-to-point messages it runs in one training step; one executor runs any list.
//
// Names: p = `stages` (parallel.pp), m = `micro_batches` (train.grad_accum), v = `chunks` (parallel.pp_virtual).
// The model is cut into V = v·p consecutive *virtual stages* u = 0 .. V−1; chunk c of stage s holds virtual stage
// u = c·p + s (Megatron's interleaved placement; with v = 1 the chunk is always 0 and u = s). Virtual stage 0 reads
// the micro-batch from the data, virtual stage V−1 computes the loss.
//
// Instructions of stage s (`micro` ∈ [0, m), `chunk` ∈ [0, v), `peer` a stage ∈ [0, p)):
//   Forward(micro, chunk)         forward of virtual stage c·p + s on the micro-batch; keeps its activations
//   Backward(micro, chunk)        backward of the same; frees those activations
//   SendActivation(micro, chunk)  this chunk's forward output → peer, the stage of virtual stage u + 1
//   RecvActivation(micro, chunk)  this chunk's forward input  ← peer, the stage of virtual stage u − 1
//   SendGrad(micro, chunk)        the gradient of this chunk's forward input  → peer (virtual stage u − 1)
//   RecvGrad(micro, chunk)        the gradient of this chunk's forward output ← peer (virtual stage u + 1)
//   Reduce                        last instruction of every stage: all backwards are done, gradients may be
//                                 reduced (data parallel, tied embeddings) and the optimizer may step
// Compute instructions and Reduce have peer = −1; Reduce has micro = chunk = −1. Every message crosses one
// *boundary* b between virtual stages b and b + 1 (see boundary()); a message is identified by (kind, micro, b),
// kind being activation or gradient. At the wrap boundary (stage p−1 chunk c → stage 0 chunk c+1) sender and
// receiver name different chunks, so match messages by that key, not by chunk.
//
// Execution model the lists are built for (and validate() checks): sends are asynchronous (they never block the
// stage; the executor keeps each sent tensor alive until its send has completed, and has waited for all of them by
// Reduce at the latest), receives block until the message is there. Each receive is placed right before the compute that needs
// it and each send right after the compute that produced it. Between two stages, the messages of one kind are
// received in the order they are sent, so a channel per (sender, receiver, kind) — a tag per kind — is enough;
// a tag per (kind, micro, boundary) is also correct.
//
// The generators are pure functions: every rank computes the same lists from the same (p, m, v).
#pragma once

#include <string>
#include <vector>

namespace kolos::parallel::pipeline {

enum class Op { kForward, kBackward, kSendActivation, kRecvActivation, kSendGrad, kRecvGrad, kReduce };

// "forward", "backward", "send_activation", "recv_activation", "send_grad", "recv_grad", "reduce".
const char* op_name(Op op);
bool is_compute(Op op);  // forward or backward
bool is_send(Op op);     // send_activation or send_grad
bool is_recv(Op op);     // recv_activation or recv_grad

struct Instruction {
  Op op = Op::kForward;
  int micro = -1;
  int chunk = -1;
  int peer = -1;

  bool operator==(const Instruction& other) const {
    return op == other.op && micro == other.micro && chunk == other.chunk && peer == other.peer;
  }
};

// Short form for logs and errors: "F3.0", "B3.1", "send_act3.0->2", "recv_grad3.0<-2", "reduce".
std::string to_string(const Instruction& instruction);

struct Schedule {
  std::string name;  // "gpipe", "1f1b" or "interleaved"
  int stages = 1;
  int micro_batches = 1;
  int chunks = 1;
  std::vector<std::vector<Instruction>> instructions;  // [stage]: the list that stage runs, in order

  int virtual_stages() const { return stages * chunks; }
  int virtual_stage(int stage, int chunk) const { return chunk * stages + stage; }
  int stage_of(int virtual_stage) const { return virtual_stage % stages; }
  int chunk_of(int virtual_stage) const { return virtual_stage / stages; }
};

// The generators. Bad arguments throw kolos::InputError naming the config key (parallel.pp, train.grad_accum,
// parallel.pp_virtual) with the value found and the rule.
//
// GPipe (fill-drain): every stage runs the m forwards, then the m backwards (micro-batches in order). Holds the
// activations of all m micro-batches.
Schedule gpipe(int stages, int micro_batches);

// 1F1B (PipeDream-Flush, Megatron's non-interleaved schedule): stage s runs w = min(p − s − 1, m) warm-up
// forwards, then alternates one forward and one backward until the forwards are done, then the w remaining
// backwards. Holds at most min(p − s, m) micro-batches of activations on stage s. Same bubble as GPipe.
Schedule one_f_one_b(int stages, int micro_batches);

// Interleaved 1F1B (Megatron, Narayanan et al. 2021 §2.2) with v chunks per stage. The k-th forward of a stage
// (k ∈ [0, v·m)) is micro-batch (k div p·v)·p + k mod p of chunk (k mod p·v) div p: rounds of p micro-batches,
// chunk after chunk; the k-th backward is the same micro-batch of chunk v − 1 − that chunk. Stage s runs
// w = min(2·(p − s − 1) + (v − 1)·p, v·m) warm-up forwards (Megatron's count; unlike Megatron, not all v·m when
// m = p, see the .cpp), then one forward and one backward in turn, then the remaining backwards. Holds at most
// min(w + 1, v·m) (micro-batch, chunk) activation sets on stage s. For v > 1 requires p ≥ 2 and m a multiple of
// p (as Megatron does); v = 1 is one_f_one_b. The bubble shrinks by v: (p − 1)/(v·m + p − 1) of the time with
// equal costs.
Schedule interleaved(int stages, int micro_batches, int chunks);

// By name, as parallel.pp_schedule spells it: "gpipe", "1f1b", "interleaved". chunks > 1 needs "interleaved".
Schedule make_schedule(const std::string& name, int stages, int micro_batches, int chunks = 1);

// The boundary a send or receive of `stage` crosses: b such that the message goes between virtual stages b and
// b + 1 (activations upward, gradients downward). Sender and receiver of one message compute the same b.
int boundary(const Schedule& schedule, int stage, const Instruction& instruction);

// Checks that the schedule is well-formed and returns one line per problem (empty: it is):
//   - one list per stage; fields in range; exactly one Forward and one Backward per (micro, chunk) on every
//     stage, the forward first; one Reduce per stage, after its last backward;
//   - each compute has its receive before it and its send after it (none at the first / last virtual stage),
//     each with the right peer;
//   - replayed with asynchronous sends and blocking receives, every stage runs to its end (no deadlock), every
//     message sent is received exactly once, and per (sender, receiver, kind) in the order sent.
std::vector<std::string> validate(const Schedule& schedule);

// The largest number of (micro-batch, chunk) activation sets `stage` holds at once: forwards done whose backward
// is not. For v = 1, micro-batches in flight.
int max_in_flight(const Schedule& schedule, int stage);

}  // namespace kolos::parallel::pipeline
