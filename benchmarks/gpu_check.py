"""The first thing to run on a new GPU box: two real training steps, and what each rank saw.

    torchrun --nproc_per_node 2 benchmarks/gpu_check.py      # the tiny model (on a CPU machine: 2 gloo ranks)
    python benchmarks/gpu_check.py                           # one process
    torchrun --nproc_per_node 8 benchmarks/gpu_check.py --real-shape configs/daro.yaml --model /models/Qwen2.5-Math-1.5B

Each rank runs train.py as a child process that inherits torchrun's rank environment (RANK, WORLD_SIZE,
MASTER_ADDR/PORT, ...), so the children form the process group exactly as `torchrun train.py` would; train.py
runs with `diagnostics=true` and writes out_dir/diagnostics/rank_R.jsonl, which this script prints per rank:
the trainer's device and its engine's device, the backend of each collective used, and at the last step the
engine-vs-trainer log-prob mismatch (mean and max |delta| over response tokens), weight-sync seconds, memory
after each phase (peak since the previous phase, allocated, reserved, device-used), vLLM KV-cache blocks, phase
timers, the padding share of the micro-batches, the LM-head kernel's share of the train time, the gradient-
checkpoint recomputes and the tokens of the longest micro-batch the config allows, which every step runs through
forward and backward (at zero weight) while the engine sleeps, before the update. Extra arguments are train.py
config overrides. The default config is the tiny random model (configs/experiments/tiny.yaml; the model is built
beside the run dir unless model.path is given), in bfloat16 on GPUs and float32 on CPUs.

--real-shape CONFIG: any GPU config as it stands (its model, dtype, lengths, micro-batches, checkpointing), for
2 steps of 2 x world-size prompts and eval.limit problems per benchmark; it fails (exit 1) when the config
checkpoints and no recompute was counted, and when a phase's measured peak exceeds the memory plan's
(memory.py) by more than 10%: each rank prints plan and measurement side by side, phase by phase, so that the
first GPU run corrects the plan's assumptions in one look. Then rank 0 resumes the run for a third step at
another world size (1 process after N; 2 ranks after 1 where a second device exists) and prints that step too.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import memory  # noqa: E402
from config import TrainConfig, from_dict  # noqa: E402
from scripts import common  # noqa: E402
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def overrides(out_dir, steps, extra):
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return [f"out_dir={out_dir}", f"steps={steps}", "save_every=0", "prompts_per_step=8", "G=4",
            "micro_batch_size=6", "rollout.engine=vllm", "rollout.max_tokens=8", "rollout.temperature=1.0",
            f"model.dtype={dtype}", "eval.every=0", "diagnostics=true", *extra]


def real_shape_overrides(out_dir, steps, world_size, eval_limit, extra):
    """A GPU config as it stands, for a few steps: 2 prompts per rank, eval at the last step on eval_limit problems."""
    return [f"out_dir={out_dir}", f"steps={steps}", "save_every=0", f"prompts_per_step={2 * world_size}",
            f"eval.limit={eval_limit}", "diagnostics=true", *extra]


def fmt_mem(mem):
    if not any(mem.values()):
        return "n/a (no CUDA device)"
    return ", ".join(f"{phase} {m['peak']:.2f}/{m['allocated']:.2f}/{m['reserved']:.2f}/{m['device_used']:.2f}"
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
             f"step {step}: memory GiB peak/allocated/reserved/device-used after {fmt_mem(rec['mem'])}",
             f"step {step}: seconds rollout {rec['time/rollout']:.3f}, verify {rec['time/verify']:.3f}, "
             f"train {rec['time/train']:.3f}, sync {rec['time/sync']:.3f}",
             f"step {step}: padding share of micro-batches {f(rec['padding_share'], '.3f')}; "
             f"LM-head kernel share of train time {f(rec['lm_head_share'], '.3f')}",
             f"step {step}: longest micro-batch {rec['longest_micro_batch_tokens']} tokens (forward + backward, engine "
             f"asleep); checkpoint recomputes {rec['checkpoint_recomputes']}"]
    return "".join(f"[rank {rank}] {line}\n" for line in lines)


def run_train(cmd, log, env):
    """train.py as a child process, its output in `log`; returns its exit status (and prints its end on failure)."""
    rc = common.run(cmd, log, env=env, append=False)[0]
    if rc != 0:
        sys.stdout.write(f"train.py failed (exit {rc}); the end of {log}:\n"
                         + "".join(Path(log).read_text().splitlines(True)[-40:]))
    return rc


def last_record(out, rank):
    return json.loads((out / "diagnostics" / f"rank_{rank}.jsonl").read_text().splitlines()[-1])


def check_recomputes(rank, rec, cfg):
    """Exit status 1 (and a line saying why) when the config checkpoints but no recompute was counted."""
    if cfg["model"]["gradient_checkpointing"] and not rec["checkpoint_recomputes"]:
        sys.stdout.write(f"[rank {rank}] FAIL: model.gradient_checkpointing is on but no decoder layer was recomputed "
                         f"in the backward: checkpointing did not engage\n")
        return 1
    return 0


GIB = 2**30
TOLERANCE = 0.10  # a measured phase may exceed its plan by this share before gpu_check fails
PHASES = {"rollout": ("rollout",), "update": ("longest_micro_batch", "train"), "sync": ("sync",)}
OUTSIDE_ALLOCATOR = ("vLLM engine", "engine", "CUDA context", "NCCL")  # plan terms torch's allocator may not see


def measured_phase(mem, names):
    """Bytes a phase used on the device: the allocator's peak over the phase plus what the device held beyond the
    allocator's live tensors at its end (device_used - allocated: the engine's own memory, the CUDA context, NCCL
    buffers, cached blocks), from the diagnostics' GiB; the largest over the phase's records. None without CUDA."""
    got = [mem[n] for n in names if mem.get(n)]
    if not got:
        return None
    return max((m["peak"] + m["device_used"] - m["allocated"]) * GIB for m in got), \
        max(m["peak"] * GIB for m in got), max((m["device_used"] - m["allocated"]) * GIB for m in got)


def compare_memory(p, mem, tolerance=TOLERANCE):
    """(lines, ok): the plan `p` (memory.Plan) against one rank's measured memory per phase (the diagnostics'
    `mem`: GiB peak / allocated / reserved / device_used per phase), side by side, in GB: the total, and its two
    parts (the allocator's peak against the plan's allocator terms; the rest of the device against the plan's
    engine, context and NCCL terms). ok is False when a measured total exceeds the plan by more than `tolerance`."""
    lines = [f"memory, GB: {'phase':8} {'plan':>7} {'measured':>9} {'ratio':>6}   allocator: plan / measured   "
             "outside it: plan / measured"]
    ok = True
    for phase, names in PHASES.items():
        ph = p.phase(phase)
        got = measured_phase(mem, names)
        outside = sum(t.bytes for t in ph.terms if t.name.startswith(OUTSIDE_ALLOCATOR))
        planned = ph.total()
        if got is None:
            lines.append(f"memory, GB: {phase:8} {planned / 1e9:7.2f} {'n/a':>9} (no CUDA device: not compared)")
            continue
        total, peak, rest = got
        bad = total > (1 + tolerance) * planned
        ok &= not bad
        lines.append(f"memory, GB: {phase:8} {planned / 1e9:7.2f} {total / 1e9:9.2f} {total / planned:6.2f}   "
                     f"{(planned - outside) / 1e9:9.2f} / {peak / 1e9:6.2f}   {outside / 1e9:12.2f} / "
                     f"{rest / 1e9:6.2f}" + (f"   FAIL: above the plan by more than {tolerance:.0%}" if bad else ""))
    return lines, ok


def check_memory(rank, rec, out, model, world_size):
    """Exit status 1 (and the side-by-side lines) when a phase's measured memory exceeds the plan by > 10%."""
    import torch
    cfg = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
    card = torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else memory.CARD_BYTES
    try:
        p = memory.plan(cfg, memory.read_model_config(model or cfg.model.path), world_size, card, advise=False)
    except memory.PlanError as e:
        sys.stdout.write(f"[rank {rank}] memory plan: {e}\n")
        return 1
    lines, ok = compare_memory(p, rec["mem"])
    sys.stdout.write("".join(f"[rank {rank}] {line}\n" for line in lines))
    return 0 if ok else 1


