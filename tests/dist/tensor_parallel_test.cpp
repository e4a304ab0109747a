// Tensor parallelism (1D) and sequence parallelism trained end to end across processes (kolos run over loopback)
// against one process, through `kolos verify` on the parity model (vocabulary 261: not divisible by tp, so the padding
// is exercised), for GPT-2 and for LLaMA with grouped-query attention (8 heads, 4 KV heads, untied head): tp = 2 and
// 4; tp = 2 with Megatron-SP; sp = 2 and 4 with ring and with Ulysses; dp 2 × tp 2 (ZeRO 0/1/2); dp 2 × sp 2; and
// dp 2 × sp 2 (Ulysses) × tp 2 on 8 processes; 2D tensor parallelism (tp_mode "2d") on tp = 4, a 2 × 2 grid; 2.5D
// (tp_mode "2.5d") on tp = 8, two layers of a 2 × 2 grid (a tiny model), and its checkpoints across layouts.
// Verify checks each rank's share (its tp piece; ZeRO shards over dp × sp) and the op counts of every axis (dp/data,
// tp and the 2D grid's rows and columns, sp) against the algorithms; checkpoints hold whole tensors (gathered over
// tp), which verify compares with one process.
//
// Losses meet DESIGN's 1e-5 at every step. The final parameters after 20 AdamW steps are compared at 1e-4 here, not
// DESIGN's 1e-5: the largest differences (1e-5 to 4e-5) are in tensors initialised at zero whose gradient nearly
// cancels (LayerNorm biases, the query third of GPT-2's qkv bias), where Adam's normalisation turns rounding of the
// tensor-parallel sums into full-size steps — and, at tp = 2 and 4, in one attention output projection weight
// (1.2e-5; `kolos verify` lists every tensor beyond its tolerance); 2D GPT-2 up to 1.9e-5, again on LayerNorm and qkv
// biases (LLaMA under 2D meets 1e-5). The 1D and sp layouts trained with plain SGD (the gradients themselves)
// meet 1e-5 (`...WithSgdMeetTheParameterTolerance`), as do LARS and LAMB. The one-process reference itself moves up
// to 4.5e-5 from itself under AdamW when only OpenBLAS's kernels change (bench/parity_floor.sh,
// bench/results/2026-11-29-parity-floor.md): DESIGN's 1e-5 is below fp32's own noise here (an open item of issue 5).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/dist/train_runs.h"
#include "tests/support.h"

