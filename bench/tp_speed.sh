#!/usr/bin/env bash
# Tensor-parallel speed-up (issue 5): tokens/s of tp = 2 (two processes, one thread each) against one process at one
# thread, on GPT-2-small shapes (12 layers, hidden 768, 12 heads, vocabulary 50257), synthetic tokens, in the same
# invocation. Prints every run's summary and, last, one JSON line with the median speed-up (goal: ≥ 1.5).
#
#   bench/tp_speed.sh [extra --set k=v ...]     (build/kolos must exist; SEQ, BATCH, STEPS, REPEATS from the
#                                                environment; defaults 256, 2, 6, 3)
#
# Run it on an otherwise idle machine: the two ranks need both cores. Configurations alternate, REPEATS times each,
# and the medians of the per-run step-time medians are compared.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
REPEATS=${REPEATS:-3}
SETS=(--set model.seq_len=${SEQ:-256} --set train.batch_size=${BATCH:-2} --set train.global_batch=0
      --set train.threads=1)
for extra in "$@"; do SETS+=("$extra"); done
STEPS=(--steps ${STEPS:-6} --warmup 2)
one=() two=()
for ((i = 0; i < REPEATS; ++i)); do
  one+=("$("$KOLOS" bench train --config gpt2-small "${SETS[@]}" "${STEPS[@]}" | tail -1)")
  two+=("$("$KOLOS" run -n 2 -- "$KOLOS" bench train --config gpt2-small "${SETS[@]}" --set parallel.tp=2 \
           "${STEPS[@]}" | tail -1)")
done
printf '%s\n' "${one[@]}" "${two[@]}"
/usr/bin/python3 - "${#one[@]}" "${one[@]}" "${two[@]}" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
rows = [json.loads(x) for x in sys.argv[2:]]
one, two = rows[:n], rows[n:]
t1 = statistics.median(r["tokens_per_s"] for r in one)
t2 = statistics.median(r["tokens_per_s"] for r in two)
print(json.dumps({"bench": "tp_speed", "config": "gpt2-small", "threads_per_rank": 1,
                  "one_process_tokens_per_s": t1, "tp2_tokens_per_s": t2, "speedup": t2 / t1,
                  "speedups": [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(one, two)],
                  "one_process_step_ms": statistics.median(r["step_ms_median"] for r in one),
                  "tp2_step_ms": statistics.median(r["step_ms_median"] for r in two),
                  "tp2_layout": two[0].get("layout"), "repeats": n}))
PY
