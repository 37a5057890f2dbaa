"""torch.distributed in one place: the process group, who this process is, and the collectives the trainer
uses. There is always a process group while training: `python train.py` becomes rank 0 of a group of one
(as `torchrun --nproc_per_node 1` would), so the model is sharded and cast the same way (FSDP2 with a
mixed-precision policy) at any world size, and one process and N ranks differ only in the number of shards.

Backends: on GPUs one group with two backends, "cpu:gloo,cuda:nccl": nccl carries the CUDA tensors (FSDP's
all-gathers and reduce-scatters, the gradient norm), gloo the CPU tensors (rewards and lengths, the
micro-batch plan, loss statistics, token counts, object collectives, barriers, DCP's planning); nccl has no
CPU path. On CPUs, gloo alone. The functions also work with no group at all (then collectives are no-ops).
"""
import os

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


def all_reduce(t, op=None):
    if dist.is_initialized():
        note_backend("all_reduce", t.device)
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_gather(obj):
    """Every rank's picklable `obj`, in rank order (an object collective: pickled into CPU tensors)."""
    if not dist.is_initialized():
        return [obj]
    note_backend("all_gather_object", dist.distributed_c10d._get_object_coll_device())
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
    """GiB on a CUDA device: allocated and reserved by this process's caching allocator, and in use on the
    whole device (total - free, the engine's own allocations and other processes included); None on CPUs."""
    if torch.device(device).type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {"allocated": torch.cuda.memory_allocated(device) / 2**30,
            "reserved": torch.cuda.memory_reserved(device) / 2**30, "device_used": (total - free) / 2**30}


def free_cached_memory(device):
    """Give the allocator's cached, unused blocks back to the driver: vLLM re-maps its weights and KV cache
    when it wakes, and it can only use memory the trainer's cache does not hold."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
