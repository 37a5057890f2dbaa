"""The distributed paths of train.py, run in one process or under torchrun; tests/test_distributed.py reads
the JSON each rank writes. Modes:
  save     train one step from the base model, checkpoint it (DCP + HF export), dump the full states
  checks   (2 ranks) the backends, all ranks agreeing on the checkpoint, an over-long prompt skipped and counted,
           the weight sync's cast to the engine's dtype before the gather
  load     load a checkpoint written at any world size into a fresh trainer, compare the full model and AdamW
           states with the saved ones bit for bit, take one more step and dump the states after it

    python tests/dist_checks.py WORK_DIR MODEL_DIR TASK...     (TASK: checks, save:TAG, load:TAG)
"""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402
from config import load_config  # noqa: E402
from data import PromptStream  # noqa: E402
from dist_step import fixed_batch  # noqa: E402
from distributed import (BACKENDS_USED, CKPT_FILES, CheckpointError, agree_on_checkpoint,  # noqa: E402
                         all_reduce, backend_of, full_model_state, init_distributed, latest_checkpoint,
                         shutdown_distributed, world)

OVERRIDES = ["prompts_per_step=4", "G=4", "micro_batch_size=3", "optim.lr=1e-2", "optim.warmup_steps=1",
             "optim.weight_decay=0.1", "rollout.max_tokens=8", "rollout.engine=hf", "rollout.template=plain",
             "reward.kind=first_char", "reward.workers=0"]


