"""Schemes x seeds on one task, one run after another, and a verdict with error bars.

    python -m scripts.sweep configs/experiments/boxed.yaml --out runs/sweep_boxed --seeds 0 1 2 \\
        --scheme grpo --scheme drgrpo --scheme lipo --scheme daro \\
        --scheme dapo scheme.name=dapo loss.eps_high=0.28 reward.overlong_buffer=16 \\
        --scheme grpo_hadw scheme.hadw.enabled=true

A scheme is a label and train.py overrides (`key.sub=value`, or a yaml path that replaces the base
config); a label alone that names a weights.py scheme means `scheme.name=<label>`. Each run is
`python train.py --config BASE <scheme overrides> <--set overrides> seed=S out_dir=OUT/<label>/seedS`
in a subprocess (nothing imports train.py), with one progress line per run. Resumable: a run whose
`done.json` exists is not redone, and a killed run continues from its last checkpoint (--resume).

Writes OUT/table.md and OUT/table.json: per scheme, the mean and 95% t-interval over seeds of the
final train reward (shaping included) and train accuracy (the verifier's verdicts), validation accuracy
(the mean over the benchmarks, and each benchmark: a level of a leveled task), steps to a train-accuracy
threshold, and the final mean length of correct and incorrect responses; and OUT/figures/*.png, one per
metric with a band per scheme. Each scheme is also compared with the first (the baseline) seed by seed,
and with any other named by --pair (an HA-DW variant with its base scheme): the mean difference and its 95%
interval over seeds, the minimum detectable difference at these seeds (power 0.8), the paired t-test's p and
the exact sign-flip permutation p (scripts/stats.py), and Holm's correction over ONE family: every comparison x
the metrics named by --family (those the claims drawn from the table choose among; default every compared
metric). Then every run's value of every column, and, with --base-eval, the start model's accuracies with
Wilson intervals. --publish writes the table, the figures and one archive of the runs' records
(scripts/results.py regenerates the table from it).

With --heldout N, eval.py also scores each finished run's last checkpoint on the config's eval.benchmarks,
greedy, every problem (N = 0) or the first N of each, into OUT/<label>/seedS/heldout/: the held-out
accuracy columns. The in-run evaluation (eval.limit problems, the curve) is too coarse to tell schemes
apart (20 problems: one is 0.05); a comparison reads the held-out columns. Runs whose checkpoints are gone
(restored from a publication) have none and are left out of those columns.
"""
import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import yaml

from scripts import common
from scripts.plot import read_metrics
from scripts.stats import fmt_p, holm, mean_ci, paired_test, wilson

ROOT = Path(__file__).resolve().parents[1]
METRICS = [  # (key in a run's summary, column title, decimals); per-benchmark val_<name> columns are added
    ("final_reward", "final train reward", 3),
    ("final_accuracy", "final train accuracy", 3),
    ("val_acc", "val accuracy", 3),
    ("steps_to_threshold", "steps to accuracy {thr}", 0),
    ("len_correct", "len correct", 1),
    ("len_incorrect", "len incorrect", 1),
]
COMPARED = ("final_accuracy", "val_acc")  # compared with the baseline seed by seed (with every val_<name>)


def metric_columns(summaries):
    """METRICS, one in-run validation column per benchmark (val_<file stem>) and, where runs have them, the
    held-out evaluation's mean and per-benchmark columns (heldout_acc, heldout_<file stem>)."""
    keys = {k for per_seed in summaries.values() for s in per_seed for k in s}
    val = sorted(k for k in keys if k.startswith("val_") and k != "val_acc")
    heldout = sorted(k for k in keys if k.startswith("heldout_") and k != "heldout_acc")
    columns = METRICS + [(k, "val " + k[4:], 3) for k in val]
    if heldout:
        columns += [("heldout_acc", "held-out accuracy", 3)] + [(k, "held-out " + k[8:], 3) for k in heldout]
    return columns


