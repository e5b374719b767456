#!/usr/bin/env python3
"""Training-loss and validation-loss curves of two `lushan train` runs in one picture (f32 against
`--precision bf16`), from their metrics.jsonl files.

Usage: venv/bin/python tools/plot_precision_curves.py F32_OUT_DIR BF16_OUT_DIR OUT.png   (needs matplotlib)
Prints each evaluation's losses side by side.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(out_dir):
    steps, evals = [], []
    with open(f"{out_dir}/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "step":
                steps.append((r["step"], r["loss"]))
            elif r["kind"] == "eval":
                evals.append((r["step"], r["train_loss"], r["val_loss"]))
    return steps, evals


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    runs = {"f32": read(sys.argv[1]), "bf16": read(sys.argv[2])}
    styles = {"f32": "--", "bf16": "-"}
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    colours = {"f32": "#1f77b4", "bf16": "#d62728"}
    # bf16 first, f32 dashed on top: where the curves coincide both stay visible.
    for name, (steps, evals) in reversed(list(runs.items())):
        ax.plot([s for s, _ in steps], [l for _, l in steps], color=colours[name], alpha=0.35, lw=1,
                ls=styles[name], label=f"{name} training loss (per step)")
        ax.plot([e[0] for e in evals], [e[2] for e in evals], color=colours[name], marker="o", lw=2, ls=styles[name],
                label=f"{name} validation loss")
    ax.set_xlabel("update")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("lushan train (default config): f32 and --precision bf16")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[3])
    print("step   f32 train  f32 val   bf16 train  bf16 val")
    for a, b in zip(runs["f32"][1], runs["bf16"][1]):
        print(f"{a[0]:>5}  {a[1]:.4f}     {a[2]:.4f}    {b[1]:.4f}      {b[2]:.4f}")


if __name__ == "__main__":
    main()
