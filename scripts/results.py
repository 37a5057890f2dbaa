"""The results archive: each experiment under docs/ keeps its README.md, its table(s) (table.md, and a sweep's
table.json), the figures its README shows, and ONE archive, records.tar.xz, of everything its runs recorded
(per-step metrics.jsonl of every run, done.json, summary.json, eval.py's results.json and per-problem
records.jsonl where they were kept). The tables and figures are regenerated from the archive alone.

    python -m scripts.results smol_hard               # pack loose data files, rewrite table(s) and figures
    python -m scripts.results smol_hard --check       # regenerate into a temporary folder, fail on a difference
    python -m scripts.results all --check             # every experiment (EXPERIMENTS)
    python -m scripts.results smol_hard --extract runs/smol_hard   # the archived runs back, e.g. to resume a sweep

Packing: every file of the experiment's folder but README.md, table.md, table.json, *.png and the archive
(e.g. a new seed_<S>/ that smol_learn.py wrote) goes into the archive, replacing a member of the same path,
and is removed from the folder; so are the per-problem records.jsonl that a summary's evaluations wrote
under runs/ when they are still there. The archive is deterministic: members sorted by name, mtime 0, owner
0, mode 0644, xz preset 9: the same files give the same bytes.

Regenerating: a sweep (the archive holds published.json) is rebuilt by scripts/sweep.py's own report
(--report-only over the extracted runs, with the command published.json records; --base-eval base_eval.json
when the start model's evaluation is archived); any other experiment gets a table.md built here from its
summary.json files (smol_learn.py's, trl_learn.py's), its runs' metrics.jsonl and loose eval.py results.json.
Figures: every one the drawing code makes is drawn, and those the README shows (its ![..](x.png) links) are kept.
--check
compares the tables as text (PNG bytes are not reproducible), checks that every number the README's tables
quote is in a regenerated table (at the precision the README writes), and that every figure it shows was drawn.
"""
import argparse
import contextlib
import io
import json
import lzma
import math
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from scripts.stats import level_accuracy, macro, mean_ci, normal_quantile, paired_gain, t_quantile, wilson

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {"smol_hard": "docs/results/smol_hard", "smol_compare": "docs/results/smol_compare",
               "smol_controls": "docs/results/smol_controls",
               "smol_learn": "docs/smol_learn", "smol_levels": "docs/smol_levels", "trl_learn": "docs/trl_learn"}
ARCHIVE = "records.tar.xz"
KEPT = ("README.md", "table.md", "table.json", ARCHIVE)  # beside the archive, with the *.png figures


# ---- the archive ----