def parse_schemes(specs):
    """[[label, override, ...], ...] -> {label: [overrides]} (a bare known scheme name gets scheme.name)."""
    schemes = {}
    for spec in specs:
        label, overrides = spec[0], list(spec[1:])
        if "=" in label or "/" in label:
            raise SystemExit(f"sweep: a scheme starts with a label (a plain name), got {label!r}")
        if label in schemes:
            raise SystemExit(f"sweep: scheme label {label!r} given twice")
        if not overrides:
            from weights import SCHEMES  # imports torch: after OMP_NUM_THREADS is set
            if label not in SCHEMES:
                raise SystemExit(f"sweep: scheme {label!r} has no overrides and is not one of {tuple(SCHEMES)}")
            overrides = [f"scheme.name={label}"]
        for o in overrides:
            if "=" not in o and not o.endswith((".yaml", ".yml")):
                raise SystemExit(f"sweep: {label}: {o!r} is neither key.sub=value nor a yaml file")
        schemes[label] = overrides
    return schemes


def split_overrides(base_config, overrides):
    """(config path, key=value overrides): a yaml path among the overrides replaces the base config."""
    config = base_config
    for o in overrides:
        if o.endswith((".yaml", ".yml")) and "=" not in o:
            config = o
    return config, [o for o in overrides if "=" in o]


def run_command(base_config, overrides, seed, out_dir, resume):
    config, rest = split_overrides(base_config, overrides)
    return [sys.executable, str(ROOT / "train.py"), "--config", config, *rest, f"seed={seed}",
            f"out_dir={out_dir}"] + (["--resume"] if resume else [])


def heldout_command(base_config, overrides, run_dir, limit):
    """eval.py on a finished run's last checkpoint: the run's eval.benchmarks, greedy (n = 1, T = 0), every
    problem (limit 0) or the first `limit` of each, with the run's engine, template, instruction, dtype,
    max new tokens and reward, into run_dir/heldout. None when the run kept no checkpoint."""
    from config import load_config  # imports torch: after OMP_NUM_THREADS is set
    from distributed import latest_checkpoint
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / "model").is_dir():
        return None
    cfg = load_config(*split_overrides(base_config, overrides))
    return common.eval_command((ckpt / "model").resolve(), cfg.eval.benchmarks, (run_dir / "heldout").resolve(),
                               data_dir=cfg.eval.data_dir, n=1, temperature=0,
                               max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens, engine=cfg.rollout.engine,
                               template=cfg.rollout.template, instruction=cfg.rollout.instruction,
                               dtype=cfg.sampler_dtype, reward=cfg.reward.kind, limit=limit)


def heldout_summary(run_dir):
    """{heldout_acc: the mean over benchmarks, heldout_<stem>: each one's greedy accuracy, n_problems: {heldout_<stem>:
    problems asked}} from eval.py's results.json in run_dir/heldout ({} when the run has none)."""
    path = run_dir / "heldout" / "results.json"
    if not path.is_file():
        return {}
    benches = {Path(name).stem: b for name, b in json.loads(path.read_text())["benchmarks"].items()}
    acc = {k: b["avg@n"] for k, b in benches.items()}
    return {"heldout_acc": sum(acc.values()) / len(acc), **{f"heldout_{k}": v for k, v in sorted(acc.items())},
            "n_problems": {f"heldout_{k}": b["num_problems"] for k, b in sorted(benches.items())}}


def train_accuracy(record):
    """A step's train accuracy: the verdicts over every response it sampled (gen/accuracy). score_mean, read
    when that is missing, averages the trained groups only, which dynamic sampling limits to k in 1..G-1."""
    return record.get("gen/accuracy", record.get("score_mean"))


