"""RLVR training: prompts -> rollout (G samples) -> verify (rewards) -> weights (A, W) -> loss -> AdamW
-> weights synced back into the rollout engine. One process, or torchrun with FSDP2 on many GPUs/CPUs.

    python train.py --config configs/tiny.yaml                          # CPU, a few minutes
    torchrun --nproc_per_node 8 train.py --config configs/daro.yaml     # 8 GPUs
    python train.py --config configs/tiny.yaml --resume                 # continue the last checkpoint
    python train.py plot runs/tiny [runs/other ...] --out plots/        # PNG figures from metrics.jsonl
"""
import argparse
import contextlib
import dataclasses
import difflib
import gc
import importlib.util
import json
import math
import os
import random
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from data import DataConfig, PromptStream, load_benchmark, load_rows
from rollout import RolloutConfig, make_engine
from tiny import SYNTHETIC_CHARS, TINY_CHARS, build_tiny_model, first_char_scores, synthetic_rows
import eval as evaluation  # 'eval' is a builtin; the module is eval.py
import verify
from loss import LossConfig, policy_loss, token_logprobs
from weights import SchemeConfig, make_scheme, pass_counts


# ---------------------------------------------------------------------------------------------
# Config: one dataclass tree (each piece's config lives next to its code), filled from yaml and
# overridden on the command line as key.sub=value. Unknown keys and wrong types are errors.

@dataclass
class ModelConfig:
    path: str = "tiny"              # a Hugging Face dir or hub name; "tiny" builds a local random-init model
    dtype: str = "float32"          # trainer parameter dtype: float32 | bfloat16 (GPU: bf16 compute, fp32 reduce)
    gradient_checkpointing: bool = False


@dataclass
class RewardConfig:
    kind: str = "math"              # "math": verify.score_batch; "first_char": the response starts with the answer
    workers: int = 2                # verify.py process pool (0 = score in this process)
    timeout: float = 5.0            # seconds per response, enforced from outside the worker
    overlong_buffer: int = 0        # DAPO soft overlong punishment: L_cache (0 = off); L_max = rollout.max_tokens
    overlong_filter: bool = False   # DAPO overlong filtering: truncated responses get no loss
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill the batch
    max_num_gen_batches: int = 4    # generation rounds per step before dynamic sampling gives up


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 10
    schedule: str = "constant"      # after warm-up: constant | cosine | linear
    min_lr_ratio: float = 0.0       # floor of cosine/linear decay, as a fraction of lr
    grad_clip: float = 1.0


@dataclass
class EvalConfig:
    every: int = 0                  # evaluate every N steps (0 = never); also after the last step
    benchmarks: list[str] = field(default_factory=list)  # eval.py names (math500, ...) or "synthetic"
    data_dir: str = "../shared/data"
    limit: int = 0                  # problems per benchmark (0 = all)
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 0             # 0 = rollout.max_tokens


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    steps: int = 100
    prompts_per_step: int = 32      # P, across all ranks
    G: int = 8                      # samples per prompt
    ppo_epochs: int = 1
    mini_batches: int = 1           # optimizer steps per epoch (each a slice of whole prompt groups)
    micro_batch_size: int = 64      # responses per forward/backward
    save_every: int = 0             # checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2
    tensorboard: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    pass


def _coerce(value, typ, key):
    """Check `value` (parsed by yaml) against the annotation `typ`; return it, converted where lossless."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(typ):
        return from_dict(typ, value, key)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # yaml reads "1e-6" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' expects {typ.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls, data, prefix=""):
    """Build the dataclass `cls` from a nested dict, naming any unknown key or wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'root'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def load_config(path=None, overrides=()):
    """TrainConfig from a yaml file (optional) and `key.sub=value` overrides (values parsed as yaml)."""
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a config section")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(TrainConfig, data)



# ---------------------------------------------------------------------------------------------
# Distributed helpers: every function below also works in one process without torch.distributed.

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


# ---------------------------------------------------------------------------------------------
# Rollout and rewards.

