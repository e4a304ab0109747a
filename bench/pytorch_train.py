#!/usr/bin/python3
"""PyTorch eager reference for `kolos bench train`: GPT-2 training steps on random tokens, fp32, CPU.

Run with Debian's python3-torch (1.13):

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/pytorch_train.py --steps 10 --warmup 2

The model is written out plainly (no torch.nn.Transformer, no fused attention: 1.13 has no
F.scaled_dot_product_attention): token + learned position embeddings, pre-LayerNorm blocks with causal
self-attention and a GELU MLP of 4h, a final LayerNorm and an output head tied to the token embedding.
Prints one line per timed step, then ONE JSON object as the last line.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

# libgomp reads OMP_WAIT_POLICY when it is loaded (at `import torch`), so set it before: OpenMP threads that spin
# while OpenBLAS's threads work slow both down several-fold on few cores. kolos does the same.
_WAIT_POLICY_WAS_SET = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        B, T, C = x.shape
        H = self.heads
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, C/H)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v  # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.fc_proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, layers, hidden, heads, vocab, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(seq, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied head: (B, T, V)
        return F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gemm-gflops", type=float, default=None,
                    help="fp32 GEMM rate from `kolos bench gemm`, to report MFU as kolos does")
    args = ap.parse_args()
    if args.hidden % args.heads:
        sys.exit(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if args.steps < 1:
        sys.exit("--steps must be at least 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
          f"{'' if _WAIT_POLICY_WAS_SET else ' (set by this script: was unset)'}", flush=True)

    model = GPT2(args.layers, args.hidden, args.heads, args.vocab, args.seq)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, T = args.batch, args.seq
    print(f"GPT-2 layers {args.layers}, hidden {args.hidden}, heads {args.heads}, vocab {args.vocab}, "
          f"seq {T}, batch {B}: {params / 1e6:.2f} M parameters", flush=True)

    fwd_bwd_ms, optim_ms, step_ms = [], [], []
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, args.vocab, (B, T + 1))
        t0 = time.perf_counter()
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        t1 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        timed = step >= args.warmup
        if timed:
            fwd_bwd_ms.append((t1 - t0) * 1e3)
            optim_ms.append((t2 - t1) * 1e3)
            step_ms.append((t2 - t0) * 1e3)
        print(f"step {step + 1:3d}{'' if timed else ' (warm-up)'}: loss {loss.item():.4f}, "
              f"{(t2 - t0) * 1e3:.0f} ms (forward+backward {(t1 - t0) * 1e3:.0f}, optimizer {(t2 - t1) * 1e3:.0f})",
              flush=True)

    step_median = statistics.median(step_ms)
    tokens_per_s = B * T / (step_median / 1e3)
    # MFU as kolos defines it (DESIGN): N' = weights in matrix products incl. the tied head, no embedding look-ups.
    matmul_weights = args.layers * 12 * args.hidden * args.hidden + args.vocab * args.hidden
    flops_per_token = 6 * matmul_weights + 12 * args.layers * args.hidden * T
    mfu = tokens_per_s * flops_per_token / (args.gemm_gflops * 1e9) if args.gemm_gflops else None
    print(json.dumps({
        "impl": "pytorch",
        "tokens_per_s": round(tokens_per_s, 2),
        "step_ms_median": round(step_median, 1),
        "fwd_bwd_ms": round(statistics.median(fwd_bwd_ms), 1),
        "optim_ms": round(statistics.median(optim_ms), 1),
        "mfu": None if mfu is None else round(mfu, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": params,
        "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "layers": args.layers, "hidden": args.hidden, "heads": args.heads, "vocab": args.vocab,
        "seq": T, "batch": B, "steps": args.steps, "warmup": args.warmup,
    }))


if __name__ == "__main__":
    main()