def summarize_run(records, threshold, window):
    """The table's numbers for one run. Final values are means over the last `window` logged steps;
    validation accuracy is the last evaluation: val_acc the mean over its benchmarks, val_<stem> each one;
    steps to threshold is the first step where the trailing `window`-step mean train accuracy (the
    verdicts, not the shaped reward: train_accuracy) reaches `threshold` (None when it never does)."""
    train = [r for r in records if "reward_mean" in r]
    tail = train[-window:]
    accuracy = [train_accuracy(r) for r in train]

    def mean_over(records, key):
        xs = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        return sum(xs) / len(xs) if xs else None

    def tail_mean(key):
        return mean_over(tail, key)

    val = {}
    for r in records:
        if any(k.startswith("val/") for k in r):
            val = {Path(k[4:]).stem: v for k, v in r.items() if k.startswith("val/")}
    reached = None
    for i in range(window - 1, len(train)):
        if sum(accuracy[i - window + 1:i + 1]) / window >= threshold:
            reached = train[i]["step"]
            break
    def run_mean(key):
        return mean_over(train, key)

    acting = {  # did the weightings have room to act: whole-run means over the logged steps
        "clip_frac": sum(run_mean(k) or 0.0 for k in ("clip_low", "clip_high")),  # share of tokens clipped
        "truncated_frac": run_mean("truncated_frac"),
        "signal_frac": None if run_mean("zero_var_frac") is None else 1 - run_mean("zero_var_frac"),
        "k_frac": {int(k.split("/")[1]): run_mean(k) for k in sorted({k for r in train for k in r
                                                                      if k.startswith("mu_frac/")})}}
    return {"steps": train[-1]["step"] if train else 0, "final_reward": tail_mean("reward_mean"),
            "final_accuracy": sum(accuracy[-window:]) / len(accuracy[-window:]) if accuracy else None,
            "val_acc": sum(val.values()) / len(val) if val else None,
            **{f"val_{name}": v for name, v in sorted(val.items())},
            "steps_to_threshold": reached, "len_correct": tail_mean("len_correct"),
            "len_incorrect": tail_mean("len_incorrect"), "acting": acting}


def aggregate(per_seed, columns):
    """{metric: {mean, ci95, n, values}} over the seeds of one scheme; steps_to_threshold averages the
    seeds that reached it and says how many did."""
    out = {}
    for key, _, _ in columns:
        values = [s.get(key) for s in per_seed]
        m, h = mean_ci(values)
        out[key] = {"mean": m, "ci95": h, "n": sum(v is not None for v in values), "values": values}
    return out


def compared_keys(summaries):
    """The metrics compared seed by seed: COMPARED, then every in-run and held-out benchmark column."""
    return list(COMPARED) + [k for k, _, _ in metric_columns(summaries)[len(METRICS):]]


def paired_differences(summaries, seeds_of, pairs, family=None):
    """Per pair (label, reference) and metric, the paired comparison over the seeds both ran (stats.paired_test:
    mean, 95% t-interval, MDD, the t-test's and the exact sign-flip p), and Holm's adjustment ("p_holm") over
    ONE family: every pair x every metric in `family` (default: every compared metric), the tests the claims
    drawn from the table choose among. A metric outside the family gets no p_holm (nan): no claim rests on it.
    Runs of one seed share training prompts and sampling seeds, so the paired difference has less noise than
    the difference of two means. Keyed "label - reference": a pair given twice is one comparison."""
    keys = compared_keys(summaries)
    family = keys if family is None else list(family)
    unknown = [k for k in family if k not in keys]
    if unknown:
        raise SystemExit(f"sweep: --family {' '.join(unknown)}: not a compared metric ({' '.join(keys)})")
    out = {}
    for label, reference in pairs:
        ref = dict(zip(seeds_of[reference], summaries[reference]))
        out[f"{label} - {reference}"] = d = {}
        for key in keys:
            diffs = [s[key] - ref[seed][key] for seed, s in zip(seeds_of[label], summaries[label])
                     if seed in ref and s.get(key) is not None and ref[seed].get(key) is not None]
            d[key] = {**paired_test(diffs), "p_holm": math.nan}
    for (name, key), p in holm({(name, key): d[key]["p"] for name, d in out.items() for key in family}).items():
        out[name][key]["p_holm"] = p
    return out


