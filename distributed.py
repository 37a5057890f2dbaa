"""torch.distributed in one place: the process group, who this process is, the collectives the trainer
uses, and the rank-aware parts of checkpoints (DCP, agreement on which one to resume, RNG states).

There is always a process group while training: `python train.py` becomes rank 0 of a group of one (as
`torchrun --nproc_per_node 1` would), so the model is sharded and cast the same way (FSDP2 with a
mixed-precision policy) at any world size, and one process and N ranks differ only in the number of shards.

Backends: on GPUs one group with two backends, "cpu:gloo,cuda:nccl": nccl carries the CUDA tensors (FSDP's
all-gathers and reduce-scatters, the gradient norm), gloo the CPU tensors (rewards and lengths, the
micro-batch plan, loss statistics, token counts, object collectives, barriers, DCP's planning); nccl has no
CPU path. On CPUs, gloo alone. The functions also work with no group at all (then collectives are no-ops).
"""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

_ENV_SET = []     # environment variables init_distributed set for a run without torchrun (undone at shutdown)
BACKENDS_USED = {}  # "all_reduce cpu" -> "gloo": which backend served each collective (benchmarks/gpu_check.py)


def backend_string(cuda):
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed():
    """Join torchrun's process group, or without torchrun make a group of one on a free local port (and set
    RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT as torchrun would: vLLM's external launcher reads them).
    Returns this rank's device: cuda:LOCAL_RANK on GPUs, made current BEFORE the group exists so that nccl
    binds its communicators to it; else the CPU."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    if "RANK" in os.environ:
        dist.init_process_group(backend_string(cuda))
        return device
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True)  # port 0: the OS picks a free one, no race
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port)}
    for k, v in env.items():
        if k not in os.environ:
            os.environ[k] = v
            _ENV_SET.append(k)
    dist.init_process_group(backend_string(cuda), store=store, rank=0, world_size=1)
    return device


def shutdown_distributed():
    """Destroy the group and undo init_distributed's environment, so that a later run in this process
    (the tests run several) starts as fresh as a new process."""
    if dist.is_initialized():
        dist.destroy_process_group()
    while _ENV_SET:
        os.environ.pop(_ENV_SET.pop(), None)


def world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def backend_of(device):
    """The name of the backend that serves collectives on tensors of `device` ("gloo", "nccl")."""
    return dist.group.WORLD._get_backend(torch.device(device)).name()


def note_backend(op, device):
    """Remember which backend serves collective `op` on `device` (gpu_check.py prints them)."""
    BACKENDS_USED.setdefault(f"{op} {torch.device(device).type}", backend_of(device))


def several():
    """Whether other ranks take part: in a group of one, collectives are skipped (they would copy only)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t, op=None):
    if dist.is_initialized():
        note_backend("all_reduce", t.device)
    if several():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather(obj):
    """Every rank's picklable `obj`, in rank order (an object collective: pickled into CPU tensors)."""
    if not dist.is_initialized():
        return [obj]
    note_backend("all_gather_object", dist.distributed_c10d._get_object_coll_device())
    if not several():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src=0):
    """Rank src's picklable `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    note_backend("broadcast_object", dist.distributed_c10d._get_object_coll_device())
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier():
    if dist.is_initialized():
        note_backend("barrier", dist.distributed_c10d._get_object_coll_device())
        dist.barrier()


def interleaved(counts):
    """The global order of groups held by ranks: (rank, q) pairs, q-major, so that rank r's q-th group
    sits at q * world + r when shares are equal; the same order for any number of ranks."""
    return [(r, q) for q in range(max(counts, default=0)) for r in range(len(counts)) if q < counts[r]]


def memory_gib(device):
    """GiB on a CUDA device: the peak allocated by this process's caching allocator since the previous call
    (torch.cuda.max_memory_allocated, whose counter this call resets: called after each phase, it gives that
    phase's peak), allocated and reserved now, and in use on the whole device (total - free, the engine's own
    allocations and other processes included); None on CPUs."""
    if torch.device(device).type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return {"peak": peak, "allocated": torch.cuda.memory_allocated(device) / 2**30,
            "reserved": torch.cuda.memory_reserved(device) / 2**30, "device_used": (total - free) / 2**30}


def free_cached_memory(device):
    """Give the allocator's cached, unused blocks back to the driver: vLLM re-maps its weights and KV cache
    when it wakes, and it can only use memory the trainer's cache does not hold."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def write_diagnostics(run_dir, record):
    """One line per step in out_dir/diagnostics/rank_R.jsonl (cfg.diagnostics; benchmarks/gpu_check.py)."""
    rank, world_size = world()
    path = Path(run_dir) / "diagnostics" / f"rank_{rank}.jsonl"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"rank": rank, "world_size": world_size, **record, "backends": BACKENDS_USED}) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints.

