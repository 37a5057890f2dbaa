"""Schemes x seeds on one task, one run after another, and a verdict with error bars.

    python -m scripts.sweep configs/boxed.yaml --out runs/sweep_boxed --seeds 0 1 2 \\
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
interval, the minimum detectable difference at these seeds (power 0.8), and the paired t-test's p-value
with Holm's correction across all the comparisons.

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
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from scripts.plot import T975, mean_ci, provenance, read_metrics

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
    return [sys.executable, str(ROOT / "eval.py"), "--model", str((ckpt / "model").resolve()),
            "--benchmarks", ",".join(cfg.eval.benchmarks), "--data-dir", cfg.eval.data_dir, "--n", "1",
            "--temperature", "0", "--max-tokens", str(cfg.eval.max_tokens or cfg.rollout.max_tokens),
            "--engine", cfg.rollout.engine, "--template", cfg.rollout.template,
            "--instruction", cfg.rollout.instruction, "--dtype", cfg.sampler_dtype,
            "--reward", cfg.reward.kind, "--limit", str(limit), "--out", str((run_dir / "heldout").resolve())]


def heldout_summary(run_dir):
    """{heldout_acc: the mean over benchmarks, heldout_<stem>: each one's greedy accuracy} from eval.py's
    results.json in run_dir/heldout ({} when the run has none)."""
    path = run_dir / "heldout" / "results.json"
    if not path.is_file():
        return {}
    acc = {Path(name).stem: b["avg@n"] for name, b in json.loads(path.read_text())["benchmarks"].items()}
    return {"heldout_acc": sum(acc.values()) / len(acc), **{f"heldout_{k}": v for k, v in sorted(acc.items())}}


def _die_with_parent():
    """Child side of Popen: get SIGKILL when the sweep dies, so a killed sweep leaves no orphan run."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_one(cmd, log_path):
    """Run train.py, its output into log_path; return its exit status."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        try:
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise


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


# One-sided 80% quantiles t_{0.80, df} of Student's t for df = 1..30 (power 0.8); beyond 30 the normal
# quantile 0.842 is within 2% of them.
T80 = [1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
       0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854]


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with integer df >= 1, in closed form (Abramowitz & Stegun 26.7.3-4:
    with theta = atan(|t| / sqrt(df)), P(|T| < |t|) is a finite series in sin and cos theta); float64."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2 / pi) [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)], (df - 1) / 2 terms
        term, series = math.cos(theta), 0.0
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * j) / (2 * j + 1)
        inside = 2 / math.pi * (theta + math.sin(theta) * series)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df / 2 terms
        term, series = 1.0, 0.0
        for j in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * j - 1) / (2 * j)
        inside = math.sin(theta) * series
    return min(1.0, max(0.0, 1.0 - inside))


def paired_test(diffs):
    """The paired comparison of one scheme with another over seeds, from the per-seed differences:
    mean and 95% half-width (mean_ci), the paired t-test's two-sided p-value, and the minimum detectable
    difference at two-sided alpha 0.05 and power 0.8, MDD = (t_{0.975, n-1} + t_{0.80, n-1}) s / sqrt(n),
    s the unbiased std of the differences: the smallest true difference these seeds find 4 times in 5.
    float64; p and MDD are nan below two seeds, and p is 1 (0) when every difference is 0 (equal and not 0)."""
    m, h = mean_ci(diffs)
    n = len(diffs)
    out = {"mean": m, "ci95": h, "n": n, "values": diffs, "p": math.nan, "mdd": math.nan}
    if n >= 2:
        s = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
        t975 = T975[n - 2] if n - 1 <= len(T975) else 1.960
        t80 = T80[n - 2] if n - 1 <= len(T80) else 0.842
        out["mdd"] = (t975 + t80) * s / math.sqrt(n)
        out["p"] = t_two_sided_p(m / (s / math.sqrt(n)), n - 1) if s > 0 else float(m == 0)
    return out


def holm(pvalues):
    """Holm's step-down adjustment of {label: p}: the i-th smallest of m p-values becomes
    max over j <= i of min(1, (m - j + 1) p_(j)); a family-wise error rate of 5% holds where it is < 0.05.
    nan p-values are left out of the family (and stay nan)."""
    ranked = sorted((p, label) for label, p in pvalues.items() if p == p)
    out, running = {label: math.nan for label in pvalues}, 0.0
    for j, (p, label) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - j) * p))
        out[label] = running
    return out


def paired_differences(summaries, seeds_of, pairs):
    """Per pair (label, reference) and metric, the paired comparison over the seeds both ran (paired_test),
    with Holm's adjustment of the p-values across all the pairs ("p_holm", one family per metric). Runs of
    one seed share training prompts and sampling seeds, so the paired difference has less noise than the
    difference of two means. Keyed "label - reference": a pair given twice is one comparison in the family."""
    out = {}
    keys = list(COMPARED) + [k for k, _, _ in metric_columns(summaries)[len(METRICS):]]
    for label, reference in pairs:
        ref = dict(zip(seeds_of[reference], summaries[reference]))
        out[f"{label} - {reference}"] = d = {}
        for key in keys:
            diffs = [s[key] - ref[seed][key] for seed, s in zip(seeds_of[label], summaries[label])
                     if seed in ref and s.get(key) is not None and ref[seed].get(key) is not None]
            d[key] = paired_test(diffs)
    for key in keys:
        for name, p in holm({name: d[key]["p"] for name, d in out.items()}).items():
            out[name][key]["p_holm"] = p
    return out


def format_paired(paired):
    keys = list(next(iter(paired.values())))
    lines = ["| comparison (paired by seed) | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    for name, d in paired.items():
        cells = [f"{d[k]['mean']:+.3f} ± {d[k]['ci95']:.3f} (n={d[k]['n']}; MDD {d[k]['mdd']:.3f}; "
                 f"p {d[k]['p']:.3f}, Holm {d[k]['p_holm']:.3f})" if d[k]["n"] else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("\nmean difference ± half-width of its 95% t-interval over the seeds both ran; MDD: the smallest "
                 "difference these seeds detect with power 0.8 at two-sided alpha 0.05; p: paired t-test, Holm: "
                 "adjusted across the comparisons above (a difference separates where Holm < 0.05).")
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
    ap.add_argument("--report-only", action="store_true", help="only rebuild the table and figures")
    ap.add_argument("--publish", metavar="DIR", help="copy the results to commit into DIR: table.md, table.json, "
                    "the figures and each run's metrics.jsonl and done.json (no checkpoints)")
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
            rc = run_one(cmd, run_dir / "train.log")
            if rc != 0:
                sys.exit(f"{prefix} train.py failed (exit {rc}); see {run_dir / 'train.log'}")
            done.write_text(json.dumps({"command": cmd, "seconds": round(time.time() - t0, 1),
                                        "finished": provenance()}) + "\n")
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
            elif run_one(cmd, run_dir / "heldout.log") != 0:
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
    paired = paired_differences(summaries, seeds_of, pairs)
    text = format_table(table, columns, args.threshold, len(args.seeds))
    if paired:
        text += "\n\n" + format_paired(paired)
    text += "\n\n" + format_acting({label: summaries[label] for label in table})
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps({"config": args.config, "schemes": schemes, "seeds": args.seeds,
                                                "set": args.set, "threshold": args.threshold,
                                                "window": args.window, "table": table,
                                                "runs": {label: dict(zip(seeds_of[label], summaries[label]))
                                                         for label in table},
                                                "paired": paired}, indent=1) + "\n")
    figures = draw_figures(curves, out / "figures", args.threshold, args.smooth)
    figures.append(draw_summary(table, columns, out / "figures" / "summary.png", args.threshold))
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'table.json'} and {len(figures)} figures in {out / 'figures'}")
    if args.publish:
        command = "python -m scripts.sweep " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        print(f"published {publish(out, Path(args.publish), command)} files to {args.publish}")
    return table


def publish(out, dest, command):
    """Copy what backs a README table into dest (to commit): table.md/json, figures/*.png, and per finished
    run (done.json) metrics.jsonl, done.json (its command and wall time) and heldout/results.json; and
    published.json: the sweep's command, the date, the machine and its load. A run killed mid-way is left out,
    as it is of the table."""
    files = [out / "table.md", out / "table.json", *sorted((out / "figures").glob("*.png"))]
    finished = [done.parent for done in sorted(out.glob("*/seed*/done.json"))]
    files += [run / name for run in finished for name in ("metrics.jsonl", "done.json", "heldout/results.json")
              if (run / name).is_file()]
    for f in files:
        target = dest / f.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    (dest / "published.json").write_text(json.dumps({"command": command, **provenance()}, indent=1) + "\n")
    return len(files)


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
