#!/usr/bin/env bash
# Activation checkpointing (issue 7): peak resident memory of GPT-2-small shapes (12 layers, hidden 768, vocab
# 50257) at sequence 1024, batch 4, fp32, synthetic tokens, with train.activation_checkpointing = "none" and
# "full", one process each, in the same invocation. Prints both runs' summaries and, last, one JSON line with both
# peak_rss_mb and ratio = full / none (goal: <= 0.6, a cut of at least 40%).
#
#   bench/act_ckpt.sh [extra --set k=v ...]        (build/kolos must exist; KOLOS=path overrides it)
#
# MODES (default "none full") may add e.g. every:2. STEPS (default 2) timed steps after one warm-up step. Peak RSS
# is a high-water mark of the whole process (parameters, gradients, AdamW moments, activations, the logits), so the
# runs are sequential, never side by side; step times come out too but the machine is shared, take them as rough.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
MODES=${MODES:-none full}
SETS=(--set model.seq_len=1024 --set train.batch_size=4 --set data.synthetic=true)
for extra in "$@"; do SETS+=("$extra"); done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
for mode in $MODES; do
  echo "== train.activation_checkpointing = $mode" >&2
  "$KOLOS" bench train --config gpt2-small "${SETS[@]}" --set "train.activation_checkpointing=$mode" \
    --steps "${STEPS:-2}" --warmup 1 | tee "$tmp/run.log" >&2
  rows+=("$mode" "$(tail -1 "$tmp/run.log")")
done
SETTINGS="${SETS[*]}" /usr/bin/python3 - "${rows[@]}" <<'PY'
import json, os, sys
args = sys.argv[1:]
runs = {args[i]: json.loads(args[i + 1]) for i in range(0, len(args), 2)}
out = {"bench": "act_ckpt", "config": "gpt2-small", "settings": os.environ["SETTINGS"].replace("--set ", "").split()}
for mode, r in runs.items():
    out[f"peak_rss_mb_{mode}"] = round(r["peak_rss_mb"], 1)
    out[f"step_ms_{mode}"] = round(r["step_ms_median"], 1)
if "none" in runs:
    base = runs["none"]["peak_rss_mb"]
    for mode, r in runs.items():
        if mode != "none":
            out[f"rss_ratio_{mode}"] = round(r["peak_rss_mb"] / base, 4)
            out[f"rss_cut_{mode}"] = round(1 - r["peak_rss_mb"] / base, 4)
            out[f"step_time_ratio_{mode}"] = round(r["step_ms_median"] / runs["none"]["step_ms_median"], 3)
print(json.dumps(out))
PY