# checkpoints/step_N/ (written by train.save_checkpoint) holds
#   model/      Hugging Face safetensors of the full float32 weights (+ tokenizer): eval.py, transformers, vLLM
#   dcp/        torch.distributed.checkpoint of the sharded training state, {"model", "optim"}: each rank writes
#               its own shards and reads back the ones it needs, so a checkpoint resumes at any world size
#   trainer.pt  step, world size, scheduler, data position, scheme state, the RNG states of every rank
# It is written into .tmp_step_N and renamed; `latest` is replaced last, so a crash at any point leaves the
# previous checkpoint. DCP needs one out_dir that every rank sees (on several nodes: a shared filesystem).
CKPT_FILES = ("trainer.pt", "dcp/.metadata", "model/config.json")


class CheckpointError(RuntimeError):
    pass


def write_failed(tmp, error):
    """The one-line CheckpointError for a checkpoint write into `tmp` that raised `error` (a full disk reaches
    torch.save as "unexpected pos ..."): the free space on that disk and the error's last line. The partial
    directory is removed; `latest` still names the previous checkpoint."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(Path(tmp).parent).free / 2**30
    last = [line.strip() for line in str(error).splitlines() if line.strip()]
    return CheckpointError(f"writing {tmp} failed with {free:.1f} GiB free on its disk "
                           f"({type(error).__name__}: {last[-1] if last else 'no message'}); the previous "
                           "checkpoint is kept and --resume continues from it")


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(states, seed, step):
    """This rank's RNG states from a checkpoint's list (one per rank) when the world size is unchanged
    (bit-for-bit resume); with another world size each rank reseeds from (seed, step, rank) instead."""
    rank, world_size = world()
    if len(states) != world_size:
        s = np.random.SeedSequence([seed, step, rank]).generate_state(3)
        torch.manual_seed(int(s[0]))
        random.seed(int(s[1]))
        np.random.seed(int(s[2]))
        return
    rng = states[rank]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def sharded_state(module, optimizer):
    """{"model", "optim"}: this rank's shards, as DTensors (an untouched optimizer gets its state allocated
    by a zero step at lr 0, so that DCP has tensors to load into)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(module, optimizer)
    note_backend("dcp planning (object collectives)", dist.distributed_c10d._get_object_coll_device())
    return {"model": model_sd, "optim": optim_sd}


def save_sharded(module, optimizer, path):
    """Every rank writes its shards of the model and optimizer state into `path` (DCP); returns once rank 0
    has written the metadata. A failed write raises write_failed's CheckpointError for path's directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: `except Exception` misses it
    try:
        dcp.save(sharded_state(module, optimizer), checkpoint_id=path)  # raises on every rank when any rank's fails
    except (OSError, RuntimeError, CheckpointException) as e:
        raise write_failed(Path(path).parent, e) from None


def load_sharded(module, optimizer, path):
    """Load what save_sharded wrote, at any world size (DCP reshards), into the module and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict
    sd = sharded_state(module, optimizer)
    dcp.load(sd, checkpoint_id=path)  # fills this rank's shards in place
    set_state_dict(module, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def full_model_state(model):
    """The full (unsharded) state dict, gathered on rank 0's CPU (empty on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_every_rank_reads(ckpt, context):
    """Raise on every rank (none is left waiting in a collective) when any rank lacks a file of `ckpt`,
    naming the ranks and files."""
    missing = [str(Path(ckpt) / f) for f in CKPT_FILES if not (Path(ckpt) / f).is_file()]
    bad = [f"rank {r} cannot read {m[0]}" for r, m in enumerate(all_gather(missing)) if m]
    if bad:
        raise CheckpointError(f"{context}: {'; '.join(bad)}. Every rank must see the same out_dir "
                              "(on several nodes: a filesystem they all mount)")


def publish(ckpt_root, tmp, final, keep):
    """Rank 0: rename the finished temp dir, point `latest` at it, and keep it and the `keep` - 1 others
    of highest step (a fresh run into an earlier run's out_dir may find higher steps there: the checkpoint
    just written is never the one dropped)."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (ckpt_root / "latest.tmp").write_text(final.name)
    os.replace(ckpt_root / "latest.tmp", ckpt_root / "latest")
    others = [p for p in sorted(ckpt_root.glob("step_*")) if p.name != final.name]
    for old in (others[:max(0, len(others) - (keep - 1))] if keep > 0 else []):  # never a negative slice end
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir):
    pointer = Path(run_dir) / "checkpoints" / "latest"
    return Path(run_dir) / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def agree_on_checkpoint(run_dir):
    """The checkpoint to resume from, the same on every rank: rank 0 reads `latest` and decides, every rank
    checks that it can read that one; a rank that cannot stops the run on all ranks, named in the error."""
    mine = latest_checkpoint(run_dir) if world()[0] == 0 else None
    name = broadcast(mine.name if mine is not None else None)
    if name is None:
        return None
    ckpt = Path(run_dir) / "checkpoints" / name
    check_every_rank_reads(ckpt, f"--resume: rank 0 chose {ckpt}")
    return ckpt