def overlong_penalty(length, max_len, buffer):
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to L_max - L_cache, then a linear
    ramp to -1 at L_max, -1 beyond."""
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return ((max_len - buffer) - length) / buffer
    return -1.0


def score_samples(cfg: TrainConfig, rows, groups):
    """Verifier scores [P, G] (0/1) for the samples of each row."""
    texts = [s.text for g in groups for s in g]
    golds = [r["answer"] for r in rows for _ in range(cfg.G)]
    if cfg.reward.kind == "first_char":
        scores = first_char_scores(texts, golds)
    else:
        scores = verify.score_batch(texts, golds, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    return torch.tensor(scores, dtype=torch.float32).view(len(rows), cfg.G)


def collect_batch(cfg: TrainConfig, engine, stream, step, timers):
    """Generate and score this rank's share of the step's prompts. With dynamic sampling (DAPO), groups
    whose rewards are all equal are dropped and more prompts are generated, in rounds that all ranks
    take together, until P groups are kept or max_num_gen_batches rounds were spent."""
    P, G = cfg.prompts_per_step, cfg.G
    rank, world_size = world()
    rows, groups, scores, rewards = [], [], [], []
    rounds, gave_up = 0, False
    while True:
        mine = stream.take(P)[rank::world_size]  # every rank walks the same stream and takes its share
        t0 = time.perf_counter()
        out = engine.generate([r["problem"] for r in mine], G, seed=hash_seed(cfg.seed, step, rounds, rank)) if mine else []
        t1 = time.perf_counter()
        sc = score_samples(cfg, mine, out) if mine else torch.zeros(0, G)
        timers["rollout"] += t1 - t0
        timers["verify"] += time.perf_counter() - t1
        rw = sc.clone()
        if cfg.reward.overlong_buffer > 0:
            for p, g in enumerate(out):
                for i, s in enumerate(g):
                    rw[p, i] += overlong_penalty(s.length, cfg.rollout.max_tokens, cfg.reward.overlong_buffer)
        rounds += 1
        keep = [p for p in range(len(mine)) if not cfg.reward.dynamic_sampling or rw[p].max() > rw[p].min()]
        rows += [mine[p] for p in keep]
        groups += [out[p] for p in keep]
        scores.append(sc[keep])
        rewards.append(rw[keep])
        if not cfg.reward.dynamic_sampling:
            break
        kept = all_reduce(torch.tensor([len(rows)], dtype=torch.float64))
        if kept.item() >= P:
            break
        if rounds >= cfg.reward.max_num_gen_batches:
            gave_up = True
            break
    scores, rewards = torch.cat(scores), torch.cat(rewards)
    if cfg.reward.dynamic_sampling:
        # trim to P groups in all: the first P of the global order
        quota = sum(1 for r, _ in interleaved(all_gather(len(rows)))[:P] if r == rank)
        rows, groups, scores, rewards = rows[:quota], groups[:quota], scores[:quota], rewards[:quota]
    return rows, groups, scores, rewards, {"gen_rounds": rounds, "dynamic_sampling_gave_up": float(gave_up)}


def hash_seed(*parts):
    """A sampling seed that depends only on (seed, step, round, rank): runs and resumes reproduce."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------
# The policy: per-token log-probs through the fused kernel, never materialising [tokens, vocab].

class Policy(torch.nn.Module):
    """Wraps a causal LM so that one forward gives log pi and the entropy at response positions.
    Under FSDP2 this wrapper is the root module, so the LM head (and tied embedding) is unsharded
    while `forward` runs and the kernel can read its full weight."""

    def __init__(self, model, temperature):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, input_ids, attention_mask, rows, cols, targets):
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = hidden[rows, cols]  # [n, H]: the states that predict the response tokens
        return token_logprobs(h, self.model.lm_head.weight, targets, temperature=self.temperature)


