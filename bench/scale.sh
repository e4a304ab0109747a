#!/usr/bin/env bash
# Scale under a memory budget (issue 4): the largest GPT that one process trains within BUDGET (default 2 GiB) of
# peak RSS without offload, against a ≥ 1.5B-parameter GPT trained under memory.budget = BUDGET on the NVMe tier with
# static placement and with auto placement.
#
#   bench/scale.sh [plain|io|large|auto|all]     (default all; build/kolos must exist)
#
# Environment: KOLOS (build/kolos), NVME_DIR (the tier's directory, default /work/kolos-scale-nvme: on the disk
# under test, not a tmpfs), BUDGET (2GiB), VOCAB (261: byte tokens), LARGE_LAYERS × LARGE_HIDDEN with LARGE_HEADS
# (65 × 1600, 25: 2.00B parameters at VOCAB 261, 20× the plain figure's 99.6M; 48 × 1600 is GPT-2 XL's 1.56B at
# VOCAB 50257), STEPS (3), DTYPE (fp32; bf16: autocast compute on fp32 master weights, gradients and Adam state,
# which are what the tier holds and moves either way), OVERLAP (false: memory.overlap_step),
# PLAIN_START (1: the first plain depth tried), LOG_DIR (where the runs' outputs are kept; default: a temporary
# directory, removed).
#
# Protocol. Every run is `kolos bench train` (no run directory, no checkpoint) on synthetic tokens: GPT-2 (learned
# positions, tied head), vocabulary VOCAB, sequence 256, batch 1, DTYPE, AdamW, STEPS steps with no warm-up, one
# process, 2 threads; peak RSS is the process's (getrusage), so it includes start-up and the model's
# initialisation.
# 1. plain  hidden 768, 12 heads, no ZeRO, no offload; depth 1, 2, 3, ... until the peak RSS passes BUDGET: the
#           deepest within it is the plain figure (its parameter count; RSS grows ~16 bytes a parameter).
# 2. io     `kolos bench io --path NVME_DIR --size 4GiB`: sequential O_DIRECT write, then read, through the tier's
#           IO layer.
# 3. large  LARGE_LAYERS × LARGE_HIDDEN, parallel.zero = 3 (one process: whole chunks), memory.placement = "static",
#           offload_param_frac = 1, offload_grads = true, offload_optim_frac = 1 on nvme under NVME_DIR,
#           activation checkpointing "full", memory.budget = BUDGET. Reports peak RSS against the budget, each
#           step's time, the tier's bytes and its bandwidth (bytes ÷ wall time of the STEPS steps) against bench io.
# 4. auto   the same model and budget with memory.placement = "auto" (every shard's home on nvme, a shard cache sized
#           after the first step from the budget and that step's peak RSS): peak RSS, tier bytes against large's.
# The last line is one JSON object with every figure.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
NVME_DIR=${NVME_DIR:-/work/kolos-scale-nvme}
BUDGET=${BUDGET:-2GiB}
VOCAB=${VOCAB:-261}
LARGE_LAYERS=${LARGE_LAYERS:-65}
LARGE_HIDDEN=${LARGE_HIDDEN:-1600}
LARGE_HEADS=${LARGE_HEADS:-25}
STEPS=${STEPS:-3}
DTYPE=${DTYPE:-fp32}
OVERLAP=${OVERLAP:-false}
PLAIN_START=${PLAIN_START:-1}
what=${1:-all}
if [[ -n ${LOG_DIR:-} ]]; then
  tmp=$LOG_DIR
  mkdir -p "$tmp"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
