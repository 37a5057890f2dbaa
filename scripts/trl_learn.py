"""train.py and TRL's GRPOTrainer on equal terms: the time each needs to reach a held-out accuracy.

    python -m scripts.trl_learn --trl-python /tmp/trl/bin/python --seeds 0 1
    python -m scripts.results trl_learn          # archive, table.md and figure from what it wrote

Per seed, back to back on one machine, the two trainers in alternating order (seed list position 0: train.py
first, 1: TRL first, ...), so a drift of the machine's speed does not favour one:
- **train.py** `--config CONFIG seed=S save_every=E` (no in-run evaluation);
- **TRL's GRPOTrainer** (common.trl_grpo, under --trl-python) at the same config's settings: the same model,
  G, prompts per step, new tokens, temperature, AdamW with the same warm-up (a LambdaLR from config.py's
  lr_factor), grad clip, clip eps, no KL, loss_type "grpo", rewards from verify.score, all responses of a step
  in one micro-batch, a checkpoint every E steps; and **the same prompts in the same order**: train.py's draws
  (`drawn_prompts`), fed with shuffle_dataset=False, so TRL's RepeatSampler walks them in order. The problems
  TRL is rewarded on are recorded, and the summary says whether they are train.py's draws, step by step;
- **eval.py**, the same command for every model: greedy on the first --limit held-out problems of each
  trained level (tiny.arith_heldout_rows: no form of them is ever drawn), for the start model and each
  checkpoint of both.

The threshold is the start model's held-out accuracy (mean over the trained levels) plus half the smaller of
the two trainers' gains at the last step, so both reach it; a trainer's time to it is its training seconds
(the sum of step times, generation and update: no loading, saving or evaluation) through its first checkpoint
at or above it. Reported: the ratio train.py / TRL per seed, and over seeds (the unit) the geometric mean with
the 95% t-interval of the log-ratios.

Generation is the one difference, and it is labelled: train.py samples with vLLM (its CPU build), TRL with
transformers' `generate`, because TRL's vLLM path samples in bfloat16 on a CPU (docs/trl_learn says why).
--trl-vllm gives TRL vLLM in colocate mode (for a GPU, where both sample in the trained dtype).

TRL is not a dependency: install it beside this project's torch, e.g.
    python -m venv --system-site-packages /tmp/trl && /tmp/trl/bin/pip install trl==1.16.0
"""
import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts import common, plot  # noqa: E402
from scripts.stats import level_accuracy, mean_ci  # noqa: E402

TRAINERS = ("train.py", "TRL GRPOTrainer")
ENV = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def drawn_prompts(cfg):
    """The rows train.py draws on one rank, in order: the first steps x prompts_per_step rows of its prompt
    stream (one take of prompts_per_step a step; train.py skips a prompt over data.max_prompt_tokens, and the
    summary counts those: gen/skipped_prompts). Only a stream that does not look at the policy can be
    replayed: a level curriculum or dynamic sampling draws by the rewards."""
    from data import prompt_stream
    if cfg.data.level_sampling != "rows" or cfg.reward.dynamic_sampling:
        sys.exit("trl_learn: the config draws prompts by the rewards (data.level_sampling or "
                 "reward.dynamic_sampling): TRL cannot be fed the same prompts")
    return prompt_stream(cfg.data, cfg.seed).take(cfg.steps * cfg.prompts_per_step)


