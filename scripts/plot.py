"""Figures and the one-line summary of training runs, from their metrics.jsonl (one JSON record per step).

    python -m scripts.plot runs/grpo runs/daro --out plots/   # several runs on one figure
    python -m scripts.plot runs/sweep/grpo/seed* runs/sweep/daro/seed* --bands   # seeds as a mean and a 95% band

Figures: reward and validation accuracy; DARO's weight per difficulty (DARO Fig. 1); loss scale per
difficulty bucket (Fig. 2); pass rate per data level; lengths of correct and incorrect responses
(Fig. 3); entropy, length, truncated share and reward (Fig. 4). A figure is drawn only when some run
logged its metric.
"""
import argparse
import re
import sys
from pathlib import Path

import numpy as np

from metrics import read_metrics
from scripts.stats import mean_ci  # the bands: a 95% t-interval over seeds at each step


def run_label(path):
    """A run's name on figures: its directory, with the parent's for sweep runs (runs/sweep/grpo/seed0)."""
    d = Path(path).parent
    return f"{d.parent.name}/{d.name}" if re.fullmatch(r"seed\d+", d.name) else d.name


def seed_group(label):
    """The scheme a seed's run belongs to: 'grpo/seed0' -> 'grpo', 'grpo_seed1' -> 'grpo', else itself."""
    return re.sub(r"[/_-]seed\d+$", "", label)


def plot_main(argv):
    ap = argparse.ArgumentParser(description="Draw PNG figures from runs' metrics.jsonl.")
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    ap.add_argument("--out", default=None, help="output directory (default: the first run's plots/)")
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window in steps")
    ap.add_argument("--bands", action="store_true",
                    help="runs that differ only by seed (.../seedN, *_seedN) become one mean curve with a 95%% band")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for r in args.runs:
        path = Path(r) / "metrics.jsonl" if Path(r).is_dir() else Path(r)
        if not path.is_file():
            sys.exit(f"plot: no metrics file at {path}")
        runs[run_label(path)] = read_metrics(path)
    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    def line(ax, records, key, label, smooth=True, **kw):
        x, y = curve(records, key, args.smooth if smooth else 1)
        if len(x):
            ax.plot(x, y, label=label, **kw)

    # the figures that compare runs: with --bands, one line per group of seeds (see draw_band)
    groups = {}
    for name, recs in runs.items():
        groups.setdefault(seed_group(name) if args.bands else name, []).append(recs)

    def group_line(ax, key, suffix="", smooth=True, **kw):
        for name, members in groups.items():
            draw_band(ax, members, key, f"{name}{suffix}", args.smooth if smooth else 1, **kw)

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
    group_line(ax, "reward_mean", " reward")
    for k in keys("val/"):  # a benchmark named by its path (val/runs/arith/level1.jsonl) is shown by its file name
        group_line(ax, k, f" val/{Path(k).stem}" if k.endswith(".jsonl") else f" {k}", smooth=False, marker="o",
                   ls="--")
    ax.set(xlabel="step", ylabel="reward / accuracy", title="reward and validation accuracy")
    ax.legend(fontsize=7)
    save(fig, "reward.png")

    # per-difficulty weights (DARO Figure 1), loss per difficulty (Figure 2), pass rate and prompts per data
    # level (MATH level 1-5; the synthetic task's operand count). Buckets: k of G samples correct, mu = k/G.
    for prefix, fname, title, label in [
            ("daro_w/", "weights_per_difficulty.png", "DARO weight w_mu over training", "k={}"),
            ("bucket_scale/", "loss_per_difficulty.png", "loss scale per bucket, sum W |surrogate|", "k={}"),
            ("score_by_level/", "pass_rate_per_level.png", "pass rate per level", "level {}"),
            ("groups_by_level/", "groups_per_level.png", "prompts per level (data.level_sampling)", "level {}")]:
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
    group_line(ax, "len_correct", " correct")
    group_line(ax, "len_incorrect", " incorrect", ls="--")
    ax.set(xlabel="step", ylabel="tokens", title="response length: correct vs incorrect")
    ax.legend(fontsize=7)
    save(fig, "lengths.png")

    # entropy, length and reward (Figure 4), and the share of responses cut at rollout.max_tokens
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, key in zip(axes, ["entropy", "len_mean", "truncated_frac", "reward_mean"]):
        group_line(ax, key)
        ax.set(xlabel="step", title=key)
        if ax.lines:
            ax.legend(fontsize=7)
    save(fig, "dynamics.png")
    for p in written:
        print(f"wrote {p}")
    return written


def curve(records, key, smooth=1):
    """(steps, values) of one metric, as a trailing moving average of `smooth` logged values."""
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = map(np.asarray, zip(*pts))
    w = min(smooth, len(y))
    if w > 1:
        y = np.convolve(y, np.ones(w) / w, mode="valid")
        x = x[w - 1:]
    return x, y


def line_style(i):
    """The i-th curve's color and dash: matplotlib's 10 colors, then the same colors dashed, then dotted, so
    that a figure of up to 30 schemes names each one line."""
    return {"color": f"C{i % 10}", "ls": ("-", "--", ":")[i // 10 % 3]}


def draw_band(ax, members, key, label, smooth=1, **kw):
    """One run: its curve. Several (seeds): the mean curve and a shaded 95% t-interval over them, at
    the steps every seed logged. Returns the line drawn, or None."""
    curves = [c for c in (curve(recs, key, smooth) for recs in members) if len(c[0])]
    if not curves:
        return None
    if len(curves) == 1:
        return ax.plot(*curves[0], label=label, **kw)[0]
    steps = sorted(set.intersection(*(set(x.tolist()) for x, _ in curves)))
    at = [dict(zip(x.tolist(), y.tolist())) for x, y in curves]
    stats = [mean_ci([a[s] for a in at]) for s in steps]
    mean, half = np.array([m for m, _ in stats]), np.array([h for _, h in stats])
    (ln,) = ax.plot(steps, mean, label=f"{label} (n={len(curves)})", **kw)
    ax.fill_between(steps, mean - half, mean + half, color=ln.get_color(), alpha=0.2, lw=0)
    return ln


if __name__ == "__main__":
    plot_main(sys.argv[1:])
