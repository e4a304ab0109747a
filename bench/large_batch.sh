#!/usr/bin/env bash
# Large-batch optimization (issue 7): how many optimizer steps LAMB and LARS at 8× the batch need to reach the
# best validation loss of an AdamW baseline at the tiny recipe's batch.
#
#   bench/large_batch.sh            (build/kolos and the demo data must exist: `make data`; hours on 2 cores)
#
# Protocol:
#   1. Baseline: the tiny recipe (configs/tiny.toml: batch 8 × 256 tokens) with AdamW at each lr in LRS
#      (min_lr = lr/10, cosine over MAX_STEPS), evaluated every EVAL_EVERY steps on EVAL_BATCHES validation
#      batches, stopped when the validation loss has not improved for 3 evaluations (train.early_stop = 3). The best
#      lr is the one with the lowest validation loss; its best loss is the target and the step where it reached it
#      is the baseline's step count.
#   2. LAMB (configs/lamb.toml) and LARS (configs/lars.toml), both at 8× the batch (train.global_batch = 64), with
#      their schedules fitted to BUDGET × the baseline's steps (default 0.25, the goal: train.steps =
#      ⌈BUDGET·baseline⌉, warmup the recipe's fraction of that: warmup_steps / steps, a tenth for LAMB, a fifth for
#      LARS), evaluated every ⌈steps/20⌉ steps (at most EVAL_EVERY) and at the end on the same validation batches,
#      stopped at the target (train.target_val_loss). A larger BUDGET measures how many steps each needs when a
#      quarter is not enough. LAMB's lr is the best AdamW lr × √8 (the square-root scaling of You et al. 2019); LARS
#      keeps its recipe's lr (read from configs/lars.toml, with trust coefficient 0.001: an Adam lr does not carry
#      over to LARS's layer-wise rate). LAMB_LR and LARS_LR override them; each may be a space-separated list (a
#      learning-rate search: one run per lr, named lamb-lr<lr> and lars-lr<lr>; each optimizer's result is its lr that reached the
#      target in the fewest steps, or else its lowest validation loss). LAMB's lr is relative to each tensor's norm,
#      so the √8 rule on an AdamW lr is only a starting point: on the State of the Union corpus it gives 2.83e-3, and
#      LAMB's best was 2e-2 (bench/results/2026-11-30-large-batch-sotu.md) — search it.
#   3. Output: a markdown table and a PNG plot (validation loss against optimizer steps and against tokens) at
#      PLOT (default bench/results/<date>-large-batch.png; needs Debian's python3-matplotlib, installed with apt-get
#      when missing), and a JSON line last.
#
# JOBS (default 1) runs that many trainings of a phase at once, each with train.threads = the cores ÷ JOBS (on these
# 2 cores two runs of one thread each moved 1.25–1.5× the tokens of one run of two threads; threads change only the order
# of sums, so a rerun reuses runs whatever their thread count).
#
# WORK keeps every run (default: a new temporary directory); rerunning with the same WORK reuses the runs that
# finished with the same arguments, so an interrupted benchmark resumes at the run it was in.
# (The arguments, not the recipes' contents: after editing configs/lamb.toml or lars.toml use a new WORK.)
#
# DATA (default: each recipe's data.path, the Moby-Dick byte corpus) sets data.path for every run: on Moby-Dick's 1.08M
# training tokens the large batches overfit before they reach the baseline (bench/results/2026-11-29-large-batch-half.md);
# DATA=.cache/data/sotu-byte (`make data`: 9.7M training tokens, the State of the Union addresses) keeps every run
# within about one epoch.
#
# Every run uses train.dtype = DTYPE (default bf16: fp32 master weights and optimizer state, 2–3× faster here; its
# final validation loss on the tiny recipe is within 0.04% of fp32's, bench/results/2026-11-28-mixed-precision.md).
# Step counts, not times, are the result, so the machine's load does not change it.
set -euo pipefail
cd "$(dirname "$0")/.."
KOLOS=${KOLOS:-build/kolos}
LRS=${LRS:-"3e-4 1e-3 3e-3"}
MAX_STEPS=${MAX_STEPS:-5000}
EVAL_EVERY=${EVAL_EVERY:-50}
EVAL_BATCHES=${EVAL_BATCHES:-16}
DTYPE=${DTYPE:-bf16}
BUDGET=${BUDGET:-0.25}
PLOT=${PLOT:-bench/results/$(date +%F)-large-batch.png}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
JOBS=${JOBS:-1}
export KOLOS LRS MAX_STEPS JOBS EVAL_EVERY EVAL_BATCHES DTYPE BUDGET PLOT WORK LAMB_LR=${LAMB_LR:-} LARS_LR=${LARS_LR:-} DATA=${DATA:-}