def trl_worker(config, seed, out, every, vllm):
    """Runs under the TRL interpreter: GRPOTrainer at the config's settings on drawn_prompts, in order; writes
    metrics.jsonl (one record per step, train.py's key names), rewarded.jsonl (the problems of each reward call)
    and a checkpoint every `every` steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from config import load_config

    cfg = load_config(config, [f"seed={seed}"])
    out = Path(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.optim.lr_factor(cfg.steps))
    generation = {"use_vllm": True, "vllm_mode": "colocate"} if vllm else {}
    with open(out / "metrics.jsonl", "w") as log, open(out / "rewarded.jsonl", "w") as rewarded:
        def on_log(state, logs, seconds):
            if "reward" not in logs:
                return
            log.write(json.dumps({
                "step": state.global_step, "score_mean": logs["reward"], "reward_mean": logs["reward"],
                "len_mean": logs.get("completions/mean_length"), "truncated_frac": logs.get("completions/clipped_ratio"),
                "zero_var_frac": logs.get("frac_reward_zero_std"), "loss": logs.get("loss"),
                "grad_norm": logs.get("grad_norm"), "lr": logs.get("learning_rate"), "time/step": seconds}) + "\n")
            log.flush()

        def on_reward(problems):
            rewarded.write(json.dumps(problems) + "\n")

        common.trl_grpo(cfg.model.path, drawn_prompts(cfg), out / "checkpoints", chat=True, G=cfg.G,
                        batch=cfg.prompts_per_step * cfg.G, accumulation=1, max_tokens=cfg.rollout.max_tokens,
                        steps=cfg.steps, seed=seed, model=model, optimizers=(optimizer, scheduler), on_log=on_log,
                        on_reward=on_reward, temperature=cfg.rollout.temperature, top_k=0,
                        epsilon=cfg.loss.eps_low, epsilon_high=cfg.loss.eps_high, max_grad_norm=cfg.optim.grad_clip,
                        logging_steps=1, save_strategy="steps", save_steps=every, save_only_model=True,
                        shuffle_dataset=False, **generation)


def same_prompts(rewarded, drawn, G):
    """Whether TRL's reward calls (lists of problems, each prompt's G completions together) scored exactly
    the drawn problems, in order, each G times."""
    seen = [p for call in rewarded for p in call]
    return seen == [r["problem"] for r in drawn for _ in range(G)]


def time_to(curve, seconds_at, threshold):
    """The first checkpoint step whose held-out accuracy (curve: {step: accuracy}) is at or above `threshold`,
    with the training seconds through it (seconds_at: {step: cumulative seconds}); None if none is."""
    for step in sorted(curve):
        if curve[step] >= threshold:
            return {"step": step, "seconds": round(seconds_at[step], 1)}
    return None


def cumulative_seconds(records):
    """{step: training seconds through it}: the running sum of each step's time/step."""
    total, out = 0.0, {}
    for r in records:
        total += r["time/step"]
        out[r["step"]] = total
    return out


def ratio_over_seeds(ratios):
    """(geometric mean, low, high) of per-seed ratios: the 95% t-interval of their logs, exponentiated (seeds
    the unit; nan bounds below two seeds)."""
    m, h = mean_ci([math.log(r) for r in ratios])
    return math.exp(m), math.exp(m - h), math.exp(m + h)


class Part:
    """One part of a seed's work, run once: a finished part (its record in parts.json) is not run again."""

    def __init__(self, run_dir):
        self.file = run_dir / "parts.json"
        self.done = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def __call__(self, name, cmd):
        if name not in self.done:
            start = common.provenance()
            wall = common.run(cmd, env=ENV, echo=True, check=True)[1]
            self.done[name] = {"command": " ".join(map(str, cmd)), "start": start, "end": common.provenance(),
                               "wall_s": round(wall, 1)}
            self.file.write_text(json.dumps(self.done, indent=1) + "\n")
        return self.done[name]


