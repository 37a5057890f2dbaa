"""TRL's GRPOTrainer and train.py learning the same task side by side: accuracy per step and per second.

    python -m scripts.smol_learn --seed S                                   (train.py's run, and the base model's eval)
    python -m scripts.trl_learn --trl-python /tmp/trl/bin/python --seed S

TRL trains with the settings of the config train.py ran (configs/experiments/smol_learn.yaml: SmolLM2-135M-Instruct,
the same training rows, chat template, G, prompts per step, max new tokens, temperature 1, lr with the same
warm-up (a LambdaLR from config.py's lr_factor, not HF's warm-up that starts at lr 0), AdamW without weight
decay, grad clip, clip eps, no KL, loss_type "grpo", rewards from verify.score). Every response of a step is
trained in one micro-batch (TRL's fastest setting: 64 at once measured faster than 16 x 4, and it
fits in memory here). TRL generates with transformers' `generate`, as its default (use_vllm=False) does.

Then eval.py, as smol_learn.py calls it, on TRL's checkpoints: greedy on the config's eval.limit problems of
each level at every eval.every steps (the curve train.py drew during its run), and at temperature 1, n = 4 on
the final model (smol_learn's "after"). Both runs' metrics and evaluations go to --out/seed_<S>/ with a
summary (accuracy per step, seconds per step, time to a threshold) and one figure of both against steps and
against training seconds (the sum of step times: both exclude model loading, engine start and evaluation).

TRL is not a dependency: install it beside this project's torch, e.g.
    python -m venv --system-site-packages /tmp/trl && /tmp/trl/bin/pip install trl==1.16.0
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts import common, plot  # noqa: E402


def trl_worker(config, seed, out):
    """Runs under the TRL interpreter: GRPOTrainer at the config's settings (common.trl_grpo); writes
    metrics.jsonl (one record per step, train.py's key names) and checkpoints at every eval.every steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from config import load_config
    from data import load_rows

    cfg = load_config(config, [f"seed={seed}"])
    out = Path(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.optim.lr_factor(cfg.steps))
    with open(out / "metrics.jsonl", "w") as log:
        def on_log(state, logs, seconds):
            if "reward" not in logs:
                return
            log.write(json.dumps({
                "step": state.global_step, "score_mean": logs["reward"], "reward_mean": logs["reward"],
                "len_mean": logs.get("completions/mean_length"), "truncated_frac": logs.get("completions/clipped_ratio"),
                "zero_var_frac": logs.get("frac_reward_zero_std"), "loss": logs.get("loss"),
                "grad_norm": logs.get("grad_norm"), "lr": logs.get("learning_rate"), "time/step": seconds}) + "\n")
            log.flush()

        common.trl_grpo(cfg.model.path, load_rows(cfg.data, seed), out / "checkpoints", chat=True, G=cfg.G,
                        batch=cfg.prompts_per_step * cfg.G, accumulation=1, max_tokens=cfg.rollout.max_tokens,
                        steps=cfg.steps, seed=seed, model=model, optimizers=(optimizer, scheduler), on_log=on_log,
                        temperature=cfg.rollout.temperature, top_k=0, epsilon=cfg.loss.eps_low,
                        epsilon_high=cfg.loss.eps_high, max_grad_norm=cfg.optim.grad_clip, logging_steps=1,
                        save_strategy="steps", save_steps=cfg.eval.every, save_only_model=True)


def run(cmd, env=None):
    """A part of this script, its output to the console; stops the script when it fails. Returns wall seconds."""
    return common.run(cmd, env=env, echo=True, check=True)[1]


def heldout_eval(model, benchmarks, out, *, n, temperature, limit, max_tokens, seed):
    """eval.py's records for one model (the command smol_learn.py runs); read back from `out` when an
    earlier run of this script wrote them there."""
    if not (Path(out) / "records.jsonl").is_file():
        run(common.eval_command(model, benchmarks, out, n=n, temperature=temperature, max_tokens=max_tokens,
                                template="chat", dtype="float32", limit=limit, seed=seed),
            env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    return plot.read_metrics(Path(out) / "records.jsonl")


def edge_means(records, k=3):
    """Train accuracy (score_mean) averaged over the first and over the last k steps."""
    acc = [r["score_mean"] for r in records]
    return [sum(acc[:k]) / k, sum(acc[-k:]) / k]


def time_to(records, threshold, smooth=3):
    """Training seconds (cumulative step time) until the `smooth`-step mean of train accuracy first
    reaches `threshold`; None if it never does."""
    acc, seconds = [r["score_mean"] for r in records], 0.0
    for i, r in enumerate(records):
        seconds += r["time/step"]
        window = acc[max(0, i - smooth + 1): i + 1]
        if sum(window) / len(window) >= threshold:
            return {"step": r["step"], "seconds": round(seconds, 1)}
    return None


def draw(doc_dir, path):
    """Both trainers, every seed under doc_dir (a line per seed): train accuracy against steps and against
    training seconds, and the greedy held-out accuracy on the trained levels during the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for seed_dir in sorted(Path(doc_dir).glob("seed_*")):
        summary = json.loads((seed_dir / "summary.json").read_text())
        base = (summary["greedy_base"]["level1"] + summary["greedy_base"]["level2"]) / 2
        for name, file, color in (("train.py", "train_py_metrics.jsonl", "C0"),
                                  ("TRL GRPOTrainer", "trl_metrics.jsonl", "C3")):
            recs, label = plot.read_metrics(seed_dir / file), f"{name}, {seed_dir.name.replace('_', ' ')}"
            style = "-" if seed_dir.name.endswith("0") else "--"
            seconds = {r["step"]: sum(q["time/step"] for q in recs[: i + 1]) for i, r in enumerate(recs)}
            steps, acc = plot.curve(recs, "score_mean", smooth=3)
            ax[0].plot(steps, acc, style, color=color, label=label)
            ax[1].plot([seconds[s] for s in steps], acc, style, color=color, label=label)
            greedy = summary[name]["greedy_levels_1_2"]
            ax[2].plot([0, *map(int, greedy)], [base, *greedy.values()], "o" + style, color=color, label=label)
    ax[0].set(xlabel="step", ylabel="train accuracy (3-step mean)", ylim=(0, 1))
    ax[1].set(xlabel="training seconds (sum of step times)", ylabel="train accuracy (3-step mean)", ylim=(0, 1))
    ax[2].set(xlabel="step", ylabel="held-out greedy accuracy, levels 1-2", ylim=(0, 1))
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", required=False, help="an interpreter with trl installed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="configs/experiments/smol_learn.yaml")
    ap.add_argument("--ours", default="runs/smol_learn", help="smol_learn.py's --runs: train.py's run of this seed")
    ap.add_argument("--runs", default="runs/trl_learn", help="TRL's checkpoints and eval records (git-ignored)")
    ap.add_argument("--out", default="docs/trl_learn", help="summary, metrics and figure (committed)")
    ap.add_argument("--limit", type=int, default=8, help="as smol_learn.py's --limit")
    ap.add_argument("--figure", action="store_true", help="only redraw --out/side_by_side.png from its seeds")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.figure:
        return draw(args.out, Path(args.out) / "side_by_side.png")
    run_dir, doc_dir = Path(args.runs) / f"seed_{args.seed}", Path(args.out) / f"seed_{args.seed}"
    if args.trl_worker:
        return trl_worker(args.config, args.seed, run_dir)
    if not args.trl_python:
        sys.exit("trl_learn: pass --trl-python (an interpreter with trl installed; see the module docstring)")
    ours_dir = Path(args.ours) / f"seed_{args.seed}"
    if not (ours_dir / "train" / "metrics.jsonl").exists() or not (ours_dir / "eval_before").exists():
        sys.exit(f"trl_learn: no train.py run at {ours_dir}; run `python -m scripts.smol_learn --seed {args.seed}` first")
    from config import load_config
    from scripts.smol_learn import level_accuracy, macro, paired_gain
    cfg = load_config(args.config, [f"seed={args.seed}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    doc_dir.mkdir(parents=True, exist_ok=True)

    # ---- TRL trains (its own process, its own interpreter), unless a finished run is there ----
    trl_run = run_dir / "trl_run.json"  # when and where TRL trained: written after a finished run
    if not trl_run.is_file():
        start = common.provenance()
        wall = run([args.trl_python, __file__, "--trl-worker", "--seed", args.seed, "--config", args.config,
                    "--runs", args.runs])
        trl_run.write_text(json.dumps({"start": start, "after_trl_training": common.provenance(),
                                       "trl_process_wall_s": wall}, indent=1) + "\n")

    # ---- eval.py on TRL's checkpoints: greedy during the run, T = 1 on the final model ----
    greedy = {"train.py": {}, "TRL GRPOTrainer": {}}
    for step in range(cfg.eval.every, cfg.steps + 1, cfg.eval.every):
        recs = heldout_eval(run_dir / "checkpoints" / f"checkpoint-{step}", cfg.eval.benchmarks,
                            run_dir / f"greedy_{step}", n=1, temperature=0.0, limit=cfg.eval.limit,
                            max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens, seed=args.seed)
        acc = level_accuracy(recs)
        greedy["TRL GRPOTrainer"][step] = {k: v["accuracy"] for k, v in acc.items()}
    base_greedy = level_accuracy(heldout_eval(
        cfg.model.path, cfg.eval.benchmarks, Path(args.runs) / "base_greedy", n=1, temperature=0.0,
        limit=cfg.eval.limit, max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens, seed=0))
    final = run_dir / "checkpoints" / f"checkpoint-{cfg.steps}"
    before = plot.read_metrics(ours_dir / "eval_before" / "records.jsonl")
    trl_after = heldout_eval(final, cfg.eval.benchmarks, run_dir / "eval_after", n=4, temperature=1.0,
                             limit=args.limit, max_tokens=cfg.rollout.max_tokens, seed=args.seed)
    ours_after = plot.read_metrics(ours_dir / "eval_after" / "records.jsonl")
    ours = plot.read_metrics(ours_dir / "train" / "metrics.jsonl")
    trl = plot.read_metrics(run_dir / "metrics.jsonl")
    for r in ours:
        if any(k.startswith("val/") for k in r):
            greedy["train.py"][r["step"]] = {k[4:]: v for k, v in r.items() if k.startswith("val/")}

    # ---- the summary: accuracy per step and per second, both trainers ----
    first, last = edge_means(ours)
    threshold = first + (last - first) / 2  # half of train.py's gain in train accuracy
    summary = {"command": f"python -m scripts.trl_learn --trl-python {args.trl_python} --seed {args.seed}",
               "config": args.config, **json.loads(trl_run.read_text()), "end": common.provenance(),
               "threshold": {"train_accuracy": round(threshold, 4)}}
    for name, recs, after in (("train.py", ours, ours_after), ("TRL GRPOTrainer", trl, trl_after)):
        times = [r["time/step"] for r in recs]
        levels_after = level_accuracy(after)
        summary[name] = {
            "steps": len(recs), "train_seconds": round(sum(times), 1), "median_step_s": statistics.median(times),
            "train_accuracy_first_last_3": edge_means(recs),
            "time_to_threshold": time_to(recs, threshold),
            "greedy_levels_1_2": {s: (v["level1"] + v["level2"]) / 2 for s, v in greedy[name].items()},
            "heldout_after": levels_after, "gain": paired_gain(before, after),
            "macro_after": macro(levels_after)}
    summary["heldout_before"] = level_accuracy(before)
    summary["greedy_base"] = {k: v["accuracy"] for k, v in base_greedy.items()}
    a, b = (summary[n]["time_to_threshold"] for n in ("train.py", "TRL GRPOTrainer"))
    summary["time_to_threshold_ratio"] = round(a["seconds"] / b["seconds"], 3) if a and b else None
    summary["median_step_ratio"] = round(summary["train.py"]["median_step_s"]
                                         / summary["TRL GRPOTrainer"]["median_step_s"], 3)
    (doc_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (doc_dir / "trl_metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    (doc_dir / "train_py_metrics.jsonl").write_text((ours_dir / "train" / "metrics.jsonl").read_text())
    draw(args.out, Path(args.out) / "side_by_side.png")
    for name in ("train.py", "TRL GRPOTrainer"):
        s = summary[name]
        print(f"{name:16} {s['steps']} steps, {s['train_seconds']:.0f} s training (median {s['median_step_s']:.1f} s/step); "
              f"train accuracy {s['train_accuracy_first_last_3'][0]:.2f} -> {s['train_accuracy_first_last_3'][1]:.2f}; "
              f"threshold {threshold:.2f} at {s['time_to_threshold']}; held-out macro after "
              f"{s['macro_after']['accuracy']:.3f} ± {s['macro_after']['ci95']:.3f}")
    print(f"train.py / TRL: median step {summary['median_step_ratio']}, time to threshold "
          f"{summary['time_to_threshold_ratio']}; load {summary['start']['load_average_1_5_15']} -> "
          f"{summary['end']['load_average_1_5_15']}; wrote {doc_dir}")


if __name__ == "__main__":
    main()
