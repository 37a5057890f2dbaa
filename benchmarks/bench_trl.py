"""Seconds per RL step: train.py against TRL's GRPOTrainer at the same setting, side by side in one run.

    python benchmarks/bench_trl.py [--setting tiny|smol] [--steps 12] [--rounds 2] [--trl-python PY] [--only NAMES]

Same model, prompts, G, max new tokens, float32, no KL, GRPO loss, every response trained. Settings:
  tiny   the tiny model of configs/experiments/tiny.yaml, 32 prompts x 8 samples, 4 new tokens, the synthetic sum task
  smol   SmolLM2-135M-Instruct (python -m scripts.smol), 8 GSM8K-style word problems x 8 samples, up to 96 new tokens,
         chat template, rewards from verify.py
train.py runs as users run it (vLLM engine, and the transformers engine), once with its default of leaving
zero-advantage responses out of the training pass and once training every response (skip off), so that a
batch of all-equal rewards does not pass for a faster trainer. TRL's step includes its generation (transformers
`generate`). Runs alternate between the trainers for --rounds rounds, so that load spreads over all of them;
the figure is the median step time after the first two steps of each run (for train.py also the median of
its rollout phase, the engine's generate calls), and the load average is printed.

TRL is not a dependency: install it beside this project's torch, e.g.
    python -m venv --system-site-packages /tmp/trl && /tmp/trl/bin/pip install trl==1.16.0
and pass --trl-python /tmp/trl/bin/python (without it, TRL is skipped with a message).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scripts import common  # noqa: E402

SETTINGS = {
    "tiny": {"prompts": 32, "G": 8, "max_tokens": 4, "lr": 2e-4, "micro_batch_tokens": 0, "trl_micro": 256,
             "share_prompt": True},
    # packed micro-batches (responses end anywhere in 1..96 tokens), each prompt computed once for its 8
    # responses (share_prompt, as configs/experiments/smol.yaml); TRL in micro-batches of 32 x 2 accumulation
    # steps: all 64 at once (its fastest on the arithmetic task, docs/trl_learn) was killed for memory here on
    # these word problems (24 GB resident on a 23 GB machine, 2026-12-06); 16 x 4 is slower
    "smol": {"prompts": 8, "G": 8, "max_tokens": 96, "lr": 1e-6, "micro_batch_tokens": 4096, "trl_micro": 32,
             "share_prompt": True},
}


RUNNERS = {"vllm-skip": "train.py vllm, skip on", "vllm": "train.py vllm, skip off", "hf-skip": "train.py hf, skip on",
           "hf": "train.py hf, skip off", "vllm-unshared": "train.py vllm, skip off, prompts unshared",
           "vllm-compiled": "train.py vllm, skip off, model.compile",
           "vllm-mkl": "train.py vllm, skip off, MKL linears", "trl": "TRL GRPOTrainer"}


def prepare(setting, work):
    """The model directory and the training rows (JSON Lines) both trainers read."""
    if setting == "tiny":
        from tiny import SYNTHETIC_CHARS, build_tiny_model, synthetic_rows
        model = build_tiny_model(work / "model", chars=SYNTHETIC_CHARS)
        rows = synthetic_rows(4096, 0)
    else:
        from scripts.smol import ensure_smollm2
        from tiny import word_problem_rows
        model = ensure_smollm2(ROOT / "models" / "smollm2-135m-instruct")
        rows = word_problem_rows(4096, 0)
    path = work / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(model), str(path)


def run_train_py(setting, model, rows, steps, engine, skip, work, overrides=()):
    s = SETTINGS[setting]
    out = Path(tempfile.mkdtemp(dir=work))
    args = [f"out_dir={out}", f"model.path={model}", f"data.train={rows}", "model.dtype=float32",
            f"steps={steps}", f"prompts_per_step={s['prompts']}", f"G={s['G']}",
            f"rollout.max_tokens={s['max_tokens']}",
            f"rollout.engine={engine}", f"optim.lr={s['lr']}", "optim.warmup_steps=1", "eval.every=0",
            f"save_every={10**9}", "loss.kl_beta=0", f"skip_zero_advantage={str(skip).lower()}",
            f"micro_batch_size={s['prompts'] * s['G']}", f"micro_batch_tokens={s['micro_batch_tokens']}",
            "mini_batches=1", "ppo_epochs=1", f"share_prompt={str(s['share_prompt']).lower()}",
            "rollout.dtype=float32", "model.gradient_checkpointing=false", "optim.weight_decay=0.0"]
    if setting == "tiny":
        args += ["rollout.template=plain", "reward.kind=first_char", "reward.workers=0"]
    else:
        args += ["rollout.template=chat", "reward.kind=math", "reward.workers=0"]
    args += list(overrides)  # the runner's own settings, after (and so over) the common ones
    common.run([sys.executable, ROOT / "train.py", "--config", ROOT / "configs" / "grpo.yaml", *args],
               work / f"{out.name}.log", check=True)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["time/step"], r["time/rollout"]) for r in recs if "time/step" in r]


def trl_worker(setting, model, rows, steps, out):
    """Runs under the TRL interpreter: GRPOTrainer with this project's settings (common.trl_grpo); writes step
    seconds."""
    s = SETTINGS[setting]
    data = [json.loads(line) for line in open(rows)]
    # one generation of prompts x G per optimiser step, trained in micro-batches of trl_micro
    accumulation = s["prompts"] * s["G"] // s["trl_micro"]
    times = common.trl_grpo(model, data, Path(out).parent / "trl_out", chat=setting != "tiny", G=s["G"],
                            batch=s["trl_micro"], accumulation=accumulation, max_tokens=s["max_tokens"], steps=steps,
                            seed=0, learning_rate=s["lr"], logging_steps=10**9, save_strategy="no")
    Path(out).write_text(json.dumps([(t, None) for t in times]))  # TRL's generation is not timed apart


def run_trl(python, setting, model, rows, steps, work):
    out = Path(tempfile.mkdtemp(dir=work)) / "times.json"
    common.run([python, __file__, "--trl-worker", "--setting", setting, "--model", model, "--rows", rows,
                "--steps", steps, "--out", out], out.parent / "trl.log", check=True)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", choices=list(SETTINGS), default="tiny")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trl-python", default=None)
    ap.add_argument("--only", default=None, help=f"comma-separated runners to keep, of {','.join(RUNNERS)}; "
                    "default: all")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        return trl_worker(args.setting, args.model, args.rows, args.steps, args.out)
    unknown = [k for k in (args.only or "").split(",") if k and k.strip() not in RUNNERS]
    if unknown:
        ap.error(f"--only: unknown runners {unknown}; choose from {', '.join(RUNNERS)}")
    if args.trl_python is None:
        print("TRL skipped: pass --trl-python (an interpreter with trl installed; see the module docstring)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, rows = prepare(args.setting, work)
        ours = lambda engine, skip, *overrides: lambda: run_train_py(  # noqa: E731
            args.setting, model, rows, args.steps, engine, skip, work, overrides)
        runners = {"train.py vllm, skip on": ours("vllm", True), "train.py vllm, skip off": ours("vllm", False),
                   "train.py hf, skip on": ours("hf", True), "train.py hf, skip off": ours("hf", False)}
        if SETTINGS[args.setting]["share_prompt"]:  # the figure before prompt sharing, beside it
            runners["train.py vllm, skip off, prompts unshared"] = ours("vllm", False, "share_prompt=false")
        runners["train.py vllm, skip off, model.compile"] = ours("vllm", False, "model.compile=true")  # inductor
        runners["train.py vllm, skip off, MKL linears"] = ours("vllm", False, "model.onednn_linears=false")
        if args.trl_python:
            runners["TRL GRPOTrainer"] = lambda: run_trl(args.trl_python, args.setting, model, rows, args.steps, work)
        if args.only:
            keep = {RUNNERS[k.strip()] for k in args.only.split(",")}
            runners = {name: run for name, run in runners.items() if name in keep}
        times, loads = {name: [] for name in runners}, []
        for _ in range(args.rounds):
            for name, run in runners.items():
                try:
                    times[name] += run()[2:]
                except subprocess.CalledProcessError as e:  # e.g. killed for memory: report, go on
                    print(f"{name} failed: {e}", flush=True)
                loads.append(os.getloadavg()[0])
    s = SETTINGS[args.setting]
    print(f"setting {args.setting}: {s['prompts']} prompts x {s['G']} samples, up to {s['max_tokens']} new tokens, "
          f"float32; {args.rounds} alternating rounds of {args.steps} steps; load average "
          f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    trl = [step for step, _ in times.get("TRL GRPOTrainer", [])]
    base = statistics.median(trl) if trl else None
    for name, ts in times.items():
        if not ts:
            continue
        med = statistics.median(step for step, _ in ts)
        ratio = f"{med / base:.2f}x TRL" if base else ""
        rollout = [r for _, r in ts if r is not None]  # train.py's rollout phase: the engine's generate calls
        rollout = f"rollout {statistics.median(rollout):.3f} s" if rollout else ""
        print(f"  {name:42} {med:8.3f} s/step (median of {len(ts)})  {ratio:10} {rollout}")


if __name__ == "__main__":
    main()
