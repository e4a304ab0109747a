#!/usr/bin/env bash
# Mixed precision (issue 7): bf16 against fp32 and against PyTorch's bf16 autocast, in the same invocation.
#
#   bench/bf16.sh [speed|tiny|all]        (default all; build/kolos must exist, KOLOS=... to use another build)
#
# speed  GPT-2-small shapes (12 layers, hidden 768, 12 heads, vocab 50257; sequence SEQ=256, batch BATCH=2,
#        synthetic tokens, AdamW): `kolos bench train` with train.dtype = fp32 and bf16, and the PyTorch eager
#        reference (bench/pytorch_train.py's model) in fp32 and under torch.autocast("cpu", torch.bfloat16), with
#        PyTorch's threads set to the core count. The four run REPEATS (default 3) times, alternating; medians of
#        the per-run median step times are compared. Goal: kolos bf16 tokens/s >= PyTorch bf16's.
# tiny   the tiny recipe (configs/tiny.toml) for STEPS=300 steps in fp32 and in bf16, each with its final
#        validation loss over the whole validation split. Goal: bf16 within 2% of fp32.
# Each section prints its runs and, last, one JSON line with the comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
WHAT=${1:-all}
REPEATS=${REPEATS:-3}
SEQ=${SEQ:-256}
BATCH=${BATCH:-2}
STEPS=${STEPS:-300}
THREADS=$(nproc)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pytorch_run() {  # $1 = fp32 | bf16
  /usr/bin/python3 - "$1" "$SEQ" "$BATCH" "$THREADS" <<'PY'
import json, statistics, sys, time
sys.path.insert(0, "bench")
import torch
from pytorch_train import GPT2
dtype, T, B, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(1234)
vocab = 50257
model = GPT2(12, 768, 12, vocab, T)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
steps, warmup, ms = 5, 2, []
for step in range(warmup + steps):
    tokens = torch.randint(0, vocab, (B, T + 1))
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = (time.perf_counter() - t0) * 1e3
    print(f"pytorch {dtype} step {step}: {dt:.0f} ms, loss {loss.item():.4f}{' (warm-up)' if step < warmup else ''}",
          file=sys.stderr, flush=True)
    if step >= warmup:
        ms.append(dt)
med = statistics.median(ms)
print(json.dumps({"impl": "pytorch", "dtype": dtype, "tokens_per_s": B * T / (med / 1e3), "step_ms_median": med,
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "loss": loss.item()}))
PY
}

kolos_run() {  # $1 = fp32 | bf16
  "$KOLOS" bench train --set train.dtype="$1" --set model.seq_len="$SEQ" --set train.batch_size="$BATCH" \
    --steps 5 --warmup 2 | tail -1
}

if [[ $WHAT == speed || $WHAT == all ]]; then
  echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$KOLOS" bench gemm | tail -1
  : > "$tmp/speed"
  for ((i = 0; i < REPEATS; ++i)); do
    for impl in kolos pytorch; do
      for dtype in fp32 bf16; do
        line=$(${impl}_run "$dtype")
        echo "$line"
        echo "$line" >> "$tmp/speed"
      done
    done
  done
  /usr/bin/python3 - "$tmp/speed" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(impl, dtype):
    return statistics.median(r["tokens_per_s"] for r in rows if r["impl"] == impl and r.get("dtype") == dtype)
k32, k16, p32, p16 = med("kolos", "fp32"), med("kolos", "bf16"), med("pytorch", "fp32"), med("pytorch", "bf16")
print(json.dumps({"bench": "bf16_speed", "kolos_fp32_tokens_per_s": k32, "kolos_bf16_tokens_per_s": k16,
                  "pytorch_fp32_tokens_per_s": p32, "pytorch_bf16_tokens_per_s": p16,
                  "kolos_bf16_vs_pytorch_bf16": k16 / p16, "kolos_bf16_vs_fp32": k16 / k32,
                  "pytorch_bf16_vs_fp32": p16 / p32, "repeats": len(rows) // 4}))
PY
fi

if [[ $WHAT == tiny || $WHAT == all ]]; then
  for dtype in fp32 bf16; do
    "$KOLOS" train --config tiny --out "$tmp/tiny-$dtype" --set train.dtype=$dtype --set train.steps="$STEPS" \
      --set train.eval_every=0 --set train.save_every=0 --set train.sample_tokens=0 | tail -1 | tee "$tmp/tiny-$dtype.json"
  done
  /usr/bin/python3 - "$tmp/tiny-fp32.json" "$tmp/tiny-bf16.json" "$STEPS" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print(json.dumps({"bench": "bf16_tiny", "steps": int(sys.argv[3]), "fp32_val_loss": a["val_loss"],
                  "bf16_val_loss": b["val_loss"], "relative_difference": (b["val_loss"] - a["val_loss"]) / a["val_loss"],
                  "fp32_tokens_per_s": a["tokens_per_s"], "bf16_tokens_per_s": b["tokens_per_s"],
                  "fp32_val_bpb": a["val_bpb"], "bf16_val_bpb": b["val_bpb"]}))
PY
fi