def format_paired(paired, family=None):
    keys = list(next(iter(paired.values())))
    family = keys if family is None else list(family)
    tests = sum(d[k]["p"] == d[k]["p"] for d in paired.values() for k in family)
    lines = ["| comparison (paired by seed) | " + " | ".join(k.replace("_", " ") + (" (family)" if k in family
                                                                                     else "") for k in keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    for name, d in paired.items():
        cells = []
        for k in keys:
            a = d[k]
            if not a["n"]:
                cells.append("-")
                continue
            holm_text = f"; Holm {fmt_p(a['p_holm'])}" if k in family else ""
            cells.append(f"{a['mean']:+.3f} ± {a['ci95']:.3f} (n={a['n']}; MDD {a['mdd']:.3f}; t-test p "
                         f"{fmt_p(a['p_t'])}, sign-flip p {fmt_p(a['p_exact'])}{holm_text})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "\nmean difference ± half-width of its 95% t-interval over the seeds both ran (seeds are the unit); MDD: "
        "the smallest difference these seeds detect with power 0.8 at two-sided alpha 0.05; t-test p: the paired "
        "t-test (n/a where the differences have no spread); sign-flip p: the exact permutation test over the "
        "seeds' signs (distribution-free; at n seeds it is at least 2 / 2^n, 0.062 at 5). Holm: one family of "
        f"{tests} tests, the {len(paired)} comparisons x the {len(family)} metrics marked (family), adjusting the "
        "t-test's p (the sign-flip p where the t-test's is n/a); a difference separates where Holm < 0.05. "
        "Columns outside the family give unadjusted p-values: no claim rests on them.")
    return "\n".join(lines)


def format_per_seed(summaries, seeds_of, columns, threshold):
    """Every run's value of every column, scheme by scheme, seeds in the order of the seeds column."""
    head = ["scheme", "seeds"] + [title.format(thr=threshold) for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, per_seed in summaries.items():
        cells = [" ".join(fmt(s.get(key), decimals) for s in per_seed) for key, _, decimals in columns]
        lines.append("| " + " | ".join([label, " ".join(map(str, seeds_of[label]))] + cells) + " |")
    lines.append("\neach run's value, in the order of its scheme's seeds (-: the run has none).")
    return "\n".join(lines)


def format_per_problem(summaries, columns):
    """The second line of every held-out accuracy: per scheme, the mean over its seeds with Wilson's 95% interval
    with problems as the unit (a problem scores its mean over the seeds, so the interval is conservative): the
    evaluation's noise (which problems were asked), where the table's t-interval over seeds is training's."""
    keys = [(k, title) for k, title, _ in columns if k.startswith("heldout_") and k != "heldout_acc"]
    if not keys:
        return ""
    lines = ["| scheme | " + " | ".join(title for _, title in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for label, per_seed in summaries.items():
        cells = []
        for key, _ in keys:
            runs = [s for s in per_seed if s.get(key) is not None]
            if not runs:
                cells.append("-")
                continue
            m, problems = sum(s[key] for s in runs) / len(runs), min(s["n_problems"][key] for s in runs)
            lo, hi = wilson(m * problems, problems)
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}] ({len(runs)} seeds x {problems} problems)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("\nheld-out accuracy, mean over the seeds [Wilson 95% interval, problems as the unit]: how much "
                 "the problems asked move it; the t-intervals above, seeds as the unit, add training's variation.")
    return "\n".join(lines)


def format_base_eval(results):
    """The start model's accuracy on each benchmark of an eval.py results.json, with Wilson's 95% interval
    (problems as the unit: an avg@n problem counts its mean score) and the mean over benchmarks."""
    benches = results["benchmarks"]
    lines = ["| start model | " + " | ".join(Path(b).stem for b in benches) + " | mean |",
             "|" + "---|" * (len(benches) + 2)]
    cells = []
    for b in benches.values():
        lo, hi = wilson(b["avg@n"] * b["num_problems"], b["num_problems"])
        cells.append(f"{b['avg@n']:.3f} [{lo:.3f}, {hi:.3f}] ({b['num_problems']} problems)")
    mean = sum(b["avg@n"] for b in benches.values()) / len(benches)
    s = results.get("settings", {})
    n = next(iter(s["n"].values())) if isinstance(s.get("n"), dict) else s.get("n", "?")  # eval.py: per benchmark
    lines.append(f"| {s.get('model', '?')} (n {n}, T {s.get('temperature', '?')}) | "
                 + " | ".join(cells) + f" | {mean:.3f} |")
    lines.append("\naccuracy [Wilson 95% interval] over the problems each benchmark asked (--base-eval).")
    return "\n".join(lines)


def format_acting(summaries):
    """Whether the weightings could act in these runs, per scheme (means over its seeds and steps): the
    share of tokens clipped (0 on-policy), of responses truncated, of groups with a signal (0 < k < G), and
    how the groups spread over k (the schemes differ most at the ends, k = 1 and k = G - 1)."""
    lines = ["| scheme | clipped tokens | truncated responses | groups with signal | groups at k = 0, 1, ..., G |",
             "|---|---|---|---|---|"]
    for label, per_seed in summaries.items():
        runs = [s["acting"] for s in per_seed]
        ks = sorted({k for r in runs for k in r["k_frac"]})
        avg = {key: mean_ci([r[key] for r in runs])[0] for key in ("clip_frac", "truncated_frac", "signal_frac")}
        spread = " ".join(f"{mean_ci([r['k_frac'].get(k) for r in runs])[0]:.2f}" for k in ks)
        lines.append(f"| {label} | {avg['clip_frac']:.4f} | {avg['truncated_frac']:.3f} | "
                     f"{avg['signal_frac']:.2f} | {spread} |")
    lines.append("\nmeans over the seeds and every step of each run (clipped: clip_low + clip_high, per token).")
    return "\n".join(lines)


def format_table(table, columns, threshold, n_seeds):
    def cell(a, decimals, key):
        if a["n"] == 0:
            return "-"
        text = f"{a['mean']:.{decimals}f}" + ("" if a["ci95"] != a["ci95"] else f" ± {a['ci95']:.{decimals}f}")
        if key == "steps_to_threshold":
            text += f" ({a['n']}/{len(a['values'])} reached)"
        return text

    head = ["scheme", "seeds"] + [title.format(thr=threshold) for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, agg in table.items():
        n = len(agg["final_reward"]["values"])
        lines.append("| " + " | ".join([label, str(n)] + [cell(agg[k], d, k) for k, _, d in columns]) + " |")
    lines.append(f"\nmean ± half-width of the 95% t-interval over the seeds run ({n_seeds} asked; t_0.975 with n-1 "
                 "degrees of freedom); final values: mean over the last --window steps; val accuracy: last evaluation.")
    return "\n".join(lines)


def draw_figures(runs, out_dir, threshold, smooth):
    """One figure per metric: a mean curve and a 95% band over seeds per scheme; and the table's numbers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.plot import draw_band, line_style
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    val_keys = sorted({k for members in runs.values() for recs in members for r in recs for k in r
                       if k.startswith("val/")})
    for key, title, sm in [("reward_mean", "train reward", smooth),
                           ("train_accuracy", "train accuracy (verdicts)", smooth),
                           *[(k, k, 1) for k in val_keys],
                           ("len_correct", "mean length of correct responses (tokens)", smooth),
                           ("len_incorrect", "mean length of incorrect responses (tokens)", smooth),
                           ("truncated_frac", "share of responses truncated", smooth)]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, (label, members) in enumerate(runs.items()):
            draw_band(ax, members, key, label, sm, marker="o" if key.startswith("val/") else None, **line_style(i))
        if not ax.lines:
            plt.close(fig)
            continue
        if key == "train_accuracy" or key.startswith("val/") or key == "truncated_frac":
            ax.set_ylim(-0.02, 1.02)  # shares: a wide band of few seeds is cut at what a share can be
        if key == "train_accuracy":
            ax.axhline(threshold, color="gray", ls=":", lw=1, label=f"threshold {threshold}")
        ax.set(xlabel="step", title=f"{title}\nmean and 95% band over seeds", ylabel=key)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / (("val_" + Path(key[4:]).stem if key.startswith("val/") else key) + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def draw_summary(table, columns, path, threshold):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.6))
    labels = list(table)
    for ax, (key, title, _) in zip(axes, columns):
        for i, label in enumerate(labels):
            a = table[label][key]
            ax.errorbar([i], [a["mean"]], yerr=[0 if a["ci95"] != a["ci95"] else a["ci95"]], fmt="o", capsize=4)
            ax.plot([i] * len(a["values"]), [v if v is not None else float("nan") for v in a["values"]], ".",
                    color="gray", alpha=0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(title.format(thr=threshold), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="base train.py config (yaml)")
    ap.add_argument("--scheme", nargs="+", action="append", required=True, metavar="LABEL [OVERRIDE ...]",
                    help="a label and its train.py overrides; repeat for each scheme")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every run (e.g. steps=50)")
    ap.add_argument("--out", default="runs/sweep")
    ap.add_argument("--threshold", type=float, default=0.5, help="train accuracy (verdicts) for the steps-to-threshold column")
    ap.add_argument("--window", type=int, default=10, help="steps averaged for final values and the threshold")
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window of the figures' curves")
    ap.add_argument("--heldout", type=int, metavar="N", help="eval.py on each run's last checkpoint, greedy, the "
                    "first N problems of each eval benchmark (0: all): the held-out columns")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("LABEL", "REFERENCE"),
                    help="also compare LABEL with REFERENCE seed by seed (e.g. an HA-DW variant with its base "
                         "scheme); every scheme is compared with the first, and Holm adjusts across all of them")
    ap.add_argument("--family", nargs="+", metavar="METRIC", help="the metrics whose comparisons form ONE Holm "
                    "family with every pair (the ones the claims drawn from the table choose among, e.g. heldout_acc "
                    "heldout_level2 val_acc final_accuracy); default: every compared metric")
    ap.add_argument("--base-eval", metavar="RESULTS_JSON", help="eval.py's results.json of the start model on the "
                    "held-out problems: a row of its accuracies with Wilson intervals (published with the runs)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table and figures")
    ap.add_argument("--publish", metavar="DIR", help="write the results to commit into DIR: table.md, table.json, "
                    "the figures, and records.tar.xz: every finished run's metrics.jsonl, done.json and held-out "
                    "results.json and per-problem records.jsonl (no checkpoints); python -m scripts.results "
                    "regenerates the table from it")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (OMP_NUM_THREADS, unless already set): small matmuls on a busy "
                         "machine run faster on 1 thread, since contended threads spin")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch is imported here or in a run
    schemes = parse_schemes(args.scheme)
    for label in {label for pair in args.pair for label in pair} - set(schemes):
        sys.exit(f"--pair: {label!r} is not a --scheme label ({', '.join(schemes)})")
    for label, ref in args.pair:
        if label == ref:
            sys.exit(f"--pair: {label!r} compared with itself")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:  # a report reads the runs only: their config may have moved since
        prepare(args.config, args.set)

    n_runs, i, t_sweep = len(schemes) * len(args.seeds), 0, time.time()
    summaries, curves, seeds_of = {}, {}, {}
    # seed-major order: a sweep stopped early still has every scheme, with fewer seeds
    for seed, (label, overrides) in [(seed, item) for seed in args.seeds for item in schemes.items()]:
        i += 1
        run_dir = out / label / f"seed{seed}"
        done = run_dir / "done.json"
        prefix = f"[{i}/{n_runs}] {label} seed {seed}:"
        if not done.is_file() and not args.report_only:
            resume = (run_dir / "checkpoints" / "latest").is_file()
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"{prefix} {'resuming' if resume else 'running'} ...", flush=True)
            t0 = time.time()
            cmd = run_command(args.config, [*overrides, *args.set], seed, run_dir, resume)
            rc = common.run(cmd, run_dir / "train.log")[0]
            if rc != 0:
                sys.exit(f"{prefix} train.py failed (exit {rc}); see {run_dir / 'train.log'}")
            done.write_text(json.dumps({"command": cmd, "seconds": round(time.time() - t0, 1),
                                        "finished": common.provenance()}) + "\n")
            status = f"done in {time.time() - t0:.0f} s"
        elif done.is_file():
            status = "done before, skipped"
        else:
            print(f"{prefix} not run yet, left out of the table", flush=True)
            continue
        if args.heldout is not None and not args.report_only and not (run_dir / "heldout" / "results.json").is_file():
            cmd = heldout_command(args.config, [*overrides, *args.set], run_dir, args.heldout)
            if cmd is None:
                print(f"{prefix} no checkpoint left, no held-out evaluation", flush=True)
            elif common.run(cmd, run_dir / "heldout.log")[0] != 0:
                sys.exit(f"{prefix} eval.py failed; see {run_dir / 'heldout.log'}")
        records = [{**r, "train_accuracy": train_accuracy(r)} if "reward_mean" in r else r  # the figure's key
                   for r in read_metrics(run_dir / "metrics.jsonl")]
        s = {**summarize_run(records, args.threshold, args.window), **heldout_summary(run_dir)}
        summaries.setdefault(label, []).append(s)
        seeds_of.setdefault(label, []).append(seed)
        curves.setdefault(label, []).append(records)
        print(f"{prefix} {status}; accuracy {fmt(s['final_accuracy'])}, val {fmt(s['val_acc'])}, "
              f"len ok/bad {fmt(s['len_correct'], 1)}/{fmt(s['len_incorrect'], 1)} "
              f"(sweep {time.time() - t_sweep:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)

    columns = metric_columns(summaries)
    table = {label: aggregate(summaries[label], columns) for label in schemes if label in summaries}
    baseline = next(iter(table), None)
    pairs = [(label, baseline) for label in table if label != baseline]
    pairs += [(label, ref) for label, ref in args.pair if label in table and ref in table]
    paired = paired_differences(summaries, seeds_of, pairs, args.family)
    text = format_table(table, columns, args.threshold, len(args.seeds))
    per_problem = format_per_problem({label: summaries[label] for label in table}, columns)
    if per_problem:
        text += "\n\n" + per_problem
    if args.base_eval:
        text += "\n\n" + format_base_eval(json.loads(Path(args.base_eval).read_text()))
    if paired:
        text += "\n\n" + format_paired(paired, args.family)
    text += "\n\n" + format_per_seed({label: summaries[label] for label in table}, seeds_of, columns, args.threshold)
    text += "\n\n" + format_acting({label: summaries[label] for label in table})
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps({"config": args.config, "schemes": schemes, "seeds": args.seeds,
                                                "set": args.set, "threshold": args.threshold,
                                                "window": args.window, "pairs": pairs,
                                                "family": args.family or compared_keys(summaries),
                                                "base_eval": bool(args.base_eval),
                                                "table": table,
                                                "runs": {label: dict(zip(seeds_of[label], summaries[label]))
                                                         for label in table},
                                                "paired": paired}, indent=1) + "\n")
    figures = draw_figures(curves, out / "figures", args.threshold, args.smooth)
    figures.append(draw_summary(table, columns, out / "figures" / "summary.png", args.threshold))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'table.json'} and {len(figures)} figures in {out / 'figures'}")
    if args.publish:
        command = "python -m scripts.sweep " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        extra = {"base_eval.json": args.base_eval} if args.base_eval else {}
        print(f"published {publish(out, Path(args.publish), command, extra)} files to {args.publish}")
    return table


RUN_FILES = ("metrics.jsonl", "done.json", "heldout/results.json", "heldout/records.jsonl")


def publish(out, dest, command, extra=None):
    """Write what backs a README table into dest (to commit): table.md, table.json, the figures (those
    dest/README.md shows, or all while it has none), and ONE archive, dest/records.tar.xz (scripts/results.py),
    of what every finished run (done.json) recorded: metrics.jsonl (each step), done.json (its command, machine
    and wall time), heldout/results.json and heldout/records.jsonl (eval.py's per-problem verdicts); `extra`
    ({archive name: file}: base_eval.json, the start model's evaluation); and published.json: the sweep's command,
    date, machine and load. Archive members not written again are kept. A run killed mid-way is left out, as
    it is of the table. Returns the number of files written into the archive and beside it."""
    from scripts import results  # results imports this module
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.json"):
        shutil.copyfile(out / name, dest / name)
    figures = results.place_figures({f"figures/{p.name}": p for p in sorted((out / "figures").glob("*.png"))}, dest)
    members = {}
    for done in sorted(out.glob("*/seed*/done.json")):
        for name in RUN_FILES:
            if (done.parent / name).is_file():
                members[str((done.parent / name).relative_to(out))] = (done.parent / name).read_bytes()
    members.update({name: Path(f).read_bytes() for name, f in (extra or {}).items()})
    members["published.json"] = (json.dumps({"command": command, **common.provenance()}, indent=1) + "\n").encode()
    results.update_archive(dest, members)
    return 2 + len(figures) + len(members)


def fmt(x, decimals=3):
    return "-" if x is None else f"{x:.{decimals}f}"


def prepare(config_path, overrides):
    """Build what the runs share before the first one starts: the tiny tasks' models (the boxed task's
    warm start, tiny.warm_start_model, cached by its settings; the synthetic task's, when missing). Reads the base config as train.py
    will (its `inherit:` chain, then the overrides), so a bad key stops the sweep before its first run."""
    from config import ConfigError, load_config  # imports torch: after OMP_NUM_THREADS is set
    try:
        cfg = load_config(config_path, overrides)
    except (ConfigError, yaml.YAMLError) as e:
        raise SystemExit(f"sweep: config error: {e}")
    if cfg.data.train == "boxed":
        import tiny
        print(f"warm start: {tiny.warm_start_model(cfg.model.path)}", flush=True)
    elif cfg.data.train == "synthetic" and not (Path(cfg.model.path) / "config.json").is_file():
        import tiny
        print(f"tiny model: {tiny.build_synthetic(cfg.model.path)}", flush=True)


if __name__ == "__main__":
    main()