fi
mkdir -p "$NVME_DIR"
budget_mb=$(/usr/bin/python3 -c '
import re, sys
m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)\s*", sys.argv[1])
unit = {"": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
print(float(m.group(1)) * unit[m.group(2)] / 2**20)' "$BUDGET")

COMMON=(--config gpt2-small --steps "$STEPS" --warmup 0 --set model.vocab="$VOCAB" --set model.seq_len=256
        --set model.dropout=0 --set data.synthetic=true --set train.batch_size=1 --set train.grad_accum=1
        --set train.global_batch=0 --set train.threads=2 --set train.dtype="$DTYPE" --set optim.name=adamw
        --set memory.overlap_step="$OVERLAP")

# bench LOG ARGS... → the bench's JSON line (its output kept in LOG).
bench() {
  local log=$1
  shift
  "$KOLOS" bench train "${COMMON[@]}" "$@" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
  tail -1 "$log"
}
field() { /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"; }

plain_json='{}'
if [[ $what == all || $what == plain ]]; then
  layers=$PLAIN_START
  while :; do
    j=$(bench "$tmp/plain_$layers.log" --set model.layers="$layers" --set model.hidden=768 --set model.heads=12)
    rss=$(field "$j" peak_rss_mb)
    params=$(field "$j" params)
    echo "plain: $layers layers, $params parameters: peak RSS $rss MiB" >&2
    if /usr/bin/python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$rss" "$budget_mb"; then
      plain_json=$(/usr/bin/python3 -c 'import json,sys; print(json.dumps({"layers": int(sys.argv[1]), "params": int(sys.argv[2]), "peak_rss_mb": float(sys.argv[3])}))' "$layers" "$params" "$rss")
      layers=$((layers + 1))
    else
      plain_json=$(/usr/bin/python3 -c 'import json,sys; d = json.loads(sys.argv[1]); d["next"] = {"layers": int(sys.argv[2]), "params": int(sys.argv[3]), "peak_rss_mb": float(sys.argv[4])}; print(json.dumps(d))' "$plain_json" "$layers" "$params" "$rss")
      break
    fi
  done
fi

io_json='{}'
if [[ $what == all || $what == io ]]; then
  "$KOLOS" bench io --path "$NVME_DIR" --size 4GiB >"$tmp/io.log" 2>&1 || { cat "$tmp/io.log" >&2; exit 1; }
  io_json=$(tail -1 "$tmp/io.log")
  echo "bench io: $io_json" >&2
fi

large_json='{}'
if [[ $what == all || $what == large ]]; then
  large_json=$(bench "$tmp/large.log" --set model.layers="$LARGE_LAYERS" --set model.hidden="$LARGE_HIDDEN" \
    --set model.heads="$LARGE_HEADS" --set parallel.zero=3 --set train.activation_checkpointing=full \
    --set memory.placement=static --set memory.budget="$BUDGET" --set memory.offload_tier=nvme \
    --set memory.nvme_path="$NVME_DIR" --set memory.offload_param_frac=1 --set memory.offload_grads=true \
    --set memory.offload_optim_frac=1)
  grep -E "step|tier" "$tmp/large.log" >&2 || true
fi

auto_json='{}'
if [[ $what == all || $what == auto ]]; then
  auto_json=$(bench "$tmp/auto.log" --set model.layers="$LARGE_LAYERS" --set model.hidden="$LARGE_HIDDEN" \
    --set model.heads="$LARGE_HEADS" --set parallel.zero=3 --set train.activation_checkpointing=full \
    --set memory.placement=auto --set memory.budget="$BUDGET" --set memory.offload_tier=nvme \
    --set memory.nvme_path="$NVME_DIR")
  grep -E "step|tier" "$tmp/auto.log" >&2 || true
fi

/usr/bin/python3 - "$plain_json" "$io_json" "$large_json" "$BUDGET" "$auto_json" <<'EOF'
import json, sys
plain, io, large, budget = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
auto = json.loads(sys.argv[5])
keys = ("params", "peak_rss_mb", "memory_budget_mb", "within_budget", "step_ms", "io_bytes", "chunk_moves", "io_gbps",
        "mem_bytes", "tokens_per_s", "mfu", "threads")
out = {"budget": budget, "plain": plain, "io": io, "large": {k: large.get(k) for k in keys} if large else {},
       "auto": {k: auto.get(k) for k in keys} if auto else {}}
def gbps(d, *keys):
    for k in keys:
        if k in d: return float(d[k])
    return None
read = gbps(io, "read_gbps", "read_gb_per_s")
write = gbps(io, "write_gbps", "write_gb_per_s")
rows = [("budget", budget)]
if plain:
    rows.append(("plain: largest within budget", f"{plain.get('params', 0)/1e6:.1f}M params ({plain.get('layers')} x 768), peak RSS {plain.get('peak_rss_mb', 0):.0f} MiB"))
    if "next" in plain:
        n = plain["next"]
        rows.append(("plain: next size", f"{n['params']/1e6:.1f}M params, peak RSS {n['peak_rss_mb']:.0f} MiB (over)"))
def run_rows(label, d):
    rows.append((f"{label}: params", f"{d['params']/1e9:.3f}B"))
    rows.append((f"{label}: peak RSS", f"{d['peak_rss_mb']:.0f} MiB (within budget: {d.get('within_budget')})"))
    rows.append((f"{label}: step times", ", ".join(f"{ms/1e3:.1f} s" for ms in d.get("step_ms", []))))
    rows.append((f"{label}: tier bytes", f"{d.get('io_bytes', 0)/1e9:.1f} GB, {d.get('io_gbps', 0):.3f} GB/s over the steps"))
if large:
    run_rows("offloaded", large)
    if plain and plain.get("params"):
        out["ratio"] = large["params"] / plain["params"]
        rows.append(("params ratio", f"{out['ratio']:.1f}x (goal >= 20x)"))
    if read and write and large.get("io_gbps"):
        out["tier_vs_io_read"] = large["io_gbps"] / read
        out["tier_vs_io_write"] = large["io_gbps"] / write
        out["tier_vs_io_slower"] = large["io_gbps"] / min(read, write)
        # The step's own mix: of its 40 bytes a parameter, 24 are read (the gathers' 8, AdamW's p, g, m, v) and 16
        # written (the gradient, AdamW's p, m, v); at bench io's rates one after the other that mix moves at:
        mixed = 1 / (0.6 / read + 0.4 / write)
        out["tier_vs_io_mixed"] = large["io_gbps"] / mixed
        rows.append(("tier bandwidth / bench io", f"{out['tier_vs_io_read']:.2f} of read ({read:.2f} GB/s), {out['tier_vs_io_write']:.2f} of write ({write:.2f} GB/s), {out['tier_vs_io_mixed']:.2f} of the step's 60/40 read/write mix ({mixed:.2f} GB/s) (goal >= 0.70)"))
if auto:
    run_rows("auto", auto)
    if large and large.get("io_bytes"):
        out["auto_vs_static_bytes"] = auto.get("io_bytes", 0) / large["io_bytes"]
        rows.append(("auto / static tier bytes", f"{out['auto_vs_static_bytes']:.4f} (goal <= 1)"))
w = max(len(r[0]) for r in rows)
for k, v in rows:
    print(f"{k:<{w}}  {v}")
print(json.dumps(out))
EOF
