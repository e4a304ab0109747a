#!/usr/bin/env bash
# Memory of sequence parallelism (issue 5): peak resident memory per rank of a GPT with 4 layers, hidden 256,
# 4 heads, a byte vocabulary (261), batch 1, trained one step on synthetic tokens.
#
#   bench/sp_memory.sh            (build/kolos must exist; about 10 minutes on 2 cores)
#
# 1. At sequence 4096: one process against sp = 4 with ring attention and with Ulysses (goal: ≤ 0.4× per rank).
#    The sp ranks are the ZeRO group too (gradients are averaged over dp × sp), so the sp runs use ZeRO-2: each rank
#    keeps a quarter of the gradients and optimizer moments, as a long-sequence user would run it.
# 2. The longest sequence that trains within 4 GiB per rank for sp = 1, 2, 4 (goal: grows ≥ 0.8·sp-fold). Peak RSS
#    is linear in the sequence (attention is blockwise: no T×T matrix is ever held), so each sp is measured at three
#    lengths and the line through them is solved for 4 GiB; the fit's largest residual is printed with it.
#
# `peak_rss_mb` is the largest over the ranks (metrics.jsonl). A bare kolos process (`kolos --help`: LibTorch and
# the ~290 libraries Debian links it with, initialised) is already resident; `floor_mb` is that figure and the
# `above_floor` ratios leave it out.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SETS=()
for kv in model.arch=gpt2 model.layers=4 model.hidden=256 model.heads=4 model.kv_heads=4 model.ffn_hidden=1024 \
          model.vocab=261 model.dropout=0 data.synthetic=true train.batch_size=1 train.global_batch=0 \
          train.grad_accum=1 train.steps=1 train.eval_every=0 train.eval_batches=1 train.save_every=0 \
          train.sample_tokens=0 train.log_every=1 train.threads=1; do
  SETS+=(--set "$kv")
done
floor=$( { /usr/bin/time -f '%M' "$KOLOS" --help >/dev/null; } 2>&1 | tail -1)

# rss SP MODE T → peak RSS in MiB (max over ranks) of one training step.
rss() {
  local sp=$1 mode=$2 T=$3 dir="$tmp/run"
  rm -rf "$dir"
  local cmd=("$KOLOS" train --config tiny "${SETS[@]}" --set model.seq_len="$T" --out "$dir")
  if [[ $sp -gt 1 ]]; then
    "$KOLOS" run -n "$sp" -- "${cmd[@]}" --set parallel.sp="$sp" --set parallel.sp_mode="$mode" \
      --set parallel.zero=2 >"$tmp/log" 2>&1
  else
    "${cmd[@]}" >"$tmp/log" 2>&1
  fi
  /usr/bin/python3 -c 'import json,sys; print(max(json.loads(l).get("peak_rss_mb", 0) for l in open(sys.argv[1])))' \
    "$dir/metrics.jsonl"
}

rows=()
for run in "1 ring 4096" "4 ring 4096" "4 ulysses 4096"; do
  set -- $run
  mb=$(rss "$1" "$2" "$3")
  echo "sp=$1 $2 seq=$3: peak RSS $mb MiB" >&2
  rows+=("$1 $2 $3 $mb")
done
for sp in 1 2 4; do
  for per_rank in 1024 2048 4096; do
    T=$((per_rank * sp))
    mb=$(rss "$sp" ring "$T")
    echo "sp=$sp ring seq=$T: peak RSS $mb MiB" >&2
    rows+=("$sp fit $T $mb")
  done
done
printf '%s\n' "${rows[@]}"
/usr/bin/python3 - "$floor" "${rows[@]}" <<'PY'
import json, sys
floor = int(sys.argv[1]) / 1024
rows = [r.split() for r in sys.argv[2:]]
at4k = {(int(sp), mode): float(mb) for sp, mode, T, mb in rows if mode != "fit"}
one = at4k[(1, "ring")]
out = {"bench": "sp_memory", "model": "gpt2 4x256, 4 heads, vocab 261, batch 1", "floor_mb": round(floor, 1),
       "seq4096_one_process_mb": one}
for mode in ("ring", "ulysses"):
    mb = at4k[(4, mode)]
    out[f"seq4096_sp4_{mode}_mb"] = mb
    out[f"seq4096_sp4_{mode}_ratio"] = round(mb / one, 3)
    out[f"seq4096_sp4_{mode}_ratio_above_floor"] = round((mb - floor) / (one - floor), 3)
longest = {}
for sp in (1, 2, 4):
    pts = [(int(T), float(mb)) for s, mode, T, mb in rows if mode == "fit" and int(s) == sp]
    n = len(pts)
    mx = sum(t for t, _ in pts) / n
    my = sum(m for _, m in pts) / n
    slope = sum((t - mx) * (m - my) for t, m in pts) / sum((t - mx) ** 2 for t, _ in pts)
    icpt = my - slope * mx
    resid = max(abs(m - (icpt + slope * t)) for t, m in pts)
    longest[sp] = int((4096 - icpt) / slope)
    out[f"sp{sp}_mb_per_1k_tokens"] = round(slope * 1024, 2)
    out[f"sp{sp}_fit_max_residual_mb"] = round(resid, 1)
    out[f"sp{sp}_longest_seq_4gib"] = longest[sp]
for sp in (2, 4):
    out[f"sp{sp}_growth"] = round(longest[sp] / longest[1], 2)
    out[f"sp{sp}_growth_goal"] = 0.8 * sp
print(json.dumps(out))
PY
