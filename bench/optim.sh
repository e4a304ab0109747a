#!/usr/bin/env bash
# Fused CPU AdamW (issue 4): `kolos bench optim` against the bandwidth floor and against torch.optim.AdamW from
# Debian's python3-torch, in the same invocation.
#
#   bench/optim.sh        (build/kolos must exist, KOLOS=... to use another build)
#
# kolos    `kolos bench optim --params $PARAMS --threads $THREADS` in fp32 (and once in bf16: bf16 gradients in,
#          bf16 parameter copy out): the fused step's median time, the copy bandwidth (512 MiB memcpy split over the
#          same threads) and the floor = 28 B/param ÷ copy bandwidth.
# pytorch  /usr/bin/python3, torch.set_num_threads($THREADS) (printed), torch.optim.AdamW (lr 6e-4, betas 0.9/0.95,
#          eps 1e-8, weight decay 0.1) over (a) one fp32 tensor of $PARAMS elements and (b) the 148 tensors of
#          GPT-2 small (124,439,808 parameters) with foreach left at its default (False in torch 1.13) and
#          (c) the same with foreach=True; and (d) = (a) with glibc malloc told never to return memory to the
#          system (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_ huge): PyTorch's step allocates tensor-sized
#          temporaries, and on a VM where page faults are slow (this one) their first touch can dominate; (d) is
#          PyTorch's arithmetic without that cost. Median step time of STEPS steps after WARMUP warm-up steps.
# Each configuration runs REPEATS (default 3) times, alternating; the medians of the per-run medians are compared
# per parameter (params/s), and the last line is one JSON object: speed-ups and the ratio to the floor.
# Goals: kolos fp32 >= 4x torch.optim.AdamW, and within 1.5x of the floor. Run it on an idle machine (check uptime).
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-2}
PARAMS=${PARAMS:-124000000}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pytorch_run() {  # $1 = one_tensor | gpt2_small | gpt2_small_foreach | one_tensor_heap
  local malloc_env=()
  [[ $1 == *_heap ]] && malloc_env=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1000000000000000)
  env "${malloc_env[@]}" /usr/bin/python3 - "$1" "$PARAMS" "$THREADS" "$STEPS" "$WARMUP" <<'PY'
import json, statistics, sys, time
import torch
layout, n, threads, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
if layout.startswith("one_tensor"):
    shapes = [(n,)]
else:  # GPT-2 small: token and position embeddings, 12 blocks, final norm (the head is tied to the embedding)
    C, V, T = 768, 50257, 1024
    block = [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, 4 * C), (4 * C,), (4 * C, C), (C,)]
    shapes = [(V, C), (T, C)] + block * 12 + [(C,), (C,)]
params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
for p in params:
    p.grad = torch.randn_like(p) * 0.01
foreach = True if layout == "gpt2_small_foreach" else None
opt = torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=foreach)
ms = []
for step in range(warmup + steps):
    t0 = time.perf_counter()
    opt.step()
    dt = (time.perf_counter() - t0) * 1e3
    if step >= warmup:
        ms.append(dt)
med = statistics.median(ms)
count = sum(p.numel() for p in params)
print(json.dumps({"impl": "pytorch", "layout": layout, "tensors": len(params), "params": count,
                  "foreach": bool(foreach), "step_ms_median": round(med, 2), "step_ms_min": round(min(ms), 2),
                  "params_per_s": count / (med / 1e3), "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
PY
}

kolos_run() {  # $1 = fp32 | bf16
  "$KOLOS" bench optim --params "$PARAMS" --threads "$THREADS" --dtype "$1" --steps 10 --warmup 3 | tail -1 |
    /usr/bin/python3 -c 'import json, sys; r = json.load(sys.stdin); r["impl"] = "kolos"; print(json.dumps(r))'
}

echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB, load $(cut -d' ' -f1-3 /proc/loadavg), OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
: > "$tmp/rows"
for ((i = 0; i < REPEATS; ++i)); do
  for run in "kolos fp32" "pytorch one_tensor" "pytorch gpt2_small" "kolos bf16" "pytorch gpt2_small_foreach" \
             "pytorch one_tensor_heap"; do
    read -r impl what <<< "$run"
    line=$(${impl}_run "$what")
    echo "$line"
    echo "$line" >> "$tmp/rows"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$tmp/rows" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(key, **match):
    return statistics.median(r[key] for r in rows if all(r.get(k) == v for k, v in match.items()))
k = dict(impl="kolos", dtype="fp32")
kps = med("params_per_s", **k)
out = {"bench": "optim_vs_pytorch", "threads": rows[0]["threads"],
       "kolos_fp32_step_ms": med("step_ms_median", **k), "kolos_fp32_floor_ms": med("floor_ms", **k),
       "kolos_fp32_ratio_to_floor": med("ratio_to_floor", **k), "copy_gbps": med("copy_gbps", **k),
       "kolos_bf16_step_ms": med("step_ms_median", impl="kolos", dtype="bf16"),
       "kolos_bf16_ratio_to_floor": med("ratio_to_floor", impl="kolos", dtype="bf16")}
for layout in ("one_tensor", "gpt2_small", "gpt2_small_foreach", "one_tensor_heap"):
    out[f"pytorch_{layout}_step_ms"] = med("step_ms_median", impl="pytorch", layout=layout)
    out[f"speedup_vs_pytorch_{layout}"] = round(kps / med("params_per_s", impl="pytorch", layout=layout), 2)
out["repeats"] = sum(1 for r in rows if r.get("impl") == "kolos" and r.get("dtype") == "fp32")
print(json.dumps(out))
PY