def resume_elsewhere(args, out, train_args, world_size):
    """Rank 0: one more step of the run from its last checkpoint at another world size (1 process after N ranks;
    2 ranks after 1 when a second device exists, else 1 again, said so). Returns its exit status."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and not k.startswith("TORCHELASTIC")}
    env["PYTHONUNBUFFERED"] = "1"
    second = not torch.cuda.is_available() or torch.cuda.device_count() >= 2
    new_size = 1 if world_size > 1 or not second else 2
    launch = [sys.executable] if new_size == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                     "--nproc_per_node", "2", "--master_port", str(args.resume_port)]
    note = "" if new_size != world_size else " (the same: no second device)"
    if torch.cuda.is_available():  # a model too large for the other world size (the 7B on one GPU): say so, skip
        cfg = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
        p = memory.plan(cfg, memory.read_model_config(args.model or cfg.model.path), new_size,
                        torch.cuda.mem_get_info()[1], advise=False)
        if not p.fits():
            sys.stdout.write(f"[resume] skipped: the memory plan does not fit world size {new_size}\n")
            return 0
    sys.stdout.write(f"[resume] step {args.steps + 1} from step {args.steps}'s checkpoint at world size "
                     f"{new_size}{note}\n")
    rc = run_train([*launch, str(ROOT / "train.py"), *train_args(args.steps + 1), "--resume"],
                   out.parent / f"{out.name}.resume.log", env)
    if rc == 0:
        rec = last_record(out, 0)
        sys.stdout.write(report("0, resumed", rec))
        if rec["world_size"] != new_size or rec["step"] != args.steps + 1:
            sys.stdout.write(f"[resume] FAIL: expected step {args.steps + 1} at world size {new_size}\n")
            return 1
    return rc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="run dir (removed first)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--real-shape", metavar="CONFIG", help="a GPU config, run as it stands (see above)")
    ap.add_argument("--model", help="model.path for --real-shape (a local directory on machines without the hub)")
    ap.add_argument("--eval-limit", type=int, default=8, help="--real-shape: problems per eval benchmark")
    ap.add_argument("--resume-port", type=int, default=29517, help="--real-shape: master port of a 2-rank resume")
    ap.add_argument("overrides", nargs="*", help="train.py key.sub=value overrides")
    args = ap.parse_args(argv)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    out = Path(args.out).resolve()
    if rank == 0:  # the children meet in the process group before any of them touches out_dir
        shutil.rmtree(out, ignore_errors=True)
    log = out.parent / f"{out.name}.rank{rank}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.real_shape:
        extra = [*([f"model.path={args.model}"] if args.model else []), *args.overrides]

        def train_args(steps):
            return ["--config", str(Path(args.real_shape).resolve()),
                    *real_shape_overrides(out, steps, world_size, args.eval_limit, extra)]
    else:
        extra = args.overrides
        if not any(o.startswith("model.path=") for o in extra):  # the tiny model, built beside the run per rank
            from tiny import build_synthetic
            extra = [f"model.path={build_synthetic(out.parent / f'{out.name}.tiny_model.rank{rank}')}", *extra]

        def train_args(steps):
            return ["--config", str(ROOT / "configs/experiments/tiny.yaml"), *overrides(out, steps, extra)]
    t0 = time.perf_counter()
    rc = run_train([sys.executable, str(ROOT / "train.py"), *train_args(args.steps)], log, env)
    if rc != 0:
        return rc
    rec = last_record(out, rank)
    sys.stdout.write(report(rank, rec) + f"[rank {rank}] train.py ran {time.perf_counter() - t0:.1f} s "
                     f"(load average {os.getloadavg()[0]:.1f}); log {log}\n")
    if not args.real_shape:
        return 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    sys.stdout.write(f"[rank {rank}] real shape: {args.real_shape}, model {cfg['model']['path']} in "
                     f"{cfg['model']['dtype']} (rollout.dtype {cfg['rollout']['dtype']}), gradient checkpointing "
                     f"{cfg['model']['gradient_checkpointing']}, micro-batches of {cfg['micro_batch_tokens']} tokens "
                     f"/ {cfg['micro_batch_size']} rows\n")
    rc = check_recomputes(rank, rec, cfg)
    rc = check_memory(rank, rec, out, args.model, world_size) or rc
    if rank == 0 and rc == 0:
        rc = resume_elsewhere(args, out, train_args, world_size)
    return rc


if __name__ == "__main__":
    sys.exit(main())