@dataclass
class Micro:
    """One micro-batch of responses, ready for Policy.forward."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    b_idx: torch.Tensor    # response index of each flat token inside the micro-batch
    t_idx: torch.Tensor    # its position in the response
    mask: torch.Tensor     # [B, T] loss mask
    index: torch.Tensor    # [B] the responses' indices in the rank's batch


def make_micro(prompt_ids, response_ids, loss_mask, index, pad_id, device):
    """Right-padded [prompt + response] rows; flat indices of the response tokens' predictors."""
    B = len(index)
    seqs = [prompt_ids[i] + response_ids[i] for i in index]
    S = max(len(s) for s in seqs)
    T = max(1, max(len(response_ids[i]) for i in index))
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, S), dtype=torch.long)
    rows, cols, targets, b_idx, t_idx = [], [], [], [], []
    mask = torch.zeros((B, T))
    for b, i in enumerate(index):
        input_ids[b, : len(seqs[b])] = torch.tensor(seqs[b])
        attention_mask[b, : len(seqs[b])] = 1
        p, n = len(prompt_ids[i]), len(response_ids[i])
        rows += [b] * n
        cols += range(p - 1, p + n - 1)
        targets += response_ids[i]
        b_idx += [b] * n
        t_idx += range(n)
        mask[b, :n] = torch.tensor(loss_mask[i])
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return Micro(input_ids.to(device), attention_mask.to(device), t(rows), t(cols), t(targets), t(b_idx), t(t_idx),
                 mask.to(device), torch.tensor(index, dtype=torch.long))


def per_token(policy, mb, grad):
    """[B, T] log-probs and entropies of a micro-batch."""
    with contextlib.nullcontext() if grad else torch.no_grad():
        logp, ent = policy(mb.input_ids, mb.attention_mask, mb.rows, mb.cols, mb.targets)
    B, T = mb.mask.shape
    out_logp = torch.zeros(B, T, device=logp.device, dtype=logp.dtype).index_put((mb.b_idx, mb.t_idx), logp)
    out_ent = torch.zeros(B, T, device=ent.device, dtype=ent.dtype).index_put((mb.b_idx, mb.t_idx), ent.detach())
    return out_logp, out_ent


# ---------------------------------------------------------------------------------------------
# One training step on a collected batch: the part that must equal single-process and multi-rank.