def full_states(tr):
    """The full model and AdamW state (rank 0's CPU; empty dicts elsewhere), keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    optim = get_optimizer_state_dict(tr.policy, tr.optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": full_model_state(tr.policy.model), "optim": optim.get("state", {}),
            "param_groups": optim.get("param_groups"), "last_epoch": tr.scheduler.last_epoch}


def step_on_fixed_batch(tr, seed):
    cfg = tr.cfg
    prompts, responses, rewards = fixed_batch(cfg.prompts_per_step, cfg.G, seed=seed)
    rank, world_size = world()
    mine = list(range(rank, cfg.prompts_per_step, world_size))
    take = [p * cfg.G + i for p in mine for i in range(cfg.G)]
    batch = train.Batch(prompt_ids=[prompts[t] for t in take], response_ids=[responses[t] for t in take],
                        loss_mask=[[1.0] * len(responses[t]) for t in take], rewards=rewards[mine],
                        correct=rewards[mine] > 0.5)
    return train.train_on_batch(tr, batch)


def equal_states(a, b):
    """Names of the entries that differ (bit for bit) between two full_states."""
    bad = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    for name, st in a["optim"].items():
        bad += [f"optim {name} {k}" for k, v in st.items() if not torch.equal(torch.as_tensor(v),
                                                                             torch.as_tensor(b["optim"][name][k]))]
    if a["param_groups"] != b["param_groups"] or a["last_epoch"] != b["last_epoch"]:
        bad.append("param_groups / scheduler")
    return bad


def mode_save(work, model_dir, device, tag):
    cfg = load_config(None, OVERRIDES + [f"out_dir={work / tag}"])
    tr, tokenizer = train.build_trainer(cfg, model_dir, model_dir, device)
    stream = PromptStream([{"problem": "1+2=", "answer": "3"}] * 10, 0, True)
    stream.take(3)
    step_on_fixed_batch(tr, seed=1)
    ckpt = train.save_checkpoint(work / tag, 1, tr, stream, tokenizer, keep=2)
    states = full_states(tr)
    if world()[0] == 0:
        torch.save(states, work / f"{tag}_states.pt")
    return {"ckpt": str(ckpt)}


def mode_load(work, model_dir, device, tag):
    cfg = load_config(None, OVERRIDES + [f"out_dir={work / 'unused'}"])
    tr, _ = train.build_trainer(cfg, model_dir, model_dir, device)  # the base model: DCP must bring the weights
    stream = PromptStream([{"problem": "1+2=", "answer": "3"}] * 10, 0, True)
    step = train.load_checkpoint(latest_checkpoint(work / tag), tr, stream)
    out = {"step": step, "stream": stream.state_dict(), "lr": tr.optimizer.param_groups[0]["lr"]}
    states = full_states(tr)
    if world()[0] == 0:
        out["differ"] = equal_states(torch.load(work / f"{tag}_states.pt"), states)
    m = step_on_fixed_batch(tr, seed=2)
    states = full_states(tr)
    if world()[0] == 0:
        torch.save(states, work / f"{tag}_after_w{world()[1]}.pt")
    out["loss_after"] = m["loss"]
    return out


def agreement(work):
    """Each rank gets its own run dir, as two nodes with their own disks would. Rank 1's `latest` is stale
    (step 2) while rank 0's says step 4: both resume step 4. Then rank 0 points at step 6, which only rank 0
    has: every rank raises, naming rank 1."""
    rank, _ = world()
    run = work / f"agree_rank{rank}"
    steps = [2, 4, 6] if rank == 0 else [2, 4]
    for s in steps:
        for f in CKPT_FILES:
            (run / "checkpoints" / f"step_{s:06d}" / f).parent.mkdir(parents=True, exist_ok=True)
            (run / "checkpoints" / f"step_{s:06d}" / f).write_text("")
    (run / "checkpoints" / "latest").write_text("step_000004" if rank == 0 else "step_000002")
    first = agree_on_checkpoint(run)
    (run / "checkpoints" / "latest").write_text("step_000006" if rank == 0 else "step_000004")
    try:
        agree_on_checkpoint(run)
        error = None
    except CheckpointError as e:
        error = str(e)
    return {"agreed": first.name, "agreed_dir": str(first.parent.parent), "error": error}


def long_prompt(model_dir):
    """Rank 1 draws an over-long prompt (max_prompt_tokens 10); its engine (max_model_len 16) would refuse it."""
    from rollout import make_engine
    cfg = load_config(None, OVERRIDES + ["data.max_prompt_tokens=10", "rollout.max_model_len=16", "G=2"])
    rows = [{"problem": p, "answer": "0"} for p in ["1+2=", "1+2+3+4+5+6+7+8+9=", "3+4=", "5+6="]]
    engine = make_engine(cfg.rollout, model_dir, seed=world()[0])
    timers = {"rollout": 0.0, "verify": 0.0}
    batch = train.collect_batch(cfg, engine, PromptStream(rows, 0, False), 0, timers)
    engine.close()
    return {"kept": [r["problem"] for r in batch.rows], "groups": len(batch.groups),
            "skipped": batch.info["skipped_prompts"]}


def sync_cast(model_dir, device):
    """Weight sync into a bfloat16 engine: iter_full_parameters casts each rank's float32 shard before the
    gather (the dtypes full_tensor() gathers are recorded), and the full tensors equal the float32 ones
    gathered first and cast afterwards."""
    from torch.distributed.tensor import DTensor

    from config import ModelConfig
    from policy import load_policy
    from rollout import iter_full_parameters
    policy = load_policy(model_dir, ModelConfig(), 1.0, device)
    gathered, full_tensor = [], DTensor.full_tensor
    DTensor.full_tensor = lambda self, **kw: gathered.append(str(self.to_local().dtype)) or full_tensor(self, **kw)
    try:
        cast = list(iter_full_parameters(policy.model, torch.bfloat16))
    finally:
        DTensor.full_tensor = full_tensor
    plain = list(iter_full_parameters(policy.model))
    return {"gathered": sorted(set(gathered)), "names": [n for n, _ in cast] == [n for n, _ in plain],
            "sharded": any(p.to_local().shape != p.shape for p in policy.parameters()),
            "differ": [n for (n, a), (_, b) in zip(cast, plain)
                       if a.dtype != torch.bfloat16 or not torch.equal(a, b.to(torch.bfloat16))]}


def mode_checks(work, model_dir, device):
    out = {"backend": dist.get_backend(), "cpu_backend": backend_of("cpu")}
    out.update(agreement(work))
    out.update(long_prompt(model_dir))
    out["sync_cast"] = sync_cast(model_dir, device)
    all_reduce(torch.ones(1))
    out["used"] = dict(BACKENDS_USED)
    return out


def main(work, model_dir, *tasks):
    work = Path(work)
    device = init_distributed()  # the trainer's own setup: gloo, a group of one without torchrun
    try:
        for task in tasks:
            mode, _, tag = task.partition(":")
            out = {"save": lambda: mode_save(work, model_dir, device, tag),
                   "load": lambda: mode_load(work, model_dir, device, tag),
                   "checks": lambda: mode_checks(work, model_dir, device)}[mode]()
            rank, world_size = world()
            (work / f"{mode}_{tag}_w{world_size}_rank{rank}.json").write_text(json.dumps(out))
    finally:
        gc.collect()  # free FSDP state before its process group (torch 2.13 gloo can abort at exit)
        shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
