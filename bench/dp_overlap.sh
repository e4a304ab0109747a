#!/usr/bin/env bash
# Data-parallel efficiency where communication is comparable to compute (issue 3): per-rank tokens/s of dp = 2 at
# one thread per rank against one process at one thread, same model, batch 1 per rank, sequence 64, in the same
# invocation. Prints both runs' summaries and, last, one JSON line with the ratio (goal: >= 0.85).
#
#   bench/dp_overlap.sh [RECIPE] [extra --set k=v ...]     (default RECIPE: tiny; build/kolos must exist)
#
# A third configuration is the ceiling the machine allows: two independent one-process runs at the same time (no
# communication at all). On these VMs two single-thread processes do not run at twice the speed of one (the two
# vCPUs share a physical core's resources), so `ratio_to_ceiling` isolates what communication costs.
# Each configuration runs REPEATS (default 3) times, alternating, and the medians of the per-run step-time
# medians are compared (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
RECIPE=${1:-tiny}
shift || true
REPEATS=${REPEATS:-3}
SETS=(--set model.seq_len=64 --set train.batch_size=1 --set train.global_batch=0 --set train.threads=1
      --set parallel.bucket_mb=${BUCKET_MB:-25})
for extra in "$@"; do SETS+=("$extra"); done
STEPS=(--steps ${STEPS:-20} --warmup 3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
one=() two=() pair=()
for ((i = 0; i < REPEATS; ++i)); do
  one+=("$("$KOLOS" bench train --config "$RECIPE" "${SETS[@]}" "${STEPS[@]}" | tail -1)")
  two+=("$("$KOLOS" run -n 2 -- "$KOLOS" bench train --config "$RECIPE" "${SETS[@]}" "${STEPS[@]}" | tail -1)")
  "$KOLOS" bench train --config "$RECIPE" "${SETS[@]}" "${STEPS[@]}" | tail -1 > "$tmp/a" &
  "$KOLOS" bench train --config "$RECIPE" "${SETS[@]}" "${STEPS[@]}" | tail -1 > "$tmp/b"
  wait
  pair+=("$(cat "$tmp/a")" "$(cat "$tmp/b")")
done
printf '%s\n' "${one[@]}" "${two[@]}"
/usr/bin/python3 - "$RECIPE" "${#one[@]}" "${one[@]}" "${two[@]}" "${pair[@]}" <<'PY'
import json, statistics, sys
recipe, n = sys.argv[1], int(sys.argv[2])
rows = [json.loads(x) for x in sys.argv[3:]]
one, two, pair = rows[:n], rows[n:2 * n], rows[2 * n:]
t1 = statistics.median(r["tokens_per_s_per_rank"] for r in one)
t2 = statistics.median(r["tokens_per_s_per_rank"] for r in two)
tc = statistics.median(r["tokens_per_s_per_rank"] for r in pair)
print(json.dumps({"bench": "dp_overlap", "recipe": recipe, "seq_len": 64, "batch_per_rank": 1, "threads_per_rank": 1,
                  "one_process_tokens_per_s": t1, "dp2_tokens_per_s_per_rank": t2, "ratio": t2 / t1,
                  "two_independent_tokens_per_s_each": tc, "ceiling_ratio": tc / t1, "ratio_to_ceiling": t2 / tc,
                  "one_process_step_ms": statistics.median(r["step_ms_median"] for r in one),
                  "dp2_step_ms": statistics.median(r["step_ms_median"] for r in two),
                  "params": one[0]["params"], "repeats": n}))
PY