def train_on_batch(cfg, policy, ref_policy, optimizer, scheduler, scheme, hadw, batch, device, pad_id):
    """PPO epochs over mini-batches on this rank's groups.

    The global batch interleaves the ranks' groups (rank r's q-th group sits at position q * world + r
    when ranks hold equal shares, which is how collect_batch deals prompts out), and mini-batch j is the
    j-th contiguous slice of it. Advantages come from the whole global batch and each mini-batch's
    weights from the whole global mini-batch (gathered rewards and lengths: a few floats per response),
    so loss and gradient equal those of one process holding the whole batch."""
    prompt_ids, responses, rewards, loss_mask = batch["prompt_ids"], batch["response_ids"], batch["rewards"], batch["loss_mask"]
    rank, world_size = world()
    P_local, G = rewards.shape
    lengths = torch.tensor([sum(m) for m in loss_mask], dtype=torch.float32).view(P_local, G)
    gathered = all_gather((rewards, lengths))
    order = interleaved([r.shape[0] for r, _ in gathered])
    R = torch.stack([gathered[r][0][q] for r, q in order]) if order else torch.zeros(0, G)
    L = torch.stack([gathered[r][1][q] for r, q in order]) if order else torch.zeros(0, G)
    position = {rq: i for i, rq in enumerate(order)}
    mine = [position[(rank, q)] for q in range(P_local)]  # global position of each local group

    if not order:  # dynamic sampling kept no group on any rank: nothing to learn from this step
        scheduler.step()
        return {"empty_batch": 1.0}
    A_global = scheme.advantages(R)
    if hadw is not None:
        A_global = hadw(R, A_global)
    A, bucket = A_global[mine], pass_counts(R, cfg.scheme.correct_threshold)[mine]
    W = torch.zeros(P_local, G)
    mini = []  # local group indices of each mini-batch
    for j in range(cfg.mini_batches):
        a, b = len(order) * j // cfg.mini_batches, len(order) * (j + 1) // cfg.mini_batches
        local = [q for q in range(P_local) if a <= mine[q] < b]
        if local:
            Wj = scheme.weights(R[a:b], L[a:b])
            W[local] = Wj[[mine[q] - a for q in local]]
        mini.append(local)
    A, W, bucket = A.flatten(), W.flatten(), bucket.repeat_interleave(G)

    need_old = cfg.ppo_epochs > 1 or cfg.mini_batches > 1  # else old = current policy (ratio 1), no extra pass
    micro_plan = []  # per mini-batch: lists of local response indices, padded to the same count on all ranks
    for local in mini:
        idx = [q * G + i for q in local for i in range(G)]
        chunks = [idx[i: i + cfg.micro_batch_size] for i in range(0, len(idx), cfg.micro_batch_size)]
        n_max = int(all_reduce(torch.tensor([len(chunks)]), dist.ReduceOp.MAX if dist.is_initialized() else None).item())
        micro_plan.append(chunks + [[]] * (n_max - len(chunks)))
    dummy = {"prompt_ids": [[pad_id]], "response_ids": [[pad_id]], "loss_mask": [[0.0]]}

    def build(index):
        if not index:  # a rank with fewer responses still joins FSDP's collectives with a zero-weight pass
            return make_micro(dummy["prompt_ids"], dummy["response_ids"], dummy["loss_mask"], [0], pad_id, device), True
        return make_micro(prompt_ids, responses, loss_mask, index, pad_id, device), False

    old_logp, ref_logp = {}, {}
    if need_old or cfg.loss.kl_beta:
        for chunks in micro_plan:
            for index in chunks:
                mb, is_dummy = build(index)
                if need_old:
                    old_logp[tuple(index)] = per_token(policy, mb, grad=False)[0]
                if cfg.loss.kl_beta:
                    ref_logp[tuple(index)] = per_token(ref_policy, mb, grad=False)[0]

    totals, grad_norms = {}, []
    for epoch in range(cfg.ppo_epochs):
        for chunks in micro_plan:
            for index in chunks:
                mb, is_dummy = build(index)
                logp, ent = per_token(policy, mb, grad=True)
                old = old_logp[tuple(index)] if need_old else logp.detach()
                ix = mb.index if not is_dummy else torch.zeros(1, dtype=torch.long)
                Ai = A[ix].to(device) if not is_dummy else torch.zeros(1, device=device)
                Wi = W[ix].to(device) if not is_dummy else torch.zeros(1, device=device)
                loss, stats = policy_loss(logp, old, mb.mask, Ai, Wi, cfg.loss, ref_logp=ref_logp.get(tuple(index)),
                                          entropy=ent, bucket=bucket[ix].to(device) if not is_dummy else torch.zeros(1, dtype=torch.long, device=device),
                                          n_buckets=G + 1)
                # FSDP averages gradients over ranks; the loss is a global sum, so undo the average
                (loss * world_size).backward()
                stats["loss"] = loss.detach().double()
                for k, v in stats.items():
                    if k in ("ratio_max", "ratio_min"):
                        op = max if k == "ratio_max" else min
                        totals[k] = v if k not in totals else op(totals[k], v)
                    else:
                        totals[k] = totals.get(k, 0) + v
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            grad_norms.append(float(grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    scheduler.step()

    # reduce the statistics over ranks: sums add, max/min reduce as such
    for k in list(totals):
        v = torch.as_tensor(totals[k], dtype=torch.float64).detach().cpu().reshape(-1).clone()
        if k == "ratio_max":
            totals[k] = all_reduce(v, dist.ReduceOp.MAX if dist.is_initialized() else None)
        elif k == "ratio_min":
            totals[k] = all_reduce(v, dist.ReduceOp.MIN if dist.is_initialized() else None)
        else:
            totals[k] = all_reduce(v)
    scheme.update(totals["bucket_loss"] / cfg.ppo_epochs, totals["bucket_tokens"] / cfg.ppo_epochs,
                  totals["bucket_abs_loss"] / cfg.ppo_epochs)
    tok = max(float(totals["tokens"][0]), 1.0)
    m = {
        "loss": float(totals["loss"][0]) / cfg.ppo_epochs / cfg.mini_batches,
        "pg_loss": float(totals["pg_loss"][0]) / cfg.ppo_epochs / cfg.mini_batches,
        "grad_norm": float(np.mean(grad_norms)),
        "clip_low": float(totals["clip_low"][0]) / tok,
        "clip_high": float(totals["clip_high"][0]) / tok,
        "approx_kl": float(totals["approx_kl"][0]) / tok,
        "ratio_mean": float(totals["ratio"][0]) / tok,
        "ratio_max": float(totals["ratio_max"][0]),
        "ratio_min": float(totals["ratio_min"][0]),
        "entropy": float(totals["entropy"][0]) / tok,
        "lr": optimizer.param_groups[0]["lr"],
    }
    if "kl_ref" in totals:
        m["kl_ref"] = float(totals["kl_ref"][0]) / tok
    bl, bt, bs = totals["bucket_loss"], totals["bucket_tokens"], totals["bucket_scale"]
    for k in range(1, G):
        if bt[k] > 0:
            m[f"bucket_loss/{k}"] = float(bl[k] / bt[k])  # L_mu: mean surrogate per token (signed)
            m[f"bucket_scale/{k}"] = float(bs[k]) / cfg.ppo_epochs / cfg.mini_batches  # sum W |surrogate|
    return m


# ---------------------------------------------------------------------------------------------
# Model, optimizer, checkpoints.

def lr_lambda(cfg: OptimConfig, total_steps):
    if cfg.schedule not in ("constant", "cosine", "linear"):
        raise ValueError(f"optim.schedule must be constant, cosine or linear, got {cfg.schedule!r}")

    def f(step):  # step = completed training steps
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.schedule == "cosine" else 1 - frac
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay
    return f


def load_policy(path, cfg: TrainConfig, device, trainable=True):
    from transformers import AutoModelForCausalLM
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
    if cfg.model.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.to(device)
    policy = Policy(model, cfg.rollout.temperature)
    if not trainable:
        policy.requires_grad_(False)
    if dist.is_initialized():
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(policy, mp_policy=mp)
    elif dtype != torch.float32:
        policy.to(dtype)
    return policy


def full_model_state(policy):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(policy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(run_dir, step, policy, optimizer, scheduler, trainer_state, tokenizer, keep):
    """checkpoints/step_N/{model (HF safetensors), optim.pt, trainer.pt}, written into a temp dir and
    renamed; `latest` is replaced atomically last, so a crash at any point leaves the previous one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    rank, _ = world()
    ckpt_root = Path(run_dir) / "checkpoints"
    final, tmp = ckpt_root / f"step_{step:06d}", ckpt_root / f".tmp_step_{step:06d}"
    model_sd = full_model_state(policy)
    optim_sd = get_optimizer_state_dict(policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rng = all_gather({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                      "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None})
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        policy.model.save_pretrained(tmp / "model", state_dict=model_sd, safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(optim_sd, tmp / "optim.pt")
        torch.save({**trainer_state, "scheduler": scheduler.state_dict(), "rng": rng, "step": step}, tmp / "trainer.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (ckpt_root / "latest.tmp").write_text(final.name)
        os.replace(ckpt_root / "latest.tmp", ckpt_root / "latest")
        for old in (sorted(ckpt_root.glob("step_*"))[:-keep] if keep > 0 else []):
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return final


def latest_checkpoint(run_dir):
    pointer = Path(run_dir) / "checkpoints" / "latest"
    return Path(run_dir) / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


# ---------------------------------------------------------------------------------------------
# Metrics: a JSON Lines file (one record per step) that `python train.py plot` draws.

def batch_metrics(cfg, rows, groups, scores, rewards):
    if not rows:
        return {"groups": 0}
    lengths = torch.tensor([[s.length for s in g] for g in groups], dtype=torch.float32)
    truncated = torch.tensor([[s.truncated for s in g] for g in groups], dtype=torch.float32)
    correct = scores > 0.5
    k = correct.sum(1)
    m = {"groups": len(rows), "reward_mean": float(rewards.mean()), "score_mean": float(scores.mean()),
         "zero_var_frac": float((rewards.max(1).values == rewards.min(1).values).float().mean()),
         "len_mean": float(lengths.mean()), "truncated_frac": float(truncated.mean()),
         "len_correct": float(lengths[correct].mean()) if correct.any() else None,
         "len_incorrect": float(lengths[~correct].mean()) if (~correct).any() else None}
    for j in range(cfg.G + 1):
        m[f"mu_frac/{j}"] = float((k == j).float().mean())
    for lv in sorted({r["level"] for r in rows if isinstance(r.get("level"), (int, str))}, key=str):
        sel = torch.tensor([r.get("level") == lv for r in rows])
        m[f"score_by_level/{lv}"] = float(scores[sel].mean())
    return m


def gather_metrics(local):
    """Average per-rank batch metrics weighted by each rank's number of groups."""
    parts = all_gather(local)
    out = {"groups": sum(p["groups"] for p in parts)}
    for key in sorted({k for p in parts for k in p if k != "groups"}):
        vals = [(p[key], p["groups"]) for p in parts if p.get(key) is not None and p["groups"] > 0]
        if vals:
            out[key] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    return out


def run_eval(cfg: TrainConfig, engine, val_rows):
    """Validation accuracy through eval.py; the synthetic task scores by its first character."""
    benchmarks = {}
    for name in cfg.eval.benchmarks:
        rows = val_rows if name == "synthetic" else load_benchmark(name, cfg.eval.data_dir)
        benchmarks[name] = rows[: cfg.eval.limit] if cfg.eval.limit else rows
    score_fn = first_char_scores if cfg.reward.kind == "first_char" else None
    results, _ = evaluation.evaluate(engine, benchmarks, n=cfg.eval.n, temperature=cfg.eval.temperature,
                                     max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens,
                                     workers=cfg.reward.workers, seed=cfg.seed, score_fn=score_fn)
    return {f"val/{name}": results["benchmarks"][name]["avg@n"] for name in benchmarks}


# ---------------------------------------------------------------------------------------------
# The loop.

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="yaml config (see configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir's latest checkpoint")
    ap.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
    except (ConfigError, yaml.YAMLError) as e:
        sys.exit(f"config error: {e}")
    train(cfg, resume=args.resume)


def check_config(cfg: TrainConfig):
    for key in ("prompts_per_step", "ppo_epochs", "mini_batches", "micro_batch_size", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {getattr(cfg, key)}")
    if cfg.G < 2:
        raise ConfigError(f"config key 'G' must be >= 2 (group statistics), got {cfg.G}")
    if cfg.reward.kind not in ("math", "first_char"):
        raise ConfigError(f"config key 'reward.kind' must be 'math' or 'first_char', got {cfg.reward.kind!r}")
    if cfg.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config key 'model.dtype' must be float32 or bfloat16, got {cfg.model.dtype!r}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("config key 'tensorboard' is true but the tensorboard package is not installed "
                          "(pip install tensorboard; metrics.jsonl is written either way)")


def train(cfg: TrainConfig, resume=False):
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world_size = world()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None and rank == 0:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints, starting fresh", file=sys.stderr)
    base_path = cfg.model.path
    if base_path == "tiny":
        base_path = str(run_dir / "tiny_model")
        if rank == 0 and not (Path(base_path) / "config.json").is_file():
            build_tiny_model(base_path, seed=cfg.seed,
                             chars=SYNTHETIC_CHARS if cfg.data.train == "synthetic" else TINY_CHARS)
        if dist.is_initialized():
            dist.barrier()
    model_path = str(ckpt / "model") if ckpt is not None else base_path
    if rank == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy = load_policy(model_path, cfg, device)
    ref_policy = load_policy(base_path, cfg, device, trainable=False) if cfg.loss.kl_beta else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.steps))
    scheme, hadw = make_scheme(cfg.scheme, G=cfg.G, max_len=cfg.rollout.max_tokens)
    stream = PromptStream(load_rows(cfg.data, cfg.seed), cfg.seed, cfg.data.shuffle)
    val_rows = synthetic_rows(200, cfg.seed + 1_000_003) if cfg.data.train == "synthetic" else []
    start = 0
    if ckpt is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        state = torch.load(ckpt / "trainer.pt", weights_only=False)
        set_optimizer_state_dict(policy, optimizer, torch.load(ckpt / "optim.pt", weights_only=False),
                                 options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        scheme.load_state_dict(state["scheme"])
        if hadw is not None:
            hadw.load_state_dict(state["hadw"])
        rng = state["rng"][rank]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        start = state["step"]
        if rank == 0:
            print(f"resumed from {ckpt} at step {start}", file=sys.stderr)

    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:  # keep only the records of steps the checkpoint holds (a resume rewrites the rest)
        old = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()] \
            if start and metrics_path.is_file() else []
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in old if r["step"] <= start))
    writer = None
    if cfg.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(run_dir / "tensorboard")

    # the sampler runs in the trainer's dtype unless told otherwise (vLLM's "auto" turns float32 into bf16 on CPU)
    rollout_cfg = dataclasses.replace(cfg.rollout, dtype=cfg.model.dtype) if cfg.rollout.dtype == "auto" else cfg.rollout
    engine = make_engine(rollout_cfg, model_path, seed=cfg.seed + rank)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="train")
    try:
        for step in bar:
            timers = {"rollout": 0.0, "verify": 0.0, "train": 0.0, "sync": 0.0}
            t_step = time.perf_counter()
            rows_b, groups, scores, rewards, gen_info = collect_batch(cfg, engine, stream, step, timers)
            engine.sleep()
            samples = [s for g in groups for s in g]
            batch = {"prompt_ids": [s.prompt_ids for s in samples], "response_ids": [s.token_ids for s in samples],
                     "loss_mask": [[0.0 if cfg.reward.overlong_filter and s.truncated else 1.0] * s.length for s in samples],
                     "rewards": rewards}
            t0 = time.perf_counter()
            train_m = train_on_batch(cfg, policy, ref_policy, optimizer, scheduler, scheme, hadw, batch, device, pad_id)
            timers["train"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine.sync_weights(policy.model)  # wakes a sleeping engine in the right order
            timers["sync"] = time.perf_counter() - t0

            m = {"step": step + 1, **gather_metrics(batch_metrics(cfg, rows_b, groups, scores, rewards)), **train_m,
                 **{f"gen/{k}": v for k, v in gen_info.items()}}
            if gen_info["dynamic_sampling_gave_up"] and rank == 0:
                tqdm.write(f"step {step + 1}: dynamic sampling gave up after {gen_info['gen_rounds']} rounds "
                           f"with {m['groups']} of {cfg.prompts_per_step} groups; training on those")
            if cfg.scheme.name == "daro":
                m.update({f"daro_w/{k}": float(scheme.w[k]) for k in range(1, cfg.G)})
            if hadw is not None:
                m.update(hadw.last)
            n_tokens = float(all_reduce(torch.tensor([float(sum(s.length for s in samples))]))[0])
            elapsed = time.perf_counter() - t_step
            m.update({f"time/{k}": v for k, v in timers.items()})
            m.update({"time/step": elapsed, "tokens_per_s": n_tokens / elapsed})
            if cfg.eval.every and cfg.eval.benchmarks and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.steps):
                m.update(run_eval(cfg, engine, val_rows))
            if rank == 0:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
                if writer:
                    for k, v in m.items():
                        if isinstance(v, (int, float)):
                            writer.add_scalar(k, v, step + 1)
                bar.set_postfix(reward=f"{m.get('reward_mean', float('nan')):.3f}", len=f"{m.get('len_mean', 0):.1f}")
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                save_checkpoint(run_dir, step + 1, policy, optimizer, scheduler,
                                {"stream": stream.state_dict(), "scheme": scheme.state_dict(),
                                 "hadw": hadw.state_dict() if hadw else None}, tokenizer, cfg.keep_checkpoints)
        if dist.is_initialized():
            dist.barrier()  # every rank is past its last collective before vLLM shuts down
    finally:
        engine.close()
        if writer:
            writer.close()
    if rank == 0 and cfg.steps > start:
        print(run_summary(metrics_path), file=sys.stderr)
        print(f"done: {metrics_path}; plots: python train.py plot {run_dir}", file=sys.stderr)
    if dist.is_initialized():
        del policy, ref_policy, optimizer, scheduler  # free FSDP state first: torch 2.13 + gloo can abort at exit
        gc.collect()
        dist.destroy_process_group()
    return run_dir