def run_seed(args, seed, position, cfg, benchmarks):
    """Both trainers on one seed and every evaluation; returns the seed's summary."""
    run_dir = Path(args.runs) / f"seed_{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    part, py, E = Part(run_dir), sys.executable, args.every
    ours, trl = run_dir / "train_py", run_dir / "trl"
    trl.mkdir(exist_ok=True)
    commands = {
        "train.py": [py, "train.py", "--config", args.config, f"seed={seed}", f"out_dir={ours}", f"save_every={E}",
                     f"keep_checkpoints={cfg.steps // E}", "eval.every=0"],
        "TRL GRPOTrainer": [args.trl_python, __file__, "--trl-worker", "--seeds", seed, "--config", args.config,
                            "--runs", args.runs, "--every", E] + (["--trl-vllm"] if args.trl_vllm else [])}
    for name in TRAINERS if position % 2 == 0 else TRAINERS[::-1]:
        part(name, commands[name])
    order = sorted(TRAINERS, key=lambda name: part.done[name]["start"]["date"])  # as they ran (a part re-run moves)

    # ---- eval.py, the same command on the start model and every checkpoint of both ----
    def heldout(name, model):
        out = run_dir / f"eval_{name}"
        part(f"eval {name}", common.eval_command(model, benchmarks, out, n=1, temperature=0.0, limit=args.limit,
                                                  max_tokens=cfg.rollout.max_tokens, template="chat",
                                                  dtype="float32", seed=seed))
        return {lv: v["accuracy"] for lv, v in level_accuracy(plot.read_metrics(out / "records.jsonl")).items()}

    steps = range(E, cfg.steps + 1, E)
    base = heldout("base", cfg.model.path)
    levels = {"train.py": {s: heldout(f"train_py_{s}", ours / "checkpoints" / f"step_{s:06d}" / "model") for s in steps},
              "TRL GRPOTrainer": {s: heldout(f"trl_{s}", trl / "checkpoints" / f"checkpoint-{s}") for s in steps}}

    # ---- the threshold and the time to it ----
    mean = lambda acc: sum(acc.values()) / len(acc)  # noqa: E731  (over the trained levels)
    curves = {name: {s: mean(acc) for s, acc in levels[name].items()} for name in TRAINERS}
    records = {"train.py": plot.read_metrics(ours / "metrics.jsonl"), "TRL GRPOTrainer": plot.read_metrics(trl / "metrics.jsonl")}
    gain = min(curves[name][cfg.steps] - mean(base) for name in TRAINERS)
    threshold = mean(base) + gain / 2 if gain > 0 else None
    summary = {"command": "python -m scripts.trl_learn " + " ".join(sys.argv[1:]), "config": args.config,
               "seed": seed, "order": list(order), "every": E, "limit": args.limit,
               "benchmarks": [str(b) for b in benchmarks],
               "trl_generation": "vllm colocate" if args.trl_vllm else "transformers generate",
               "same_prompts": same_prompts(plot.read_metrics(trl / "rewarded.jsonl"), drawn_prompts(cfg), cfg.G),
               "train_py_skipped_prompts": sum(r.get("gen/skipped_prompts", 0) for r in records["train.py"]),
               "parts": [dict(name=n, **p) for n, p in part.done.items()],
               "base": base, "threshold": threshold, "trainers": {}}
    for name in TRAINERS:
        times, seconds_at = [r["time/step"] for r in records[name]], cumulative_seconds(records[name])
        summary["trainers"][name] = {
            "steps": len(times), "train_seconds": round(sum(times), 1), "median_step_s": statistics.median(times),
            "heldout": {str(s): acc for s, acc in levels[name].items()},
            "heldout_mean": {str(s): v for s, v in curves[name].items()},
            "time_to_threshold": None if threshold is None else time_to(curves[name], seconds_at, threshold)}
    a, b = (summary["trainers"][n]["time_to_threshold"] for n in TRAINERS)
    summary["time_to_threshold_ratio"] = round(a["seconds"] / b["seconds"], 4) if a and b else None
    summary["median_step_ratio"] = round(summary["trainers"]["train.py"]["median_step_s"]
                                         / summary["trainers"]["TRL GRPOTrainer"]["median_step_s"], 4)
    doc_dir = Path(args.out) / f"seed_{seed}"
    doc_dir.mkdir(parents=True, exist_ok=True)
    (doc_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (doc_dir / "train_py_metrics.jsonl").write_text((ours / "metrics.jsonl").read_text())
    (doc_dir / "trl_metrics.jsonl").write_text((trl / "metrics.jsonl").read_text())
    return summary


def draw(doc_dir, path):
    """Both trainers, every seed under doc_dir (a line per seed): held-out accuracy on the trained levels at
    each checkpoint against training seconds and against steps, and train accuracy against steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for seed_dir in sorted(Path(doc_dir).glob("seed_*")):
        s = json.loads((seed_dir / "summary.json").read_text())
        base = sum(s["base"].values()) / len(s["base"])
        style = "-" if s["order"][0] == "train.py" else "--"
        for name, file, color in zip(TRAINERS, ("train_py_metrics.jsonl", "trl_metrics.jsonl"), ("C0", "C3")):
            recs, label = plot.read_metrics(seed_dir / file), f"{name}, seed {s['seed']}"
            seconds_at = cumulative_seconds(recs)
            curve = {int(k): v for k, v in s["trainers"][name]["heldout_mean"].items()}
            ax[0].plot([0, *(seconds_at[k] for k in curve)], [base, *curve.values()], "o" + style, color=color,
                       label=label)
            ax[1].plot([0, *curve], [base, *curve.values()], "o" + style, color=color, label=label)
            ax[2].plot(*plot.curve(recs, "score_mean", smooth=3), style, color=color, label=label)
        if s["threshold"] is not None:
            ax[0].axhline(s["threshold"], color="grey", lw=0.8, ls=style)
    ax[0].set(xlabel="training seconds (sum of step times)", ylabel="held-out greedy accuracy, trained levels")
    ax[1].set(xlabel="step", ylabel="held-out greedy accuracy, trained levels")
    ax[2].set(xlabel="step", ylabel="train accuracy (3-step mean)", ylim=(0, 1))
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", help="an interpreter with trl installed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--config", default="configs/experiments/smol_learn.yaml")
    ap.add_argument("--every", type=int, default=5, help="steps between checkpoints (both trainers)")
    ap.add_argument("--limit", type=int, default=50, help="held-out problems per trained level, greedy")
    ap.add_argument("--trl-vllm", action="store_true", help="TRL samples with vLLM (colocate), not generate")
    ap.add_argument("--runs", default="runs/trl_learn", help="checkpoints and eval records (git-ignored)")
    ap.add_argument("--out", default="docs/trl_learn", help="summaries and metrics (committed)")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        return trl_worker(args.config, args.seeds[0], Path(args.runs) / f"seed_{args.seeds[0]}" / "trl",
                          args.every, args.trl_vllm)
    if not args.trl_python:
        sys.exit("trl_learn: pass --trl-python (an interpreter with trl installed; see the module docstring)")
    import tiny
    from config import load_config
    cfg = load_config(args.config)
    if cfg.steps % args.every:
        sys.exit(f"trl_learn: --every {args.every} does not divide the config's {cfg.steps} steps")
    trained = {f"level{lv}" for lv in tiny.parse_levels(cfg.data.train.partition(":")[2])}
    benchmarks = [p for p in tiny.write_arith_heldout("runs/arith") if p.stem in trained]
    summaries = [run_seed(args, seed, i, load_config(args.config, [f"seed={seed}"]), benchmarks)
                 for i, seed in enumerate(args.seeds)]
    for s in summaries:
        for name in TRAINERS:
            t = s["trainers"][name]
            print(f"seed {s['seed']} {name:16} {t['train_seconds']:.0f} s training (median {t['median_step_s']:.1f} "
                  f"s/step); held-out {' '.join(f'{v:.2f}' for v in t['heldout_mean'].values())}; threshold "
                  f"{s['threshold']} at {t['time_to_threshold']}")
        print(f"seed {s['seed']}: train.py / TRL time to threshold {s['time_to_threshold_ratio']}, same prompts "
              f"{s['same_prompts']}")
    ratios = [s["time_to_threshold_ratio"] for s in summaries]
    if len(ratios) >= 2 and None not in ratios:
        print("over seeds: train.py / TRL time to threshold {:.3f} [{:.3f}, {:.3f}]".format(*ratio_over_seeds(ratios)))


if __name__ == "__main__":
    main()
