#!/usr/bin/env bash
# The reference's own rounding noise against the parity tolerance (DESIGN "Parity": each parameter tensor
# ‖Δ‖/‖ref‖ ≤ 1e-5 after 20 steps of AdamW in fp32).
#
#   bench/parity_floor.sh [--set k=v ...]      (build/kolos and the demo data must exist: `make data`)
#
# Protocol:
#   1. `kolos verify` trains the parity model in one process and under each layout in LAYOUTS (default: the
#      tensor- and sequence-parallel layouts of issue 5 and pp 2 × tp 2), keeping every run's final checkpoint.
#   2. The same one-process reference is trained again, unchanged but for the matrix-product kernels: Debian's
#      OpenBLAS is built for every x86-64 core type and picks its kernels at start-up (or as OPENBLAS_CORETYPE in
#      the environment says); OPENBLAS_CORETYPE=X makes it use core type X's kernels (CORETYPES, default Haswell,
#      SkylakeX, Sandybridge, Nehalem, Prescott: AVX2, AVX-512, AVX, SSE4, SSE3), which sum the same products in another order. Each run's log
#      shows the core type OpenBLAS used (OPENBLAS_VERBOSE=2); a variant whose kernels are the reference's own is
#      left out. The reference is also trained a second time with its own kernels, to show that a run is
#      bit-identical to itself.
#   3. Per parameter tensor (GPT-2's key third of the attention bias left out, as verify does: its true gradient is
#      zero), the relative difference ‖Δ‖/‖ref‖ of every layout and of every kernel variant from the reference.
#      The floor of a tensor is its largest difference among the kernel variants: how far one process lands from
#      itself when only the rounding of its products changes.
#
# Output: per layout, its tensors beyond the tolerance next to their floor; then one JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
LAYOUTS=${LAYOUTS:-"tp=2;tp=4;tp=2,megatron_sp=true;sp=2,sp_mode=ring;sp=2,sp_mode=ulysses;pp=2,tp=2,grad_accum=2"}
CORETYPES=${CORETYPES:-"Haswell SkylakeX Sandybridge Nehalem Prescott"}
TOLERANCE=${TOLERANCE:-1e-5}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"

# WORK keeps the runs; rerunning with the same WORK reuses the verify runs and the variants that finished.
if ! { [ -s "$WORK/verify.txt" ] && tail -1 "$WORK/verify.txt" | grep -q '^{'; }; then
  "$KOLOS" verify --layouts "$LAYOUTS" --out "$WORK/verify" --tolerance "$TOLERANCE" "$@" > "$WORK/verify.txt" 2>&1 || true
fi
tail -1 "$WORK/verify.txt" | grep -q '^{' || { cat "$WORK/verify.txt"; echo "kolos verify failed: see above" >&2; exit 1; }