def run_summary(metrics_path, window=50):
    """One line a reader can check at a glance: mean reward over the first and last `window` steps, last evals."""
    rows = [json.loads(l) for l in metrics_path.read_text().splitlines() if l.strip()]
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    if not rewards:
        return "summary: no training steps logged"
    head, tail = rewards[:window], rewards[-window:]
    text = (f"summary: reward {sum(head) / len(head):.3f} (first {len(head)} steps) -> "
            f"{sum(tail) / len(tail):.3f} (last {len(tail)} steps)")
    evals = {k: v for r in rows for k, v in r.items() if k.startswith("val/")}  # the latest of each
    return text + "".join(f"; {k} {v:.3f}" for k, v in evals.items())


# ---------------------------------------------------------------------------------------------
# Plots from metrics.jsonl; several runs on one figure compare schemes.

def plot_main(argv):
    ap = argparse.ArgumentParser(prog="python train.py plot", description="Draw PNG figures from runs' metrics.jsonl.")
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    ap.add_argument("--out", default=None, help="output directory (default: the first run's plots/)")
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window in steps")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for r in args.runs:
        path = Path(r) / "metrics.jsonl" if Path(r).is_dir() else Path(r)
        if not path.is_file():
            sys.exit(f"plot: no metrics file at {path}")
        runs[path.parent.name] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    out = Path(args.out) if args.out else (Path(args.runs[0]) if Path(args.runs[0]).is_dir() else Path(args.runs[0]).parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    def line(ax, records, key, label, smooth=True, **kw):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not pts:
            return
        x, y = map(np.asarray, zip(*pts))
        w = min(args.smooth, len(y)) if smooth else 1
        if w > 1:
            y = np.convolve(y, np.ones(w) / w, mode="valid")
            x = x[w - 1:]
        ax.plot(x, y, label=label, **kw)

    def keys(prefix):
        return sorted({k for recs in runs.values() for r in recs for k in r if k.startswith(prefix)},
                      key=lambda k: float(k.split("/")[1]) if k.split("/")[1].replace(".", "").isdigit() else k)

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    # reward and validation accuracy
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        line(ax, recs, "reward_mean", f"{name} reward")
        for k in keys("val/"):
            line(ax, recs, k, f"{name} {k}", smooth=False, marker="o", ls="--")
    ax.set(xlabel="step", ylabel="reward / accuracy", title="reward and validation accuracy")
    ax.legend(fontsize=7)
    save(fig, "reward.png")

    # per-difficulty weights (DARO Figure 1), loss per difficulty (Figure 2), pass rate per data level
    # (MATH level 1-5; the synthetic task's operand count). Buckets: k of G samples correct, mu = k/G.
    for prefix, fname, title, label in [
            ("daro_w/", "weights_per_difficulty.png", "DARO weight w_mu over training", "k={}"),
            ("bucket_scale/", "loss_per_difficulty.png", "loss scale per bucket, sum W |surrogate|", "k={}"),
            ("score_by_level/", "pass_rate_per_level.png", "pass rate per level", "level {}")]:
        ks = keys(prefix)
        if not ks:
            continue
        fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.8), squeeze=False)
        for ax, (name, recs) in zip(axes[0], runs.items()):
            for k in ks:
                line(ax, recs, k, label.format(k.split('/')[1]))
            ax.set(xlabel="step", title=f"{name}: {title}")
            if ax.lines:  # a run without this metric (e.g. GRPO beside DARO) keeps an empty panel
                ax.legend(fontsize=6, ncol=2)
        save(fig, fname)

    # lengths of correct vs incorrect responses (Figure 3)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recs in runs.items():
        line(ax, recs, "len_correct", f"{name} correct")
        line(ax, recs, "len_incorrect", f"{name} incorrect", ls="--")
    ax.set(xlabel="step", ylabel="tokens", title="response length: correct vs incorrect")
    ax.legend(fontsize=7)
    save(fig, "lengths.png")

    # entropy, length and reward (Figure 4)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ["entropy", "len_mean", "reward_mean"]):
        for name, recs in runs.items():
            line(ax, recs, key, name)
        ax.set(xlabel="step", title=key)
        ax.legend(fontsize=7)
    save(fig, "dynamics.png")
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        plot_main(sys.argv[2:])
    else:
        main()
