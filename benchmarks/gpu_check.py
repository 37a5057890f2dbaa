"""The first thing to run on a new GPU box: two real training steps of a small config, and what each rank saw.

    torchrun --nproc_per_node 2 benchmarks/gpu_check.py                 # 2 GPUs (on a CPU machine: 2 gloo ranks)
    python benchmarks/gpu_check.py                                      # one process
    torchrun --nproc_per_node 2 benchmarks/gpu_check.py model.path=/models/Qwen2.5-Math-1.5B rollout.max_tokens=256

Each rank runs train.py as a child process that inherits torchrun's rank environment (RANK, WORLD_SIZE,
MASTER_ADDR/PORT, ...), so the children form the process group exactly as `torchrun train.py` would; train.py
runs with `diagnostics=true` and writes out_dir/diagnostics/rank_R.jsonl, which this script prints per rank:
the trainer's device and its engine's device, the backend of each collective used, and at the last step the
engine-vs-trainer log-prob mismatch (mean and max |delta| over response tokens), weight-sync seconds, memory
after each phase (rollout, train, sync), vLLM KV-cache blocks, phase timers, the padding share of the
micro-batches and the LM-head kernel's share of the train time. Extra arguments are train.py config overrides.
The default config is the tiny random model (configs/tiny.yaml), in bfloat16 on GPUs and float32 on CPUs.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def overrides(out_dir, steps, extra):
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return [f"out_dir={out_dir}", f"steps={steps}", "save_every=0", "prompts_per_step=8", "G=4",
            "micro_batch_size=6", "rollout.engine=vllm", "rollout.max_tokens=8", "rollout.temperature=1.0",
            f"model.dtype={dtype}", "eval.every=0", "diagnostics=true", *extra]


def fmt_mem(mem):
    if not any(mem.values()):
        return "n/a (no CUDA device)"
    return ", ".join(f"{phase} {m['allocated']:.2f}/{m['reserved']:.2f}/{m['device_used']:.2f}"
                     for phase, m in mem.items())


def report(rank, rec):
    """The lines of one rank's last diagnostics record."""
    f = lambda x, spec=".3g": "n/a" if x is None else format(x, spec)  # noqa: E731
    step = rec["step"]
    lines = [f"trainer device {rec['device']} | engine device {rec['engine_device']} | world size {rec['world_size']}",
             "collectives: " + "; ".join(f"{op} -> {b}" for op, b in sorted(rec["backends"].items())),
             f"step {step}: log-prob |engine - trainer| mean {f(rec['logprob_delta_mean'])} "
             f"max {f(rec['logprob_delta_max'])} over {rec['logprob_tokens']} response tokens",
             f"step {step}: weight sync {rec['time/sync']:.3f} s; vLLM KV-cache blocks {rec.get('kv_cache_blocks')}",
             f"step {step}: memory GiB allocated/reserved/device-used after {fmt_mem(rec['mem'])}",
             f"step {step}: seconds rollout {rec['time/rollout']:.3f}, verify {rec['time/verify']:.3f}, "
             f"train {rec['time/train']:.3f}, sync {rec['time/sync']:.3f}",
             f"step {step}: padding share of micro-batches {f(rec['padding_share'], '.3f')}; "
             f"LM-head kernel share of train time {f(rec['lm_head_share'], '.3f')}"]
    return "".join(f"[rank {rank}] {line}\n" for line in lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="run dir (removed first)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="train.py key.sub=value overrides")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    out = Path(args.out).resolve()
    if rank == 0:  # the children meet in the process group before any of them touches out_dir
        shutil.rmtree(out, ignore_errors=True)
    log = out.parent / f"{out.name}.rank{rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
           *overrides(out, args.steps, args.overrides)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.stdout.write(f"[rank {rank}] train.py failed (exit {rc}); the end of {log}:\n"
                         + "".join(log.read_text().splitlines(True)[-40:]))
        return rc
    records = [json.loads(line) for line in (out / "diagnostics" / f"rank_{rank}.jsonl").read_text().splitlines()]
    sys.stdout.write(report(rank, records[-1]) + f"[rank {rank}] train.py ran {time.perf_counter() - t0:.1f} s "
                     f"(load average {os.getloadavg()[0]:.1f}); log {log}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
