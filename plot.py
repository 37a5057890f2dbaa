"""Figures and the one-line summary of training runs, from their metrics.jsonl (one JSON record per step).

    python plot.py runs/grpo runs/daro --out plots/   # several runs on one figure

Figures: reward and validation accuracy; DARO's weight per difficulty (DARO Fig. 1); loss scale per
difficulty bucket (Fig. 2); pass rate per data level; lengths of correct and incorrect responses
(Fig. 3); entropy, length and reward (Fig. 4). A figure is drawn only when some run logged its metric.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_summary(metrics_path, window=50):
    """One line a reader can check at a glance: mean reward over the first and last `window` steps, last evals."""
    rows = read_metrics(metrics_path)
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    if not rewards:
        return "summary: no training steps logged"
    head, tail = rewards[:window], rewards[-window:]
    text = (f"summary: reward {sum(head) / len(head):.3f} (first {len(head)} steps) -> "
            f"{sum(tail) / len(tail):.3f} (last {len(tail)} steps)")
    evals = {k: v for r in rows for k, v in r.items() if k.startswith("val/")}  # the latest of each
    return text + "".join(f"; {k} {v:.3f}" for k, v in evals.items())


def plot_main(argv):
    ap = argparse.ArgumentParser(description="Draw PNG figures from runs' metrics.jsonl.")
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    ap.add_argument("--out", default=None, help="output directory (default: the first run's plots/)")
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window in steps")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for r in args.runs:
        path = Path(r) / "metrics.jsonl" if Path(r).is_dir() else Path(r)
        if not path.is_file():
            sys.exit(f"plot: no metrics file at {path}")
        runs[path.parent.name] = read_metrics(path)
    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    def line(ax, records, key, label, smooth=True, **kw):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not pts:
            return
        x, y = map(np.asarray, zip(*pts))
        w = min(args.smooth, len(y)) if smooth else 1
        if w > 1:
            y = np.convolve(y, np.ones(w) / w, mode="valid")
            x = x[w - 1:]
        ax.plot(x, y, label=label, **kw)

    def keys(prefix):
        return sorted({k for recs in runs.values() for r in recs for k in r if k.startswith(prefix)},
                      key=lambda k: float(k.split("/")[1]) if k.split("/")[1].replace(".", "").isdigit() else k)

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    # reward and validation accuracy
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        line(ax, recs, "reward_mean", f"{name} reward")
        for k in keys("val/"):
            line(ax, recs, k, f"{name} {k}", smooth=False, marker="o", ls="--")
    ax.set(xlabel="step", ylabel="reward / accuracy", title="reward and validation accuracy")
    ax.legend(fontsize=7)
    save(fig, "reward.png")

    # per-difficulty weights (DARO Figure 1), loss per difficulty (Figure 2), pass rate per data level
    # (MATH level 1-5; the synthetic task's operand count). Buckets: k of G samples correct, mu = k/G.
    for prefix, fname, title, label in [
            ("daro_w/", "weights_per_difficulty.png", "DARO weight w_mu over training", "k={}"),
            ("bucket_scale/", "loss_per_difficulty.png", "loss scale per bucket, sum W |surrogate|", "k={}"),
            ("score_by_level/", "pass_rate_per_level.png", "pass rate per level", "level {}")]:
        ks = keys(prefix)
        if not ks:
            continue
        fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
        for ax, (name, recs) in zip(axes[0], runs.items()):
            for k in ks:
                line(ax, recs, k, label.format(k.split('/')[1]))
            ax.set(xlabel="step", title=f"{name}: {title}")
            if ax.lines:  # a run without this metric (e.g. GRPO beside DARO) keeps an empty panel
                ax.legend(fontsize=6, ncol=2)
        save(fig, fname)

    # lengths of correct vs incorrect responses (Figure 3)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        line(ax, recs, "len_correct", f"{name} correct")
        line(ax, recs, "len_incorrect", f"{name} incorrect", ls="--")
    ax.set(xlabel="step", ylabel="tokens", title="response length: correct vs incorrect")
    ax.legend(fontsize=7)
    save(fig, "lengths.png")

    # entropy, length and reward (Figure 4)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ["entropy", "len_mean", "reward_mean"]):
        for name, recs in runs.items():
            line(ax, recs, key, name)
        ax.set(xlabel="step", title=key)
        ax.legend(fontsize=7)
    save(fig, "dynamics.png")
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    plot_main(sys.argv[1:])