if ! /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  echo "installing python3-matplotlib for the plot" >&2
  (apt-get install -y -q python3-matplotlib >/dev/null 2>&1 || sudo apt-get install -y -q python3-matplotlib >/dev/null) \
    || { echo "python3-matplotlib could not be installed: the plot will be missing" >&2; }
fi

/usr/bin/python3 - <<'PY'
import concurrent.futures, json, math, os, subprocess, sys, tomllib

kolos, work = os.environ["KOLOS"], os.environ["WORK"]
max_steps, eval_every = int(os.environ["MAX_STEPS"]), int(os.environ["EVAL_EVERY"])
eval_batches, dtype = os.environ["EVAL_BATCHES"], os.environ["DTYPE"]
common = ["--set", f"train.eval_batches={eval_batches}", "--set", "train.save_every=0",
          "--set", "train.sample_tokens=0", "--set", f"train.dtype={dtype}", "--set", "train.mfu=false"]
if os.environ.get("DATA"):
    common += ["--set", f"data.path={os.environ['DATA']}"]

jobs = int(os.environ["JOBS"])
threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0  # 0: the recipe's own (all cores)

def train(name, recipe, sets):
    out = f"{work}/{name}"
    args = [kolos, "train", "--config", recipe, "--out", out] + common
    for kv in sets:
        args += ["--set", kv]
    done = f"{work}/{name}.done"  # holds the arguments of a finished run: a rerun with WORK reuses it
    if os.path.exists(done) and open(done).read() == " ".join(args[1:]):
        print(f"[{name}] finished before in {out}: reused", file=sys.stderr, flush=True)
    else:
        run = args + (["--set", f"train.threads={threads}"] if threads else [])
        print(f"[{name}] {' '.join(run)}", file=sys.stderr, flush=True)
        log = open(f"{work}/{name}.log", "w")
        if subprocess.run(run, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"{name} failed: see {work}/{name}.log")
        open(done, "w").write(" ".join(args[1:]))
    evals, tokens_per_step = [], None
    for line in open(f"{out}/metrics.jsonl"):
        r = json.loads(line)
        if "loss" in r and r.get("step"):
            tokens_per_step = r["tokens"] / r["step"]
        # evaluations during training, and the final one unless it repeats the last (steps a multiple of eval_every)
        if "val_loss" in r and not (evals and evals[-1][0] == r["step"]):
            evals.append((r["step"], r["val_loss"]))
    best_step, best = min(evals, key=lambda e: (e[1], e[0]))  # the lowest evaluation, the earliest of equals
    return {"name": name, "evals": evals, "tokens_per_step": tokens_per_step, "best_step": best_step, "best": best}

def train_all(runs):  # [(name, recipe, sets)] → results in the same order, JOBS at a time
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda r: train(*r), runs))

# 1. Baseline.
lrs = os.environ["LRS"].split()
baselines = train_all([(f"adamw-lr{lr}", "tiny", [f"optim.lr={lr}", f"optim.min_lr={float(lr) / 10:g}",
                                                  "optim.warmup_steps=50", f"train.steps={max_steps}",
                                                  f"train.eval_every={eval_every}", f"train.log_every={eval_every}",
                                                  "train.early_stop=3"]) for lr in lrs])
for r, lr in zip(baselines, lrs):
    r["lr"] = float(lr)
    print(f"[{r['name']}] best val_loss {r['best']:.4f} at step {r['best_step']}", file=sys.stderr, flush=True)
base = min(baselines, key=lambda r: r["best"])
target, base_steps = base["best"], base["best_step"]

# 2. Large batch, BUDGET × the baseline's steps.
budget = float(os.environ["BUDGET"])
steps = math.ceil(base_steps * budget)
every = max(1, min(eval_every, math.ceil(steps / 20)))
runs = []
recipes = {opt: tomllib.load(open(f"configs/{opt}.toml", "rb")) for opt in ("lamb", "lars")}
for opt, default_lr in (("lamb", f"{base['lr'] * math.sqrt(8):.6g}"), ("lars", f"{recipes['lars']['optim']['lr']:g}")):
    # warmup: the recipe's fraction of its steps, applied to the budget's steps (int: LAMB's 58 of 588 as before)
    warmup = max(1, int(steps * recipes[opt]["optim"]["warmup_steps"] / recipes[opt]["train"]["steps"]))
    for lr in (os.environ[f"{opt.upper()}_LR"] or default_lr).split():
        runs.append((opt, float(lr), (f"{opt}-lr{float(lr):g}", opt,
                     [f"optim.lr={lr}", f"train.steps={steps}", f"optim.warmup_steps={warmup}",
                      f"train.eval_every={every}", f"train.log_every={every}",
                      f"train.target_val_loss={target:.17g}"])))