namespace kolos {
namespace {

nlohmann::json verify(const std::string& layouts, const std::string& out, std::vector<std::string> extra = {}) {
  extra.insert(extra.end(), {"--tolerance", "1e-4"});
  return test::run_verify(layouts, out, 0, extra);
}

void expect_parity(const nlohmann::json& j, size_t layouts) { test::expect_layouts_ok(j, layouts, 1e-4); }

const std::vector<std::string> kLlama = {"--set", "model.arch=llama", "--set", "model.kv_heads=4", "--set",
                                         "model.tie_embeddings=false"};

TEST(TensorParallelParity, GptTp2Tp4AndDp2Tp2WithZero) {
  test::TempDir dir("parity_tp");
  expect_parity(verify("tp=2;tp=4;dp=2,tp=2;dp=2,tp=2,zero=1;dp=2,tp=2,zero=2,grad_accum=2", dir.path()), 5);
}

// Megatron-SP: the blocks work on slices of the sequence; the norms' and row biases' gradients are summed over tp.
TEST(TensorParallelParity, MegatronSequenceParallel) {
  test::TempDir dir("parity_tp_msp");
  expect_parity(verify("tp=2,megatron_sp=true;dp=2,tp=2,megatron_sp=true,zero=1", dir.path()), 2);
}

// Sequence parallelism on the sp axis: ring (zig-zag) and Ulysses, with dp and with tp; gradients averaged and ZeRO
// sharded over dp × sp (the rank reports' data axis), which verify's op counts follow.
TEST(SequenceParallelParity, RingAndUlyssesWithDpAndTp) {
  test::TempDir dir("parity_sp");
  expect_parity(verify("sp=2;sp=2,sp_mode=ulysses;dp=2,sp=2,zero=1;sp=2,sp_mode=ulysses,tp=2", dir.path()), 4);
}

// LARS and LAMB need whole-tensor norms: the pieces of a tp-split tensor sum their squared norms over tp (and over
// dp at ZeRO-1). These meet DESIGN's 1e-5 for the parameters too.
TEST(TensorParallelParity, LarsAndLambWithWholeTensorNorms) {
  test::TempDir dir("parity_tp_lars");
  // dp 2 × tp 2 with ZeRO-1: a tensor's squared norm sums over its tp pieces and its dp shards (both reducers).
  test::expect_layouts_ok(test::run_verify("dp=2,tp=2,zero=1", dir / "lars", 0,
                                           {"--set", "optim.name=lars", "--set", "optim.lr=1.0", "--set",
                                            "optim.trust_coefficient=0.01", "--set", "optim.weight_decay=1e-3"}),
                          1);
  test::expect_layouts_ok(
      test::run_verify("dp=2,tp=2,zero=1", dir / "lamb", 0, {"--set", "optim.name=lamb", "--set", "optim.lr=1e-2"}),
      1);
}

TEST(SequenceParallelParity, FourRanksRingAndUlysses) {
  test::TempDir dir("parity_sp4");
  expect_parity(verify("sp=4;sp=4,sp_mode=ulysses", dir.path()), 2);
}

// All three axes at once: 8 processes on the mesh dp 2 × sp 2 × tp 2.
TEST(HybridParity, DpSpUlyssesTpOnEightProcesses) {
  test::TempDir dir("parity_hybrid");
  expect_parity(verify("dp=2,sp=2,sp_mode=ulysses,tp=2,zero=1", dir.path()), 1);
}

TEST(TensorParallelParity, LlamaWithGroupedQueryAttention) {
  test::TempDir dir("parity_tp_llama");
  expect_parity(verify("tp=2;tp=4;tp=2,megatron_sp=true;dp=2,tp=2,zero=1", dir.path(), kLlama), 4);
}

TEST(SequenceParallelParity, LlamaRing) {
  test::TempDir dir("parity_sp_llama");
  expect_parity(verify("sp=2;sp=4;dp=2,sp=2", dir.path(), kLlama), 3);
}

TEST(SequenceParallelParity, LlamaUlysses) {
  test::TempDir dir("parity_ulysses_llama");
  expect_parity(verify("sp=2,sp_mode=ulysses;sp=4,sp_mode=ulysses", dir.path(), kLlama), 2);
}

TEST(HybridParity, LlamaDpSpUlyssesTpOnEightProcesses) {
  test::TempDir dir("parity_hybrid_llama");
  expect_parity(verify("dp=2,sp=2,sp_mode=ulysses,tp=2", dir.path(), kLlama), 1);
}

// 2D (SUMMA) tensor parallelism on a 2 × 2 grid, GPT-2 and LLaMA (grouped-query attention, untied head): weights,
// biases, norms and the vocabulary tables in q² pieces, activations in (batch / 2) × (features / 2) blocks. Verify
// checks each rank's pieces and the op counts on the grid's rows, columns and the tp group (the embedding's transpose).
TEST(TensorParallelParity, TwoDimensionalGptAndLlama) {
  test::TempDir dir("parity_tp2d");
  expect_parity(verify("tp=4,tp_mode=2d", dir / "gpt"), 1);
  expect_parity(verify("tp=4,tp_mode=2d", dir / "llama", kLlama), 1);
}

// 2.5D (Tesseract) on tp = 8: two depth layers of a 2 × 2 grid, the batch in 4 blocks, GPT-2 and LLaMA
// (grouped-query attention, untied head). A tiny model (2 blocks, hidden 32, sequence 16, 4 steps) keeps 8 ranks on
// 2 cores quick. Verify checks each rank's pieces (1/q² of every parameter, the same on both layers) and the op
// counts on the layers' rows and columns, the tp group (the embedding's transpose) and the depth (one gradient
// all-reduce per parameter use in backward, the loss's average in forward). LLaMA trains with SGD and meets
// DESIGN's 1e-5: under AdamW this tiny LLaMA's layers.1.self_attn.o_proj.weight ends 1.3e-4 (2D, tp = 4) to
// 2.2e-4 (1D, tp = 2) from one process under every tensor-parallel layout (2.5D: 2.0e-4) while its losses agree to
// 3e-7 — Adam's amplification of rounding, as above; with SGD 2.5D is within 1.2e-7.
const std::vector<std::string> kTiny25d = {"--set", "model.layers=2",  "--set", "model.hidden=32",
                                           "--set", "model.heads=4",   "--set", "model.ffn_hidden=64",
                                           "--set", "model.seq_len=16", "--set", "train.steps=4"};

// GPT-2 under AdamW and LLaMA under SGD on the tiny shapes above, through kolos verify.
void expect_gpt_and_llama_parity(const std::string& layout, const std::string& name) {
  test::TempDir dir(name);
  expect_parity(verify(layout, dir / "gpt", kTiny25d), 1);
  std::vector<std::string> llama = kTiny25d;
  llama.insert(llama.end(), {"--set", "model.arch=llama", "--set", "model.kv_heads=2", "--set",
                             "model.tie_embeddings=false", "--set", "optim.name=sgd", "--set", "optim.lr=0.1"});
  test::expect_layouts_ok(test::run_verify(layout, dir / "llama", 0, llama), 1);
}

TEST(TensorParallelParity, TwoAndAHalfDimensionalGptAndLlama) {
  expect_gpt_and_llama_parity("tp=8,tp_mode=2.5d,tp_depth=2", "parity_tp25d");
}

// 3D on a 2 × 2 × 2 cube (tp 8), the same tiny shapes (hidden 32 and ffn 64 divide by q³ = 8, the batch of 8 by
// q² = 4): GPT-2 under AdamW, LLaMA under SGD, as 2.5D above; shards and 3D's op counts checked by verify.
TEST(TensorParallelParity, ThreeDimensionalGptAndLlama) { expect_gpt_and_llama_parity("tp=8,tp_mode=3d", "parity_tp3d"); }

// Checkpoints store whole tensors (depth 0's pieces unsharded): a 2.5D run stopped after 2 steps resumes on one
// process, and a one-process run resumes under 2.5D (each layer takes the same pieces), both as the uninterrupted
// one-process run (losses within 1e-5 at every step).
TEST(CheckpointAcrossLayouts, TwoAndAHalfDimensionalResumesInOneProcessAndTheOtherWayRound) {
  test::TempDir dir("ckpt_tp25d");
  const std::vector<std::string> tiny = {"model.layers=2", "model.hidden=32",  "model.heads=4",
                                         "model.ffn_hidden=64", "model.seq_len=16", "train.steps=4"};
  auto args = [&](const std::string& out, std::vector<std::string> more) {
    more.insert(more.begin(), tiny.begin(), tiny.end());
    return test::parity_args(out, more);
  };
  const std::vector<std::string> layers = {"parallel.tp=8", "parallel.tp_mode=2.5d", "parallel.tp_depth=2"};
  auto r = test::run_ranks(1, args(dir / "ref", {}));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<double> ref;
  for (const auto& rec : test::step_records(dir / "ref")) ref.push_back(rec["loss"].get<double>());
  ASSERT_EQ(ref.size(), 4u);

  for (const auto& [name, first_ranks] : {std::pair<std::string, int>{"from25d", 8}, {"to25d", 1}}) {
    const std::string out = dir / name;
    std::vector<std::string> first = args(out, first_ranks == 8 ? layers : std::vector<std::string>{});
    first.insert(first.end(), {"--stop-after", "2"});
    r = test::run_ranks(first_ranks, first);
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.output;
    std::vector<std::string> second = args(out, first_ranks == 8 ? std::vector<std::string>{} : layers);
    second.push_back("--resume");
    r = test::run_ranks(first_ranks == 8 ? 1 : 8, second);
    ASSERT_EQ(r.exit_code, 0) << name << ": " << r.output;
    EXPECT_NE(r.output.find("resuming from"), std::string::npos) << name << ": " << r.output;
    test::expect_losses_match(out, ref);
  }
}

// With SGD the update is the gradient itself: the layouts' parameters meet DESIGN's 1e-5 after 20 steps, so the
// larger AdamW differences above are Adam's amplification, not a wrong gradient.
TEST(TensorParallelParity, LayoutsWithSgdMeetTheParameterTolerance) {
  test::TempDir dir("parity_tp_sgd");
  // The layouts with the largest AdamW differences (tp = 4; sp = 2 ring).
  test::expect_layouts_ok(test::run_verify("tp=4;sp=2", dir.path(), 0,
                                           {"--set", "optim.name=sgd", "--set", "optim.lr=0.1"}),
                          2);
}

}  // namespace
}  // namespace kolos
