#!/usr/bin/env bash
# The sweep targets of docs/sweep.md, one command (run from the repository root):
#
#   tools/sweep_targets.sh [OUT]          # default OUT=out/sweep-targets; ≈ 35 minutes on 2 cores
#
# 1. the default configuration (`lushan train`, 2000 steps): its best validation loss;
# 2. the preset halving sweep (examples/sweep/shakespeare.toml: ASHA, total_steps = BUDGET);
# 3. a random search over the same space with the same total_steps (median stopping rule on);
# then prints halving's gain over the default (target ≥ 0.05 nats) and the share of random's steps that
# halving had spent when one of its trials first reached random's best (target ≤ 40 %).
#
# With OVERHEAD=1 it also runs 16 trials (a grid of 16 learning rates, OVERHEAD_STEPS each) as a sweep and
# then the same 16 `lushan train --config` runs by hand, and prints the sweep's overhead (target ≤ 2 %).
#
# Environment: BUDGET (default 8000, the preset's), SEED (both sweeps' seed; default the preset's 0),
# RUNS (default "default halving random": the runs to do; the others' directories must be in OUT already,
# e.g. another seed's sweeps beside the same default run), SET="name=value …" (base settings for every
# run, e.g. a tiny model for a quick check), MIN_STEPS (halving's first rung, for such a check), OVERHEAD,
# OVERHEAD_STEPS (default 500), BIN (default target/release/lushan). A check at tiny scale (seconds):
#   SET="n_layer=1 n_head=2 n_embd=32 block_size=16 max_iters=90 eval_iters=2" MIN_STEPS=10 BUDGET=600 \
#   OVERHEAD=1 OVERHEAD_STEPS=20 tools/sweep_targets.sh /tmp/sweep-check
set -euo pipefail
out=${1:-out/sweep-targets}
budget=${BUDGET:-8000}
runs=" ${RUNS:-default halving random} "
seed=(${SEED:+--seed "$SEED"})
bin=${BIN:-target/release/lushan}
[ -x "$bin" ] || cargo build --release -q
sets=()
train_flags=()
for kv in ${SET:-}; do
    sets+=(--set "$kv")
    name=${kv%%=*}
    train_flags+=("--${name//_/-}" "${kv#*=}")
done
mkdir -p "$out"

if [[ $runs == *" default "* ]]; then
    echo "== 1/3 the default configuration"
    rm -rf "$out/default"
    "$bin" train --out-dir "$out/default" --sample-tokens 0 "${train_flags[@]}" > "$out/default.log"
fi
if [[ $runs == *" halving "* ]]; then
    echo "== 2/3 halving, total_steps $budget"
    rm -rf "$out/halving"
    "$bin" sweep --config examples/sweep/shakespeare.toml --out "$out/halving" --total-steps "$budget" "${seed[@]}" \
        "${sets[@]}" ${MIN_STEPS:+--min-steps "$MIN_STEPS"} > "$out/halving.log"
fi
if [[ $runs == *" random "* ]]; then
    echo "== 3/3 random, total_steps $budget"
    rm -rf "$out/random"
    "$bin" sweep --config examples/sweep/shakespeare.toml --method random --out "$out/random" \
        --total-steps "$budget" "${seed[@]}" "${sets[@]}" > "$out/random.log"
fi

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]

def best_default():
    evals = [json.loads(l) for l in open(f"{out}/default/metrics.jsonl") if '"eval"' in l]
    return min(e["val_loss"] for e in evals)

def trials(name):
    return [json.loads(l) for l in open(f"{out}/{name}/trials.jsonl")]

def steps_to_reach(name, target, status=None):
    """Training steps the sweep had spent when one of its trials first reached `target` (or first ended
    with `status`), from its log: each `trial N STATUS at step S: best val_loss V` line ends a run of
    trial N at step S."""
    done, reached = {}, 0
    for line in open(f"{out}/{name}.log"):
        m = re.match(r"trial (\d+) (\S+) at step (\d+): best val_loss ([0-9.]+)", line)
        if not m:
            continue
        trial, ended, step, value = int(m[1]), m[2], int(m[3]), float(m[4])
        reached += step - done.get(trial, 0)
        done[trial] = step
        if (status is None and value <= target) or ended == status:
            return reached
    return None

default = best_default()
halving, random = trials("halving"), trials("random")
h_best = min(t["best"] for t in halving if t["best"] is not None)
r_best = min(t["best"] for t in random if t["best"] is not None)
h_steps, r_steps = sum(t["steps"] for t in halving), sum(t["steps"] for t in random)
print(f"default configuration: best val loss {default:.4f}")
print(f"halving: {len(halving)} trials, {h_steps} steps, best {h_best:.4f}; "
      f"{default - h_best:+.4f} nats against the default (target ≥ 0.05)")
print(f"random:  {len(random)} trials, {r_steps} steps, best {r_best:.4f}")
first_full = steps_to_reach("halving", None, "finished")
if first_full is not None:
    print(f"halving's first full-length trial ended after {first_full} steps")
needed = steps_to_reach("halving", r_best)
if needed is None:
    print(f"halving did not reach random's best {r_best:.4f}")
else:
    print(f"halving reached random's best {r_best:.4f} after {needed} steps = {100 * needed / r_steps:.1f} % "
          f"of random's {r_steps} (target ≤ 40 %)")
PY

if [ "${OVERHEAD:-0}" = 1 ]; then
    steps=${OVERHEAD_STEPS:-500}
    echo "== overhead: 16 trials of $steps steps as a sweep, then by hand"
    lrs=$(python3 -c "print(', '.join(f'{1e-3 * 1.2 ** i:.6f}' for i in range(16)))")
    start=$(date +%s.%N)
    "$bin" sweep --method grid --space "learning_rate=[$lrs]" --set "max_iters=$steps" --set sample_tokens=0 \
        "${sets[@]}" --out "$out/overhead" > "$out/overhead.log"
    sweep_s=$(echo "$(date +%s.%N) - $start" | bc)
    start=$(date +%s.%N)
    for config in "$out"/overhead/trials/*/train.toml; do
        "$bin" train --config "$config" --out-dir "$out/by-hand/$(basename "$(dirname "$config")")" > /dev/null
    done
    hand_s=$(echo "$(date +%s.%N) - $start" | bc)
    python3 -c "s, h = $sweep_s, $hand_s; print(f'16 trials: sweep {s:.1f} s, by hand {h:.1f} s: overhead {100 * (s - h) / h:+.2f} % (target ≤ 2 %)')"
fi