large = train_all([spec for _, _, spec in runs])
for r, (opt, lr, _) in zip(large, runs):
    r["opt"], r["lr"] = opt, lr
    reached = [s for s, v in r["evals"] if v <= target]
    r["reached_step"] = reached[0] if reached else None
# Each optimizer's result: its lr that reached the target in the fewest steps, else its lowest validation loss.
chosen = {opt: min((r for r in large if r["opt"] == opt),
                   key=lambda r: (r["reached_step"] is None, r["reached_step"] or 0, r["best"]))
          for opt in ("lamb", "lars")}

# 3. Report.
print(f"\nbaseline: AdamW, batch 8 × 256 tokens; best lr {base['lr']:g}: best val_loss {target:.4f} at step "
      f"{base_steps}; dtype {dtype}, evaluations every {eval_every} steps on {eval_batches} batches\n")
print("| run | batch (sequences) | lr | optimizer steps to val_loss ≤ target | ratio to baseline | best val_loss (step) |")
print("|---|---|---|---|---|---|")
for r in baselines:
    mark = " (baseline)" if r is base else ""
    print(f"| AdamW{mark} | 8 | {r['lr']:g} | {r['best_step'] if r is base else '—'} | {'1' if r is base else '—'} | "
          f"{r['best']:.4f} ({r['best_step']}) |")
for r in large:
    got = r["reached_step"]
    ratio = f"{got / base_steps:.3f}" if got else f"not within {steps} (= {budget:g} ×)"
    mark = " (its best lr)" if chosen[r["opt"]] is r and sum(x["opt"] == r["opt"] for x in large) > 1 else ""
    print(f"| {r['opt'].upper()}{mark} | 64 | {r['lr']:g} | {got if got else '—'} | {ratio} | "
          f"{r['best']:.4f} ({r['best_step']}) |")

plot = os.environ["PLOT"]
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in baselines + large:
        label = f"{'AdamW' if r in baselines else r['opt'].upper()} lr {r['lr']:g}, batch {'8' if r in baselines else '64'}"
        xs = [s for s, _ in r["evals"]]
        ys = [v for _, v in r["evals"]]
        axes[0].plot(xs, ys, marker=".", label=label)
        axes[1].plot([s * r["tokens_per_step"] for s in xs], ys, marker=".", label=label)
    for ax, xlabel in zip(axes, ("optimizer steps", "tokens")):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axvline(base_steps / 4, color="red", linestyle=":", linewidth=1, label="1/4 of the baseline's steps")
    axes[0].legend(fontsize=8)
    corpus = os.path.basename(os.environ.get("DATA") or "moby-dick-byte")
    fig.suptitle(f"tiny model on {corpus}: AdamW at batch 8 against LAMB and LARS at batch 64 ({dtype})")
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    print(f"\nplot: {plot}")
except ImportError:
    print("\nplot: not drawn (python3-matplotlib missing)")
    plot = None

out = {"bench": "large_batch", "dtype": dtype, "baseline_lr": base["lr"], "baseline_best_val_loss": round(target, 5),
       "baseline_steps": base_steps, "budget": budget, "budget_steps": steps, "plot": plot}
for r in baselines:
    out[f"adamw_lr{r['lr']:g}_best"] = round(r["best"], 5)
    out[f"adamw_lr{r['lr']:g}_best_step"] = r["best_step"]
for opt, r in chosen.items():
    out[f"{opt}_lr"] = r["lr"]
    out[f"{opt}_steps_to_target"] = r["reached_step"]
    out[f"{opt}_ratio"] = round(r["reached_step"] / base_steps, 4) if r["reached_step"] else None
    out[f"{opt}_best"] = round(r["best"], 5)
for r in large:
    out[f"{r['opt']}_lr{r['lr']:g}_steps_to_target"] = r["reached_step"]
    out[f"{r['opt']}_lr{r['lr']:g}_best"] = round(r["best"], 5)
out["goal_met"] = all(r["reached_step"] is not None and r["reached_step"] <= base_steps / 4 for r in chosen.values())
print(json.dumps(out))
PY
