"""The 10-minute demo: a real pretrained model (SmolLM2-135M-Instruct) learning arithmetic by GRPO on the CPU.

    python -m scripts.smol_learn [--seed 0]          (make smol-learn SEED=0)

One command, five parts, each its own process: the model (smol.py, if missing); the held-out rows of the
leveled arithmetic task (tiny.py arith: runs/arith/level<L>.jsonl); eval.py on the base model (T = 1, n = 4,
the first --limit problems of each level); train.py with configs/experiments/smol_learn.yaml; eval.py again, the
same command, on the final checkpoint; then plot.py. It writes docs/smol_learn/seed_<S>/: summary.json (accuracy
per level before and after with 95% intervals, the gain with a paired interval, the commands, date, machine,
load and wall times), metrics.jsonl (the training run's log), each evaluation's per-problem records
(<eval>_<before|after>/records.jsonl) and the figures; `python -m scripts.results smol_learn` then packs the data
files into the experiment's archive. Checkpoints stay under runs/smol_learn/seed_<S>/ (git-ignored).

The longer run uses the same script (configs/experiments/smol_levels.yaml, with --greedy for greedy accuracy
beside T = 1 and --gsm8k for a GSM8K slice, both before and after); --resume continues an interrupted call
(finished evaluations kept, train.py from its checkpoint).
"""
import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import tiny
from scripts import common, plot, smol
from scripts.stats import level_accuracy, macro, paired_gain  # per level over problems (Wilson), paired per problem
from config import load_config

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, log, keep=None):
    """Run one part as a subprocess (its output to the console), record its command, wall time and the
    load average at its end; stop the demo if it fails. With `keep` (a file an earlier, interrupted
    call of this part wrote), the part is not run again."""
    if keep is not None and Path(keep).is_file():
        log.append({"command": " ".join(cmd), "kept": f"{keep} from an interrupted run"})
        print(f"= kept {keep}", flush=True)
        return
    rc, wall = common.run(cmd, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, echo=True)
    log.append({"command": " ".join(cmd), "wall_s": wall, "load_after": common.load_average()})
    if rc:
        sys.exit(f"smol_learn: '{' '.join(cmd[:3])} ...' failed with exit code {rc}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/experiments/smol_learn.yaml")
    ap.add_argument("--limit", type=int, default=8, help="held-out problems per level evaluated before and after")
    ap.add_argument("--n", type=int, default=4, help="samples per problem (temperature 1)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--heldout", default="runs/arith", help="where tiny.py arith writes the held-out rows")
    ap.add_argument("--runs", default="runs/smol_learn", help="checkpoints and eval records (git-ignored)")
    ap.add_argument("--docs", default="docs/smol_learn", help="summary, metrics and figures (committed)")
    ap.add_argument("--gsm8k", help="a GSM8K test file (e.g. data/gsm8k_test.jsonl, from `make data`): its first "
                    "--gsm8k-limit problems are also asked before and after, greedy, with 256 new tokens")
    ap.add_argument("--gsm8k-limit", type=int, default=200)
    ap.add_argument("--greedy", action="store_true", help="also evaluate the same held-out problems greedily "
                    "(n = 1, temperature 0) before and after")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted call: evaluations it finished "
                    "are kept, train.py resumes from its last checkpoint")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides for train.py")
    args = ap.parse_args(argv)
    run_dir, doc_dir = Path(args.runs) / f"seed_{args.seed}", Path(args.docs) / f"seed_{args.seed}"
    doc_dir.mkdir(parents=True, exist_ok=True)
    started, t0, at_start = datetime.now(timezone.utc), time.perf_counter(), common.provenance()
    load_start = at_start["load_average_1_5_15"]
    py, parts = sys.executable, []

    run([py, "-m", "scripts.smol", "--out", str(smol.DEFAULT_DIR)], parts)  # returns at once when the model is there
    heldout = tiny.write_arith_heldout(args.heldout)
    prompt = {"template": "chat", "instruction": load_config(args.config, args.overrides).rollout.instruction,
              "dtype": "float32"}
    heldout_options = {"max_tokens": args.max_tokens, "limit": args.limit, "seed": args.seed, **prompt}
    evaluations = {  # each asked before and after training: eval.py's benchmarks and options
        "eval": (heldout, {"n": args.n, "temperature": 1.0, **heldout_options}),
        "greedy": (heldout, {"n": 1, "temperature": 0, **heldout_options}) if args.greedy else None,
        "gsm8k": ([args.gsm8k], {"n": 1, "temperature": 0, "max_tokens": 256, "limit": args.gsm8k_limit, **prompt})
        if args.gsm8k else None}

    def evaluate_all(model, when):  # with --resume, a finished evaluation (eval.py writes it whole) is kept
        for name, evaluation in evaluations.items():
            if evaluation:
                out = run_dir / f"{name}_{when}"
                run(common.eval_command(model, evaluation[0], out, **evaluation[1]), parts,
                    out / "records.jsonl" if args.resume else None)

    evaluate_all(smol.DEFAULT_DIR, "before")
    train_dir = run_dir / "train"
    run([py, "train.py", "--config", args.config, f"seed={args.seed}", f"out_dir={train_dir}",
         f"model.path={smol.DEFAULT_DIR}", *args.overrides] + (["--resume"] if args.resume else []), parts)
    ckpts = train_dir / "checkpoints"  # `latest` names this run's last save (not an earlier run's higher step)
    evaluate_all(ckpts / (ckpts / "latest").read_text().strip() / "model", "after")
    run([py, "-m", "scripts.plot", str(train_dir), "--out", str(doc_dir), "--smooth", "3"], parts)
    wall = time.perf_counter() - t0

    before = plot.read_metrics(run_dir / "eval_before" / "records.jsonl")  # any JSON Lines file
    after = plot.read_metrics(run_dir / "eval_after" / "records.jsonl")
    metrics = plot.read_metrics(train_dir / "metrics.jsonl")
    levels_before, levels_after = level_accuracy(before), level_accuracy(after)
    last_eval = next(r for r in reversed(metrics) if any(k.startswith("val/") for k in r))
    rewards = [r["reward_mean"] for r in metrics if "reward_mean" in r]
    summary = {
        "what": "SmolLM2-135M-Instruct, GRPO on the arith task (tiny.arith_rows); held-out accuracy per level "
                f"(eval.py, temperature 1, n = {args.n}, first {args.limit} problems of each level) before and after",
        "command": " ".join(["python -m scripts.smol_learn", *(sys.argv[1:] if argv is None else argv)]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": at_start["machine"], "commit": at_start["commit"], "versions": at_start["versions"],
        "load_average_1_5_15": {"start": load_start, "end": common.load_average()},
        "matmul_gflops": {"start": at_start["matmul_gflops"], "end": common.matmul_gflops()},
        "threads": os.environ.get("OMP_NUM_THREADS", "default (all cores)"),
        "wall_s": round(wall, 1),
        "parts": parts,
        "before": levels_before, "after": levels_after,
        "gain": paired_gain(before, after),
        "macro": {"before": macro(levels_before), "after": macro(levels_after)},
        "greedy_during_run": {"step": last_eval["step"],
                              **{Path(k).stem: v for k, v in last_eval.items() if k.startswith("val/")}},
        "train_reward": {"first_3_steps": sum(rewards[:3]) / 3, "last_3_steps": sum(rewards[-3:]) / 3},
        "steps": len(metrics),
    }
    if args.greedy:
        b, a = (level_accuracy(plot.read_metrics(run_dir / f"greedy_{when}" / "records.jsonl"))
                for when in ("before", "after"))
        summary["greedy"] = {"what": "the same held-out problems, greedy (n = 1, temperature 0)", "before": b,
                             "after": a, "macro": {"before": macro(b), "after": macro(a)}}
    if args.gsm8k:
        b, a = (plot.read_metrics(run_dir / f"gsm8k_{when}" / "records.jsonl") for when in ("before", "after"))
        summary["gsm8k"] = {"what": f"the first {args.gsm8k_limit} problems of {args.gsm8k}, greedy, 256 new tokens",
                            "before": next(iter(level_accuracy(b).values())),
                            "after": next(iter(level_accuracy(a).values())),
                            "gain": next(iter(paired_gain(b, a).values()))}
    (doc_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (doc_dir / "metrics.jsonl").write_text((train_dir / "metrics.jsonl").read_text())
    for records in sorted(run_dir.glob("*_*/records.jsonl")):  # the per-problem verdicts behind every figure above
        (doc_dir / records.parent.name).mkdir(exist_ok=True)
        shutil.copyfile(records, doc_dir / records.parent.name / "records.jsonl")
    print(f"held-out accuracy (T = 1, n = {args.n}, {args.limit} problems per level), before -> after:")
    for level in levels_before:
        b, a = levels_before[level], levels_after[level]
        print(f"  {level}: {b['accuracy']:.3f} [{b['wilson'][0]:.3f}, {b['wilson'][1]:.3f}] -> {a['accuracy']:.3f} "
              f"[{a['wilson'][0]:.3f}, {a['wilson'][1]:.3f}] (Wilson 95%, problems as the unit)")
    if args.gsm8k:
        g = summary["gsm8k"]
        print(f"  gsm8k (greedy, {args.gsm8k_limit} problems): {g['before']['accuracy']:.3f} -> "
              f"{g['after']['accuracy']:.3f} (paired gain {g['gain']['gain']:+.3f} ± {g['gain']['ci95']:.3f})")
    if args.greedy:
        g = summary["greedy"]["macro"]
        print(f"  greedy macro: {g['before']['accuracy']:.3f} -> {g['after']['accuracy']:.3f}")
    m = summary["macro"]
    print(f"  macro: {m['before']['accuracy']:.3f} -> {m['after']['accuracy']:.3f}; "
          f"{wall / 60:.1f} min in all, load {load_start} -> {common.load_average()}; wrote {doc_dir}/summary.json")


if __name__ == "__main__":
    main()