for reference in "$WORK"/verify/reference_b*/; do  # one reference per micro-batch size among the layouts
  reference=${reference%/}
  b=${reference##*_b}
  variants=("same")
  for v in same $CORETYPES; do
    out="$WORK/variant_b${b}_$v"
    if [ ! -d "$out/checkpoints/latest" ]; then
      coretype=(); [ "$v" = same ] || coretype=(OPENBLAS_CORETYPE="$v")
      env "${coretype[@]}" OPENBLAS_VERBOSE=2 "$KOLOS" train --config "$reference/config.toml" --out "$out" > "$out.log" 2>&1
    fi
    [ "$v" = same ] && used=$(grep -o 'Core: [A-Za-z0-9]*' "$out.log" | head -1)
    [ "$v" != same ] && [ "$(grep -o 'Core: [A-Za-z0-9]*' "$out.log" | head -1)" != "$used" ] && variants+=("$v")
  done
  echo "${variants[*]}" > "$WORK/variants_b$b"
done

WORK="$WORK" TOLERANCE="$TOLERANCE" /usr/bin/python3 - <<'PY'
import glob, json, os, re, struct
import torch

work, tol = os.environ["WORK"], float(os.environ["TOLERANCE"])

def load(run):
    """The final checkpoint's global tensors (safetensors: 8-byte header size, JSON header, raw little-endian data)."""
    path = sorted(glob.glob(f"{run}/checkpoints/step_*/model.safetensors"), key=lambda p: int(p.split("step_")[1].split("/")[0]))[-1]
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    types = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        x = torch.frombuffer(bytearray(blob[8 + n + a:8 + n + b]), dtype=types[t["dtype"]]).reshape(t["shape"]).double()
        if name.endswith("attn.qkv.bias") and "gpt2" in open(f"{run}/config.toml").read():
            third = x.numel() // 3
            x = torch.cat([x[:third], x[2 * third:]])  # the key bias: true gradient zero (DESIGN's exception)
        out[name] = x
    return out

def diffs(a, b):
    return {k: ((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30)).item() for k in a}

verify = json.loads(open(f"{work}/verify.txt").read().strip().splitlines()[-1])
refs, floors, variant_rows = {}, {}, []
for ref_dir in sorted(d for d in glob.glob(f"{work}/verify/reference_b*") if os.path.isdir(d)):
    b = int(ref_dir.rsplit("_b", 1)[1])
    refs[b] = load(ref_dir)
    floors[b] = {k: 0.0 for k in refs[b]}
    for v in open(f"{work}/variants_b{b}").read().split():
        log = open(f"{work}/variant_b{b}_{v}.log").read()
        core = re.search(r"Core: (\w+)", log)
        d = diffs(refs[b], load(f"{work}/variant_b{b}_{v}"))
        worst = max(d, key=d.get)
        variant_rows.append((b, v, core.group(1) if core else "?", d[worst], worst))
        if v != "same":
            for k in d:
                floors[b][k] = max(floors[b][k], d[k])

print("one process against itself (only OpenBLAS's kernels changed):")
print("| reference (micro-batch) | run | OpenBLAS core type used | largest ‖Δ‖/‖ref‖ | tensor |")
print("|---|---|---|---|---|")
for b, v, core, worst, name in variant_rows:
    print(f"| {b} | {'again, same kernels' if v == 'same' else 'OPENBLAS_CORETYPE=' + v} | {core} | {worst:.3e} | {name} |")
print()
print(f"layouts (tolerance {tol:g}); beyond it, each tensor next to its floor:")
print("| layout | loss rel | largest param rel | tensors beyond tolerance: rel / floor |")
print("|---|---|---|---|")
all_floor = {f"{k} (b{b})": f for b in floors for k, f in floors[b].items()}
out = {"bench": "parity_floor", "tolerance": tol, "floor_max": max(all_floor.values()),
       "floor_max_tensor": max(all_floor, key=all_floor.get),
       "self_same_kernels": max(r[3] for r in variant_rows if r[1] == "same")}
worst_ratio = 0.0
for i, layout in enumerate(verify["layouts"]):
    run = f"{work}/verify/layout_{i}"
    b = int(re.search(r"batch_size\s*=\s*(\d+)", open(f"{run}/config.toml").read()).group(1))
    ref, floor = refs[b], floors[b]
    d = diffs(ref, load(run))
    beyond = sorted((k for k in d if d[k] > tol), key=lambda k: -d[k])
    cells = ", ".join(f"{k} {d[k]:.2e} / {floor[k]:.2e}" for k in beyond) or "none"
    ratio = max((d[k] / max(floor[k], 1e-30) for k in beyond), default=0.0)
    worst_ratio = max(worst_ratio, ratio)
    print(f"| {layout['layout']} | {layout['loss_rel']:.2e} | {max(d.values()):.2e} | {cells} |")
    out[f"{layout['layout']}_param_rel"] = max(d.values())
out["worst_beyond_tolerance_over_floor"] = worst_ratio
print()
print(json.dumps(out))
PY