def read_archive(exp_dir):
    """{member name: bytes} of exp_dir/records.tar.xz ({} when there is none)."""
    path = Path(exp_dir) / ARCHIVE
    if not path.is_file():
        return {}
    with tarfile.open(path, "r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_archive(exp_dir, members):
    """exp_dir/records.tar.xz holding `members` ({name: bytes}), byte for byte the same for the same members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"archive member {name!r} is not a relative path inside the experiment")
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(members[name]), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(members[name]))
    tmp = Path(exp_dir) / (ARCHIVE + ".tmp")
    tmp.write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ, preset=9))
    tmp.replace(Path(exp_dir) / ARCHIVE)


def update_archive(exp_dir, members):
    """Add `members` to exp_dir's archive, replacing members of the same name and keeping the others."""
    write_archive(exp_dir, {**read_archive(exp_dir), **members})


def extract(members, dest):
    for name, data in members.items():
        (Path(dest) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(dest) / name).write_bytes(data)


def loose_files(exp_dir):
    """The data files lying in exp_dir outside the archive (all but KEPT and *.png), sorted."""
    return sorted(p for p in Path(exp_dir).rglob("*")
                  if p.is_file() and p.name not in KEPT and p.suffix != ".png" and not p.name.endswith(".tmp"))


def eval_outputs(summary):
    """The --out folders of the eval.py parts a summary.json lists (relative to the repository root)."""
    outs = []
    for part in summary.get("parts", []):
        words = part.get("command", "").split()
        if "eval.py" in " ".join(words) and "--out" in words[:-1]:
            outs.append(words[words.index("--out") + 1])
    return outs


def pack(exp_dir):
    """Move exp_dir's loose data files into its archive (and, for each loose summary.json, the per-problem
    records.jsonl its evaluations left under runs/, as <seed dir>/<eval>/records.jsonl); returns their names."""
    exp_dir = Path(exp_dir)
    loose = loose_files(exp_dir)
    members = {str(p.relative_to(exp_dir)): p.read_bytes() for p in loose}
    for p in loose:
        if p.name == "summary.json":
            for out in eval_outputs(json.loads(p.read_text())):
                records = ROOT / out / "records.jsonl"
                name = str((p.parent / Path(out).name / "records.jsonl").relative_to(exp_dir))
                if records.is_file() and name not in members:
                    members[name] = records.read_bytes()
    if members:
        update_archive(exp_dir, members)
    for p in loose:
        p.unlink()
    for d in sorted((d for d in exp_dir.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    return sorted(members)


# ---- figures: the README shows them ----

def shown_figures(exp_dir):
    """The PNG paths (relative to exp_dir) that exp_dir/README.md shows, in order; None without a README."""
    readme = Path(exp_dir) / "README.md"
    if not readme.is_file():
        return None
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", readme.read_text())
    return list(dict.fromkeys(str(Path(link)) for link in links))


def place_figures(drawn, exp_dir):
    """Copy the drawn figures ({path relative to exp_dir: PNG file}) that exp_dir's README shows (all of them
    while it has no README) into exp_dir, and remove the PNGs there it does not show. Returns the paths kept."""
    exp_dir = Path(exp_dir)
    shown = shown_figures(exp_dir)
    keep = list(drawn) if shown is None else [rel for rel in shown if rel in drawn]
    for rel in keep:
        (exp_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn[rel], exp_dir / rel)
    if shown is not None:
        for png in exp_dir.rglob("*.png"):
            if str(png.relative_to(exp_dir)) not in keep:
                png.unlink()
    return keep


# ---- sweeps: sweep.py's own report ----

def sweep_argv(command):
    """The arguments after the sweep script in a published command ('python -m scripts.sweep ...' or
    'python sweep.py ...'), without --out, --publish and --report-only."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith(("sweep.py", "scripts.sweep"))) + 1
    argv, i = [], start
    while i < len(words):
        if words[i] in ("--out", "--publish", "--base-eval"):
            i += 2
            continue
        if words[i] != "--report-only":
            argv.append(words[i])
        i += 1
    return argv


def regenerate_sweep(members, work, out):
    """table.md, table.json and figures/*.png in `out`, from the runs in `members` extracted into `work`."""
    from scripts import sweep
    extract(members, work)
    argv = sweep_argv(json.loads(members["published.json"])["command"])
    argv += ["--out", str(work), "--report-only"]
    if "base_eval.json" in members:  # the start model's evaluation, published with the runs
        argv += ["--base-eval", str(work / "base_eval.json")]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines and the table it prints
        sweep.main(argv)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("table.md", "table.json"):
        shutil.copyfile(work / name, out / name)
    return {f"figures/{p.name}": p for p in sorted((work / "figures").glob("*.png"))}


# ---- everything else: table.md from the summaries, metrics and evaluations ----

Z = normal_quantile(0.975)


def pct(x, decimals=1):
    return "-" if x is None or x != x else f"{100 * x:.{decimals}f}"


def wilson_text(acc, problems):
    """'16.7 [9.4, 27.8]': an accuracy in % and its Wilson 95% interval over problems."""
    lo, hi = wilson(acc * problems, problems)
    return f"{pct(acc)} [{pct(lo)}, {pct(hi)}]"


def pm(mean, half, decimals=1, sign=False, scale=100.0):
    """'+28.0 ± 3.6' (values scaled, e.g. to %); '± n/a' for one value; values that do not vary (every problem,
    or every seed, alike) have no interval to show, which is said rather than printed as '± 0.0'."""
    text = f"{scale * mean:+.{decimals}f}" if sign else f"{scale * mean:.{decimals}f}"
    if half != half:
        return text + " ± n/a"
    return text + (f" ± {scale * half:.{decimals}f}" if half > 0 else " (no spread: no interval)")


def read_jsonl(data):
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def train_records(records):
    return [r for r in records if "reward_mean" in r]


def windows(n_steps):
    """The step windows a run's table uses: 1-10, then blocks ending at multiples of b (10, 20, 30 or 40 for
    runs of at most 20, 60, 150 steps or more) and at the last step."""
    b = 10 if n_steps <= 20 else 20 if n_steps <= 60 else 30 if n_steps <= 150 else 40
    edges = [min(10, n_steps)] + list(range(b, n_steps, b))
    edges = sorted(set(e for e in edges if e >= 10 or e == n_steps) | {n_steps})
    return [(1 if i == 0 else edges[i - 1] + 1, e) for i, e in enumerate(edges)]


def level_rate(records, level):
    """A level's pass rate over some steps: the verdicts over all its groups (score_by_level weighted by
    groups_by_level), '-' where it was not drawn."""
    n = sum(r.get(f"groups_by_level/{level}", 0) for r in records)
    ok = sum(r.get(f"score_by_level/{level}", 0.0) * r.get(f"groups_by_level/{level}", 0) for r in records)
    return f"{ok / n:.2f}" if n else "-"


def mean_of(records, key, decimals):
    xs = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return f"{sum(xs) / len(xs):.{decimals}f}" if xs else "-"


ENTROPY_HEADS = ("entropy, sampled", "entropy, trained")


def entropies(records):
    """The step window's mean entropy (nats per token) over every sampled response (gen/entropy) and over the
    trained responses only (entropy): the policy's spread, then what the update saw. A step without the value
    (nothing sampled with log-probs, nothing trained) is left out of the mean, not counted as 0."""
    return mean_of(records, "gen/entropy", 2), mean_of(records, "entropy", 2)


def window_table(records):
    """Per step window of one run: the pass rate of each level (verdicts over the window's groups of that level:
    score_by_level weighted by groups_by_level), the share of groups with no signal (zero_var_frac), entropy
    in nats per token over every sampled response (gen/entropy; "-" for runs that predate it) and over the trained
    ones (entropy), mean response length, prompts a step per level, train accuracy and s / step."""
    train = train_records(records)
    if not train:
        return "(no training steps logged)"
    levels = sorted({k.split("/")[1] for r in train for k in r if k.startswith("groups_by_level/")}, key=str)
    head = (["steps"] + [f"level {lv}" for lv in levels] + ["train accuracy", "groups with no signal",
                                                          *ENTROPY_HEADS, "response length"]
            + (["prompts a step, levels " + " / ".join(levels)] if levels else []) + ["s / step"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, b in windows(train[-1]["step"]):
        rs = [r for r in train if a <= r["step"] <= b]
        if not rs:
            continue
        acc = [r.get("gen/accuracy", r.get("score_mean")) for r in rs]
        cells = [f"{a}-{b}", *(level_rate(rs, lv) for lv in levels), f"{sum(acc) / len(acc):.2f}",
                 mean_of(rs, "zero_var_frac", 2), *entropies(rs), mean_of(rs, "len_mean", 0)]
        if levels:
            cells.append(" / ".join(f"{sum(r.get(f'groups_by_level/{lv}', 0) for r in rs) / len(rs):.1f}"
                                    for lv in levels))
        cells.append(mean_of(rs, "time/step", 1))
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(r.get("time/step", 0.0) for r in train)
    last_val = next((r for r in reversed(records) if any(k.startswith("val/") for k in r)), None)
    lines.append(f"\n{len(train)} steps, {total:.0f} s of step time (sum of time/step)" + (
        f"; in-run greedy evaluation at step {last_val['step']}: " + ", ".join(
            f"{Path(k).stem} {pct(v)}" for k, v in last_val.items() if k.startswith("val/")) if last_val else ""))
    return "\n".join(lines)


def glance_table(runs):
    """One row per run ({archive folder: metrics records}): its last step window's pass rate per level, groups
    with no signal, entropy and response length (as window_table), the in-run greedy evaluation at its last
    evaluation, and its step time in all."""
    levels = sorted({k.split("/")[1] for recs in runs.values() for r in recs for k in r
                     if k.startswith("groups_by_level/")}, key=str)
    head = ["run", "steps", "last window", "pass rate, levels " + " / ".join(levels), "groups with no signal",
            *ENTROPY_HEADS, "response length", "in-run greedy at the last evaluation, each evaluated level (%)",
            "step time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, records in runs.items():
        train = train_records(records)
        if not train:
            continue
        a, b = windows(train[-1]["step"])[-1]
        rs = [r for r in train if a <= r["step"] <= b]
        rates = [level_rate(rs, lv) for lv in levels]
        means = [mean_of(rs, "zero_var_frac", 2), *entropies(rs), mean_of(rs, "len_mean", 1)]
        last_val = next((r for r in reversed(records) if any(k.startswith("val/") for k in r)), None)
        val = " / ".join(pct(v) for k, v in sorted(last_val.items()) if k.startswith("val/")) \
            + f" (step {last_val['step']})" if last_val else "-"
        lines.append("| " + " | ".join([run, str(train[-1]["step"]), f"{a}-{b}", " / ".join(rates), *means, val,
                                        f"{sum(r.get('time/step', 0.0) for r in train):.0f}"]) + " |")
    return "\n".join(lines)


def part_name(command):
    """A summary part's short name: an evaluation by its --out folder (eval_before), else by its script."""
    words = command.split()
    if any(w.endswith("eval.py") for w in words[:3]) and "--out" in words[:-1]:
        return Path(words[words.index("--out") + 1]).name
    for script, name in (("train.py", "train"), ("plot", "plots"), ("smol", "model")):
        if any(script in w for w in words[:3]):
            return name
    return words[1] if len(words) > 1 else command


def parts_table(seeds):
    """When, where and how long: per seed, its date, machine, wall time of the whole call and of each part,
    and the load and matmul speed at the start and end."""
    names = list(dict.fromkeys(part_name(p["command"]) for s in seeds.values() for p in s.get("parts", [])))
    head = ["run", "date (UTC)", "machine", "all (min)"] + [f"{n} (s)" for n in names] + [
        "load 1/5/15 min, start -> end", "matmul GFLOP/s, start -> end"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in seeds.items():
        walls = {part_name(p["command"]): ("kept" if "kept" in p else f"{p['wall_s']:.1f}") for p in s.get("parts", [])}
        load, gf = s.get("load_average_1_5_15", {}), s.get("matmul_gflops", {})
        lines.append("| " + " | ".join([name, s.get("date", "-"), s.get("machine", {}).get("cpu", "-"),
                                        f"{s['wall_s'] / 60:.1f}" if "wall_s" in s else "-"]
                                       + [walls.get(n, "-") for n in names]
                                       + [f"{load.get('start')} -> {load.get('end')}",
                                          f"{gf.get('start')} -> {gf.get('end')}"]) + " |")
    return "\n".join(lines)


def seed_evaluations(summary, members, prefix):
    """{"eval" | "greedy" | "gsm8k": {"before", "after", "gain"}} of one seed: recomputed from its archived
    per-problem records where they are there, else as its summary.json recorded them."""
    out = {}
    recorded = {"eval": (summary.get("before"), summary.get("after"), summary.get("gain")),
                "greedy": (summary.get("greedy", {}).get("before"), summary.get("greedy", {}).get("after"), None),
                "gsm8k": None}
    if "gsm8k" in summary:
        g = summary["gsm8k"]
        recorded["gsm8k"] = ({"gsm8k": g["before"]}, {"gsm8k": g["after"]}, {"gsm8k": g["gain"]})
    for name, rec in recorded.items():
        files = [f"{prefix}{name}_{when}/records.jsonl" for when in ("before", "after")]
        if all(f in members for f in files):
            before, after = (read_jsonl(members[f]) for f in files)
            b, a, g = level_accuracy(before), level_accuracy(after), paired_gain(before, after)
            if name == "gsm8k":
                b, a, g = ({"gsm8k": next(iter(x.values()))} for x in (b, a, g))
            out[name] = {"before": b, "after": a, "gain": g, "source": "records"}
        elif rec is not None and rec[0] is not None:
            out[name] = {"before": rec[0], "after": rec[1], "gain": rec[2], "source": "summary"}
    return out


def macro_gain(gain, levels):
    """The mean over levels of the paired gains, and the half-width of its 95% interval over problems: each
    level's standard error back from its t half-width, the variances added (normal quantile)."""
    se2 = 0.0
    for lv, g in gain.items():
        p = levels[lv]["problems"]
        if p > 1 and g["ci95"] == g["ci95"]:
            se2 += (g["ci95"] / t_quantile(0.975, p - 1)) ** 2
    return sum(g["gain"] for g in gain.values()) / len(gain), Z * math.sqrt(se2) / len(gain)


def learning_tables(group, seeds, members):
    """One experiment's seeds of one command (`seeds`: {run folder in the archive: summary}): per seed, accuracy
    per level before and after with Wilson intervals (problems as the unit), the gain paired per problem; then the
    seed-level table: the mean over seeds with its t-interval (seeds as the unit)."""
    text, per_seed = [], {}
    for run, s in seeds.items():
        prefix, seed_dir = f"{run}/", Path(run).name
        ev = seed_evaluations(s, members, prefix)
        per_seed[seed_dir] = ev
        e, gr = ev["eval"], ev.get("greedy")
        levels = list(e["before"])
        metrics = read_jsonl(members.get(prefix + "metrics.jsonl", b""))
        metrics = train_records(metrics)
        acc = [r.get("gen/accuracy", r.get("score_mean")) for r in metrics]
        first_last = f"; train accuracy {sum(acc[:3]) / 3:.3f} (first 3 steps) -> {sum(acc[-3:]) / 3:.3f} (last 3)" \
            if len(acc) >= 3 else ""
        n = e["before"][levels[0]]["n"]
        text.append(f"**{seed_dir}** ({s.get('date', '-')}, {s.get('machine', {}).get('cpu', '-')}; "
                    f"{s.get('steps', len(metrics))} steps{first_last}; evaluations from {e['source']}):\n")
        run_greedy = s.get("greedy_during_run", {})
        head = ["level (problems)", f"T = 1, n = {n}: before", "after", "paired gain (per problem)",
                "greedy: before", "after", f"in-run greedy, step {run_greedy.get('step', '-')}"]
        text += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for lv in levels:
            b, a = e["before"][lv], e["after"][lv]
            g = e["gain"][lv] if e["gain"] else None
            cells = [f"{lv.replace('level', '')} ({b['problems']})", wilson_text(b["accuracy"], b["problems"]),
                     wilson_text(a["accuracy"], a["problems"]),
                     pm(g["gain"], g["ci95"], sign=True) if g else "-"]
            cells += [wilson_text(gr[w][lv]["accuracy"], gr[w][lv]["problems"]) if gr else "-"
                      for w in ("before", "after")]
            cells.append(pct(run_greedy.get(lv)))
            text.append("| " + " | ".join(cells) + " |")
        mb, ma = macro(e["before"]), macro(e["after"])
        mg = macro_gain(e["gain"], e["before"]) if e["gain"] else None
        cells = ["macro", pm(mb["accuracy"], mb["ci95"]), pm(ma["accuracy"], ma["ci95"]),
                 pm(*mg, sign=True) if mg else "-"]
        cells += [pct(macro(gr[w])["accuracy"]) for w in ("before", "after")] if gr else ["-", "-"]
        cells.append(pct(sum(run_greedy.get(lv, 0) for lv in levels) / len(levels)) if run_greedy else "-")
        text.append("| " + " | ".join(cells) + " |")
        if "gsm8k" in ev:
            g = ev["gsm8k"]
            b, a, d = g["before"]["gsm8k"], g["after"]["gsm8k"], g["gain"]["gsm8k"]
            text.append(f"\nGSM8K ({b['problems']} problems, greedy): {wilson_text(b['accuracy'], b['problems'])} "
                        f"-> {wilson_text(a['accuracy'], a['problems'])}; paired gain "
                        f"{pm(d['gain'], d['ci95'], sign=True)}")
        text.append("")
    if len(seeds) >= 2:
        text.append(seed_level_table(per_seed))
    text.append(parts_table({Path(run).name: s for run, s in seeds.items()}))
    return f"## {group or 'runs'}\n\n" + "\n".join(text)


def seed_level_table(per_seed):
    """Seeds as the unit: per level, the mean over seeds of accuracy before and after and of the gain, each
    with its 95% t-interval over seeds (n - 1 degrees of freedom: t = 12.71 at two seeds)."""
    names = list(per_seed)
    levels = list(per_seed[names[0]]["eval"]["before"])
    has_greedy = all("greedy" in ev for ev in per_seed.values())
    head = ["level", "before", "after", "gain", "greedy: after", "greedy: gain"]
    lines = [f"Seeds as the unit ({len(names)} seeds: {', '.join(names)}): mean ± half-width of the 95% "
             f"t-interval over seeds (t_0.975 with {len(names) - 1} degrees of freedom = "
             f"{t_quantile(0.975, len(names) - 1):.2f}), in %:\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def over(f):
        return mean_ci([f(ev) for ev in per_seed.values()])

    def row(name, acc):  # acc(ev, which, kind) -> a value of one seed
        cells = [name, pm(*over(lambda ev: acc(ev, "before", "eval"))), pm(*over(lambda ev: acc(ev, "after", "eval"))),
                 pm(*over(lambda ev: acc(ev, "after", "eval") - acc(ev, "before", "eval")), sign=True)]
        if has_greedy:
            cells += [pm(*over(lambda ev: acc(ev, "after", "greedy"))),
                      pm(*over(lambda ev: acc(ev, "after", "greedy") - acc(ev, "before", "greedy")), sign=True)]
        else:
            cells += ["-", "-"]
        return "| " + " | ".join(cells) + " |"

    for lv in levels:
        lines.append(row(lv.replace("level", "level "), lambda ev, w, k, lv=lv: ev[k][w][lv]["accuracy"]))
    lines.append(row("macro", lambda ev, w, k: macro(ev[k][w])["accuracy"]))
    if all("gsm8k" in ev for ev in per_seed.values()):
        acc = lambda ev, w: ev["gsm8k"][w]["gsm8k"]["accuracy"]  # noqa: E731
        lines.append("| gsm8k (greedy) | " + " | ".join([
            pm(*over(lambda ev: acc(ev, "before"))), pm(*over(lambda ev: acc(ev, "after"))),
            pm(*over(lambda ev: acc(ev, "after") - acc(ev, "before")), sign=True), "-", "-"]) + " |")
    return "\n".join(lines) + "\n"


def trl_table(seeds):
    """train.py beside TRL's GRPOTrainer on equal terms, per seed (trl_learn.py's summary.json): held-out
    accuracy at each checkpoint, the threshold, the time to it, and the ratio over seeds."""
    from scripts.trl_learn import TRAINERS, ratio_over_seeds
    names = list(seeds)
    head = ["", *[f"{t}, {n}" for t in TRAINERS for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, f):
        lines.append("| " + " | ".join([label] + [f(seeds[n]["trainers"][t], seeds[n], t) for t in TRAINERS
                                                  for n in names]) + " |")

    def part(s, t):
        return next(p for p in s["parts"] if p["name"] == t)

    row("machine (the run's own record)", lambda r, s, t: part(s, t)["start"]["machine"]["cpu"])
    row("started (UTC); order within the seed", lambda r, s, t: f"{part(s, t)['start']['date']}; "
        f"{s['order'].index(t) + 1} of 2")
    row("load average (1 min) at start -> end", lambda r, s, t: f"{part(s, t)['start']['load_average_1_5_15'][0]} -> "
        f"{part(s, t)['end']['load_average_1_5_15'][0]}")
    row("matmul GFLOP/s at start -> end", lambda r, s, t: f"{part(s, t)['start']['matmul_gflops']:.0f} -> "
        f"{part(s, t)['end']['matmul_gflops']:.0f}")
    row("generation", lambda r, s, t: "vLLM" if t == "train.py" else s["trl_generation"])
    row("same prompts as train.py's draws, in order", lambda r, s, t: "yes" if s["same_prompts"] else "NO")
    row("training seconds (sum of step times)", lambda r, s, t: f"{r['train_seconds']:.0f}")
    row("median step (s)", lambda r, s, t: f"{r['median_step_s']:.1f}")
    row("held-out greedy, trained levels' mean, step 0 / " + " / ".join(
        seeds[names[0]]["trainers"]["train.py"]["heldout_mean"]),
        lambda r, s, t: " / ".join(pct(v) for v in [sum(s["base"].values()) / len(s["base"]),
                                                     *r["heldout_mean"].values()]))
    for lv in seeds[names[0]]["base"]:
        last = lambda r, lv=lv: list(r["heldout"].values())[-1][lv]  # noqa: E731
        row(f"held-out {lv.replace('level', 'level ')}, step 0 -> last",
            lambda r, s, t, lv=lv, last=last: f"{pct(s['base'][lv])} -> {pct(last(r))}")
    row("threshold (held-out, trained levels' mean)",
        lambda r, s, t: "none (a trainer did not gain)" if s["threshold"] is None else pct(s["threshold"]))
    row("first checkpoint at the threshold, training seconds through it", lambda r, s, t: "never"
        if r["time_to_threshold"] is None else f"step {r['time_to_threshold']['step']}, "
        f"{r['time_to_threshold']['seconds']:.0f} s")
    ratios = [seeds[n]["time_to_threshold_ratio"] for n in names]
    steps = [seeds[n]["median_step_ratio"] for n in names]
    lines.append(f"\ntrain.py / TRL, per seed ({', '.join(names)}): time to the held-out threshold "
                 f"{' / '.join(str(r) for r in ratios)}, median step {' / '.join(str(r) for r in steps)}")
    if len(names) >= 2 and None not in ratios:
        g, lo, hi = ratio_over_seeds(ratios)
        lines[-1] += (f"; over seeds (the unit), time to the threshold {g:.2f} [{lo:.2f}, {hi:.2f}] (geometric "
                      f"mean, 95% t-interval of the log-ratios, {len(names)} seeds)")
    first = seeds[names[0]]
    lines.append(f"\nheld-out: eval.py greedy on the first {first['limit']} problems of each trained level "
                 f"({', '.join(Path(b).stem for b in first['benchmarks'])}), the same command for the start model "
                 f"and every {first['every']}-step checkpoint of both; threshold: the start model's mean plus half "
                 "the smaller gain at the last step; time: training seconds (generation and update) through the "
                 "first checkpoint at or above it, at a resolution of one checkpoint.")
    return "\n".join(lines)


def evaluations_table(results):
    """eval.py results.json files ({name: results}): per benchmark accuracy with its Wilson interval, the mean
    over benchmarks, and the truncated share of responses."""
    first = next(iter(results.values()))["benchmarks"]
    stems = [Path(b).stem for b in first]
    head = ["evaluation"] + stems + ["mean", "truncated, " + " / ".join(stems)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        b = r["benchmarks"]
        cells = [name] + [wilson_text(v["avg@n"], v["num_problems"]) for v in b.values()]
        cells.append(pct(sum(v["avg@n"] for v in b.values()) / len(b)))
        cells.append(" / ".join(pct(v.get("truncated"), 0) for v in b.values()))
        lines.append("| " + " | ".join(cells) + " |")
    s = next(iter(results.values())).get("settings", {})
    n = s.get("n", "?")
    n = next(iter(n.values())) if isinstance(n, dict) else n  # per benchmark in eval.py's settings
    lines.append(f"\naccuracy in % [Wilson 95%, problems as the unit]; {n} sample(s) a problem at "
                 f"temperature {s.get('temperature', '?')}, at most {s.get('max_tokens', '?')} new tokens")
    return "\n".join(lines)


def summary_table(members):
    """table.md of an experiment of summaries: each command's seeds (learning_tables or trl_table), each
    run with metrics (window_table), and loose evaluations (evaluations_table)."""
    summaries = {name[:-len("/summary.json")]: json.loads(data) for name, data in sorted(members.items())
                 if name.endswith("summary.json") and "/" in name}
    groups = {}
    for run, s in summaries.items():
        groups.setdefault(str(Path(run).parent) if "/" in run else "", {})[run] = s
    sections = []
    for group, seeds in sorted(groups.items()):
        if all("trainers" in s for s in seeds.values()):
            sections.append(f"## {group or 'runs'}: train.py and TRL\n\n"
                            + trl_table({Path(run).name: s for run, s in seeds.items()}))
        else:
            sections.append(learning_tables(group, seeds, members))
    runs = sorted(name[:-len("/metrics.jsonl")] for name in members if name.endswith("/metrics.jsonl"))
    if runs:
        sections.append("## every run at a glance\n\n" + glance_table(
            {run: read_jsonl(members[run + "/metrics.jsonl"]) for run in runs}))
    for run in runs:
        records = read_jsonl(members[run + "/metrics.jsonl"])
        sections.append(f"### {run}: training by step window\n\n" + window_table(records))
    loose = {name[:-len("/results.json")]: json.loads(members[name]) for name in sorted(members)
             if name.endswith("/results.json") and Path(name).parent.name != "heldout"}
    if loose:
        sections.append("## evaluations\n\n" + evaluations_table(loose))
    legend = ("Accuracies in %: T = 1 with n samples a problem (avg@n) or greedy; [lo, hi]: Wilson's 95% interval "
              "with problems as the unit (conservative for avg@n, never zero-width). Paired gain: mean over problems "
              "of after - before, ± the 95% t-interval over problems (zero where every problem moved alike). "
              "macro: the mean over levels, ± the levels' standard errors added (from their Wilson intervals; for "
              "the gain, from their t-intervals). Where a command ran two or more seeds, the seed-level table "
              "treats seeds as the unit: its intervals include training's seed-to-seed variation, the per-problem "
              "ones only the evaluation's. Written by python -m scripts.results from the archive.")
    return "\n\n".join(sections) + "\n\n" + legend + "\n"


def draw_summary_figures(members, work):
    """Every figure of the summary experiment, drawn from the extracted archive into work/figures:
    scripts.plot for each run with metrics.jsonl (seed_<S> runs one by one, other runs of one folder
    together), trl_learn.draw for train.py beside TRL. Returns {path relative to the experiment: PNG}."""
    from scripts import plot
    extract(members, work / "data")
    figures = work / "figures"
    drawn = {}
    runs = sorted({str(Path(n).parent) for n in members if n.endswith("/metrics.jsonl")})
    together = {}
    for run in runs:
        if re.fullmatch(r"seed_?\d+", Path(run).name):
            together[run] = [run]
        else:
            together.setdefault(str(Path(run).parent), []).append(run)
    with contextlib.redirect_stdout(io.StringIO()):
        for target, members_of in together.items():
            out = figures / target
            plot.plot_main([str(work / "data" / r) for r in members_of] + ["--out", str(out), "--smooth", "3"])
        trl_dirs = sorted({str(Path(n).parent.parent) for n in members if n.endswith("/trl_metrics.jsonl")})
        for d in trl_dirs:
            from scripts import trl_learn
            (figures / d).mkdir(parents=True, exist_ok=True)
            trl_learn.draw(work / "data" / d, figures / d / "side_by_side.png")
    for png in sorted(figures.rglob("*.png")):
        drawn[str(png.relative_to(figures))] = png
    return drawn


# ---- the README quotes the tables ----

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])")


def readme_table_numbers(readme):
    """(row label, number as written) for every number in the data cells of the README's markdown tables: not
    the header row, not a row's first cell (its label), not links, images or `code`."""
    out, lines = [], readme.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()):
            continue
        if i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            continue  # a header row
        cells = line.strip().strip("|").split("|")
        for cell in cells[1:]:
            cell = re.sub(r"!?\[[^\]]*\]\([^)]*\)|`[^`]*`", " ", cell)
            out += [(cells[0].strip(), n) for n in NUMBER.findall(cell)]
    return out


def missing_numbers(readme, tables):
    """The README table numbers that the regenerated `tables` text does not give at the precision the README
    writes (0.83 is there when 0.833 is, 40 when 40.0 is; a tie, 0.075, gives 0.07 or 0.08): ["label: number",
    ...]. A number must be in a table row with the same label (first cell) as its README row where the tables
    have one, else anywhere in them."""
    rows = {}
    for line in tables.splitlines():
        if line.startswith("|"):
            cells = line.strip().strip("|").split("|")
            rows.setdefault(cells[0].strip(), []).extend(float(n) for n in NUMBER.findall("|".join(cells[1:])))
    everywhere = [float(n) for n in NUMBER.findall(tables)]
    missing = []
    for label, text in readme_table_numbers(readme):
        decimals = len(text.split(".")[1]) if "." in text else 0
        x = float(text)
        if not any(abs(v - x) <= 0.5 * 10 ** -decimals + 1e-9 for v in rows.get(label, everywhere)):
            missing.append(f"{label}: {text}")
    return missing


# ---- the command ----

def regenerate(exp_dir, members, work, out):
    """Write the experiment's tables into `out` from its archive `members`; returns the figures drawn
    ({path relative to the experiment: PNG file in work})."""
    if "published.json" in members:
        return regenerate_sweep(members, work / "runs", out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(summary_table(members))
    return draw_summary_figures(members, work)


def tables_of(members):
    return ["table.md", "table.json"] if "published.json" in members else ["table.md"]


def check(name, exp_dir):
    """Regenerate in a temporary folder; the differences from the committed tables, and figures the README
    shows that were not drawn (a list of lines, empty when all agree)."""
    loose = loose_files(exp_dir)
    if loose:
        return [f"{name}: data files outside the archive (run python -m scripts.results {name}): "
                + ", ".join(str(p.relative_to(exp_dir)) for p in loose[:5])]
    members = read_archive(exp_dir)
    if not members:
        return [f"{name}: no {ARCHIVE} in {exp_dir}"]
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        drawn = regenerate(exp_dir, members, tmp / "work", tmp / "out")
        for table in tables_of(members):
            new, old = (tmp / "out" / table).read_text(), (exp_dir / table)
            if not old.is_file():
                problems.append(f"{name}: {table} is not committed")
            elif old.read_text() != new:
                diff = [f"  - {a}\n  + {b}" for a, b in zip(old.read_text().splitlines(), new.splitlines()) if a != b]
                problems.append(f"{name}: {table} differs from its regeneration (python -m scripts.results {name}):\n"
                                + "\n".join(diff[:3]))
        regenerated = "\n".join((tmp / "out" / table).read_text() for table in tables_of(members))
        readme = exp_dir / "README.md"
        missing = missing_numbers(readme.read_text(), regenerated) if readme.is_file() else []
        if missing:
            problems.append(f"{name}: README.md's tables quote {len(missing)} numbers no regenerated table holds: "
                            + "; ".join(missing[:8]))
        for rel in shown_figures(exp_dir) or []:
            if rel not in drawn:
                problems.append(f"{name}: README shows {rel}, which the archive's drawing code does not make")
    return problems


def resolve(name):
    if name in EXPERIMENTS:
        return name, ROOT / EXPERIMENTS[name]
    path = Path(name)
    if (path / ARCHIVE).is_file() or (path / "README.md").is_file():
        return path.name, path
    raise SystemExit(f"results: unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}, all, or a folder "
                     "with a README.md")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, 'all', or an experiment's folder")
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary folder and fail on any "
                    "difference with the committed table(s)")
    ap.add_argument("--extract", metavar="DIR", help="only write the archived files into DIR")
    ap.add_argument("--figures", metavar="DIR", help="also write every figure drawn (not only the README's) into DIR")
    args = ap.parse_args(argv)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    failed = []
    for name, exp_dir in map(resolve, names):
        if args.extract:
            members = read_archive(exp_dir)
            extract(members, Path(args.extract) / (name if len(names) > 1 else ""))
            print(f"{name}: {len(members)} files into {args.extract}")
        elif args.check:
            problems = check(name, exp_dir)
            failed += problems
            print("\n".join(problems) if problems
                  else f"{name}: tables, README numbers and figures agree with {ARCHIVE}")
        else:
            packed = pack(exp_dir)
            members = read_archive(exp_dir)
            with tempfile.TemporaryDirectory() as tmp:
                drawn = regenerate(exp_dir, members, Path(tmp) / "work", exp_dir)
                kept = place_figures(drawn, exp_dir)
                if args.figures:
                    for rel, png in drawn.items():
                        (Path(args.figures) / name / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(png, Path(args.figures) / name / rel)
            print(f"{name}: packed {len(packed)} files into {ARCHIVE} ({len(members)} in all); wrote "
                  f"{', '.join(tables_of(members))} and {len(kept)} figures (of {len(drawn)} drawn)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
