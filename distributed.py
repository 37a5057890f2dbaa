"""torch.distributed in one place: who this process is, and the few collectives the trainer uses.
Every function also works in one process without torch.distributed (the collectives are then no-ops).
"""
import os

import torch
import torch.distributed as dist


def init_distributed():
    """Join torchrun's process group when launched by torchrun (RANK is set), else stay one process.
    Returns this rank's device: cuda:LOCAL_RANK on GPUs (made the current device), else the CPU."""
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_reduce(t, op=None):
    if dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def interleaved(counts):
    """The global order of groups held by ranks: (rank, q) pairs, q-major, so that rank r's q-th group
    sits at q * world + r when shares are equal; the same order for any number of ranks."""
    return [(r, q) for q in range(max(counts, default=0)) for r in range(len(counts)) if q < counts[r]]
