#!/usr/bin/env bash
# Pipeline parallelism (issue 6): bubble and activation memory at p = 2 stages, m = 8 micro-batches, one thread per
# rank, GPipe against 1F1B (and interleaved with 2 virtual stages), on a GPT with 4 layers, hidden 256, 4 heads,
# sequence 256, micro-batches of 2, synthetic tokens.
#
#   bench/pipeline.sh             (build/kolos must exist; a few minutes on 2 cores; STEPS from the environment)
#
# Each run writes ranks/rank_0.json with a "pipeline" object (kolos/train/trainer.h, pipeline_report): per stage the
# measured idle fraction of each step (1 − the stage's compute time ÷ the step's span from the first computation's
# start on any stage to the last one's end, steady clock) and the simulator's idle fraction for the same schedule fed
# with that step's measured costs — each stage's and chunk's mean forward and backward time, and the messages' mean
# latency, send and receive time (kolos/parallel/pipeline/simulator.h, measured_costs) — medians over the steps
# after the first, and the activation bytes
# each stage held at most: the CPU allocator's live bytes after a forward less those at the step's start (saved
# tensors and stashed inputs/outputs; kolos/core/alloc_counter.h), not RSS.
#
# Goals: every stage's measured idle within 0.05 of the simulator's; stage 0's activation bytes under 1F1B at most
# (p/m + 0.1) × GPipe's = 0.35×.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
STEPS=${STEPS:-6}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SETS=()
for kv in model.arch=gpt2 model.layers=4 model.hidden=256 model.heads=4 model.kv_heads=4 model.ffn_hidden=1024 \
          model.vocab=261 model.seq_len=256 model.dropout=0 data.synthetic=true train.batch_size=2 \
          train.global_batch=0 train.grad_accum=8 train.steps="$STEPS" train.eval_every=0 train.eval_batches=1 \
          train.save_every=0 train.sample_tokens=0 train.log_every=1 train.threads=1 train.mfu=false parallel.pp=2; do
  SETS+=(--set "$kv")
done

for run in "gpipe 1" "1f1b 1" "interleaved 2"; do
  set -- $run
  dir="$tmp/$1"
  "$KOLOS" run -n 2 -- "$KOLOS" train --config tiny "${SETS[@]}" --set parallel.pp_schedule="$1" \
    --set parallel.pp_virtual="$2" --out "$dir" >"$tmp/$1.log" 2>&1 || { cat "$tmp/$1.log"; exit 1; }
  cp "$dir/ranks/rank_0.json" "$tmp/$1.json"
done

/usr/bin/python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
p, m = 2, 8
runs = {name: json.load(open(f"{tmp}/{name}.json"))["pipeline"] for name in ("gpipe", "1f1b", "interleaved")}
ok = True
print(f"p = {p}, m = {m}, one thread per rank; idle = medians over {runs['gpipe']['steps_measured']} steps")
print(f"{'schedule':12} {'stage':>5} {'measured idle':>14} {'simulated idle':>15} {'|diff|':>7} {'activation MiB':>15}")
out = {"bench": "pipeline", "stages": p, "micro_batches": m}
for name, r in runs.items():
    for s in range(p):
        meas, sim = r["measured_idle"][s], r["simulated_idle"][s]
        diff = abs(meas - sim)
        ok = ok and diff <= 0.05
        print(f"{name:12} {s:5d} {meas:14.3f} {sim:15.3f} {diff:7.3f} {r['activation_bytes'][s] / 2**20:15.1f}")
        out[f"{name}_stage{s}_measured_idle"] = round(meas, 4)
        out[f"{name}_stage{s}_simulated_idle"] = round(sim, 4)
        out[f"{name}_stage{s}_activation_bytes"] = r["activation_bytes"][s]
    print(f"{name:12} messages: latency {1e3 * r['p2p_latency_s']:.2f} ms, send {1e3 * r['send_s']:.2f} ms, "
          f"receive {1e3 * r['receive_s']:.2f} ms (medians over the steps of the per-step means)")
    for key in ("p2p_latency_s", "send_s", "receive_s"):
        out[f"{name}_{key}"] = round(r[key], 6)
ratio = runs["1f1b"]["activation_bytes"][0] / runs["gpipe"]["activation_bytes"][0]
print(f"stage 0 activation bytes, 1F1B / GPipe: {ratio:.3f} (goal <= p/m + 0.1 = {p / m + 0.1:.2f})")
out["activation_ratio_1f1b_gpipe_stage0"] = round(ratio, 4)
out["idle_within_0.05"] = ok
out["activation_goal_met"] = ratio <= p / m + 0.1
print(json.dumps(out))
PY
