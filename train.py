"""RLVR training: prompts -> rollout (G samples) -> verify (rewards) -> weights (A, W) -> loss -> AdamW
-> weights synced back into the rollout engine. FSDP2 at every world size: one process is a group of one
(distributed.init_distributed), torchrun shards over many GPUs/CPUs.

    python train.py --config configs/tiny.yaml                          # CPU, a few minutes
    torchrun --nproc_per_node 8 train.py --config configs/daro.yaml     # 8 GPUs
    python train.py --config configs/tiny.yaml --resume                 # continue the last checkpoint
    python plot.py runs/tiny [runs/other ...] --out plots/              # PNG figures from metrics.jsonl

The file reads top to bottom as one step: collect a batch (rollout + rewards), the update (`train_on_batch`
and its parts), model and checkpoints, metrics, and the loop (`train`).
"""
import argparse
import dataclasses
import gc
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.distributed.fsdp import FSDPModule
from tqdm import tqdm

import eval as evaluation  # 'eval' is a builtin; the module is eval.py
import verify
from config import ConfigError, OptimConfig, TrainConfig, check_config, load_config
from data import PromptStream, load_benchmark, load_rows
from distributed import (CheckpointError, agree_on_checkpoint, all_gather, all_reduce, barrier, check_every_rank_reads,
                         free_cached_memory, full_model_state, init_distributed, interleaved, load_sharded, memory_gib,
                         publish, restore_rng, rng_state, save_sharded, shutdown_distributed, world, write_diagnostics)
from loss import logprob_precision, policy_loss
from metrics import MetricsLog, batch_metrics, gather_metrics
from plot import run_summary
from policy import (KernelTimer, Policy, RecomputeCounter, load_policy, longest_pass, make_micro, pack_micro_batches,
                    per_token, row_tokens)
from rollout import encode_prompts, make_engine
from tiny import SYNTHETIC_CHARS, TINY_CHARS, build_tiny_model, first_char_scores, synthetic_rows
from weights import Scheme, make_scheme, pass_counts


# ---------------------------------------------------------------------------------------------
# Collect a batch: rollout and rewards.

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
        problems = [r["problem"] for r in rows for _ in range(cfg.G)]  # says whether rounding was asked
        scores = verify.score_batch(texts, golds, workers=cfg.reward.workers, timeout=cfg.reward.timeout,
                                    problems=problems)
    return torch.tensor(scores, dtype=torch.float32).view(len(rows), cfg.G)


def hash_seed(*parts):
    """A sampling seed that depends only on (seed, step, round, rank): runs and resumes reproduce."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def prompt_fits(cfg: TrainConfig, engine, problem):
    """Whether the templated prompt, encoded as the engine will, has 1 to data.max_prompt_tokens tokens and
    leaves room for a response under the engine's max_model_len."""
    try:
        (ids,) = encode_prompts(engine.tokenizer, [problem], cfg.rollout.template, engine.max_model_len)
    except (ValueError, TypeError):  # empty after templating, no room left, or not a string
        return False
    return len(ids) <= cfg.data.max_prompt_tokens


def collect_batch(cfg: TrainConfig, engine, stream, step, timers):
    """Generate and score this rank's share of the step's prompts: verifier scores (0/1) and rewards
    (scores plus DAPO's overlong shaping). With dynamic sampling (DAPO), groups whose responses are all
    correct or all wrong are dropped and more prompts are generated, in rounds that all ranks take
    together, until P groups are kept or max_num_gen_batches rounds were spent. gen_info["accuracy"] is
    correct over all responses sampled this step on all ranks, before that filtering (HA-DW's y_t).
    Prompts longer than data.max_prompt_tokens are skipped before generation by the rank that drew them
    (no engine ever raises on one rank alone) and counted over all ranks (gen/skipped_prompts)."""
    P, G = cfg.prompts_per_step, cfg.G
    rank, world_size = world()
    rows, groups, scores, rewards = [], [], [], []
    rounds, gave_up, skipped = 0, False, 0
    counts = torch.zeros(2, dtype=torch.float64)  # correct, sampled
    while True:
        drawn = stream.take(P)[rank::world_size]  # every rank walks the same stream and takes its share
        mine = [r for r in drawn if prompt_fits(cfg, engine, r["problem"])]
        skipped += len(drawn) - len(mine)
        t0 = time.perf_counter()
        seed = hash_seed(cfg.seed, step, rounds, rank)
        out = engine.generate([r["problem"] for r in mine], G, seed=seed, logprobs=cfg.diagnostics) if mine else []
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
        k = (sc > 0.5).sum(1)
        counts += torch.tensor([float(k.sum()), float(sc.numel())], dtype=torch.float64)
        keep = [p for p in range(len(mine)) if not cfg.reward.dynamic_sampling or 0 < k[p] < G]
        rows += [mine[p] for p in keep]
        groups += [out[p] for p in keep]
        scores.append(sc[keep])
        rewards.append(rw[keep])
        if not cfg.reward.dynamic_sampling:
            break
        if all_reduce(torch.tensor([len(rows)], dtype=torch.float64)).item() >= P:
            break
        if rounds >= cfg.reward.max_num_gen_batches:
            gave_up = True
            break
    scores, rewards = torch.cat(scores), torch.cat(rewards)
    if cfg.reward.dynamic_sampling:  # trim to P groups in all: the first P of the global order
        quota = sum(1 for r, _ in interleaved(all_gather(len(rows)))[:P] if r == rank)
        rows, groups, scores, rewards = rows[:quota], groups[:quota], scores[:quota], rewards[:quota]
    counts = torch.cat([counts, torch.tensor([float(skipped)], dtype=torch.float64)])
    correct, sampled, skipped = all_reduce(counts).tolist()
    return rows, groups, scores, rewards, {"gen_rounds": rounds, "dynamic_sampling_gave_up": float(gave_up),
                                           "accuracy": correct / max(sampled, 1.0), "skipped_prompts": int(skipped)}


# ---------------------------------------------------------------------------------------------
# The update on a collected batch: the part that must equal single-process and multi-rank.

@dataclass
class Trainer:
    """What the update needs: the config, the models, the optimiser and the weighting scheme."""
    cfg: TrainConfig
    policy: Policy
    ref_policy: Optional[Policy]   # the KL reference (loss.kl_beta > 0), else None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scheme: Scheme
    device: torch.device
    pad_id: int


@dataclass
class Batch:
    """This rank's share of a step: P_local prompt groups of G responses, flattened group-major."""
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    loss_mask: list[list[float]]   # per response token: 0 drops it from the loss (overlong filtering)
    rewards: torch.Tensor          # [P_local, G] rewards, shaping included
    correct: torch.Tensor          # [P_local, G] bool, the verifier's verdicts: mu, DARO's buckets
    accuracy: Optional[float] = None  # correct / sampled over the step, before any filtering (HA-DW's y_t)
    engine_logprobs: Optional[list[list[float]]] = None  # the engine's log-probs of the responses (diagnostics)


def gather_global_batch(rewards, lengths, correct):
    """Every rank's rewards, lengths and verdicts [P_local, G] (a few numbers per response) in the global
    order. Returns (R, L, C [P, G], mine): mine[q] is the global position of this rank's q-th group."""
    rank, _ = world()
    gathered = all_gather((rewards, lengths, correct))
    order = interleaved([parts[0].shape[0] for parts in gathered])
    R, L, C = (torch.stack([gathered[r][j][q] for r, q in order]) if order else empty[:0]
               for j, empty in enumerate((rewards, lengths, correct)))
    position = {rq: i for i, rq in enumerate(order)}
    return R, L, C, [position[(rank, q)] for q in range(rewards.shape[0])]


def advantages_and_weights(cfg: TrainConfig, scheme: Scheme, R, L, C, mine):
    """A from the whole global batch, W from each global mini-batch (the j-th contiguous slice of the
    global order), so that they equal what one process holding everything would compute. W_reg weighs
    the KL and entropy terms: 1 / (tokens in the mini-batch) unless loss.reg_weight is "scheme" (then W).
    Returns this rank's flat A, W, W_reg, bucket [P_local * G] and its local groups of each mini-batch."""
    P_local, G = len(mine), cfg.G
    A = scheme.advantages(R)[mine]
    bucket = pass_counts(C)[mine]
    W, W_reg = torch.zeros(P_local, G), torch.zeros(P_local, G)
    mini = []
    for j in range(cfg.mini_batches):
        a, b = len(R) * j // cfg.mini_batches, len(R) * (j + 1) // cfg.mini_batches
        local = [q for q in range(P_local) if a <= mine[q] < b]
        if local:
            W[local] = scheme.weights(R[a:b], L[a:b], C[a:b])[[mine[q] - a for q in local]]
            W_reg[local] = W[local] if cfg.loss.reg_weight == "scheme" else 1.0 / max(float(L[a:b].sum()), 1.0)
        mini.append(local)
    return A.flatten(), W.flatten(), W_reg.flatten(), bucket.repeat_interleave(G), mini


def plan_micro_batches(cfg: TrainConfig, mini, row_len, trained):
    """Per mini-batch, its micro-batches: each a list of rows, a row a list of local response indices
    (policy.pack_micro_batches: packed under a token budget, or one item per row in runs; an item is one
    response, or with share_prompt a prompt's trained responses, laid out as row_len(item) tokens).
    Only responses in `trained` go in. Every rank gets the same number of micro-batches, at least one
    (empty lists pad): FSDP's collectives run once per forward and backward, so a rank with fewer
    responses joins them with a zero-weight pass, and every step's backward leaves gradients (maybe zero)
    for the optimiser, as the full batch would."""
    plan, MAX = [], dist.ReduceOp.MAX if dist.is_initialized() else None
    for local in mini:
        groups = [[q * cfg.G + i for i in range(cfg.G) if trained[q * cfg.G + i]] for q in local]
        items = [g for g in groups if g] if cfg.share_prompt else [[i] for g in groups for i in g]
        rows_of_items = pack_micro_batches(list(range(len(items))), [row_len(it) for it in items],
                                           cfg.micro_batch_size, cfg.micro_batch_tokens)
        chunks = [[[i for u in row for i in items[u]] for row in rows] for rows in rows_of_items]
        n_max = int(all_reduce(torch.tensor([max(1, len(chunks))]), MAX))
        plan.append(chunks + [[]] * (n_max - len(chunks)))
    return plan


def plan_stats(plan, row_len, trained):
    """Tokens the plan computes (rows x widest, per micro-batch) and the real ones among them, and the
    responses left out; summed over ranks by reduce_stats."""
    real = sum(row_len(row) for chunks in plan for rows in chunks for row in rows)
    computed = sum(len(rows) * max(row_len(row) for row in rows) for chunks in plan for rows in chunks if rows)
    return {"real_tokens": float(real), "computed_tokens": float(computed),
            "skipped": float(len(trained) - sum(trained)), "responses": float(len(trained))}


def row_length(tr: Trainer, batch: Batch):
    """The tokens a row of these responses takes in make_micro (a shared prompt counted once)."""
    return lambda row: row_tokens(row, batch.prompt_ids, batch.response_ids, tr.cfg.share_prompt)


def build_micro(tr: Trainer, batch: Batch, rows):
    """The micro-batch of `rows` (lists of response indices), or a one-token dummy of zero weight."""
    if not rows:
        return make_micro([[tr.pad_id]], [[tr.pad_id]], [[0.0]], [[0]], tr.pad_id, tr.device), True
    return make_micro(batch.prompt_ids, batch.response_ids, batch.loss_mask, rows, tr.pad_id, tr.device,
                      share_prompt=tr.cfg.share_prompt), False


def micro_key(rows, n):
    """A micro-batch's key: its responses (the n-th pass of its mini-batch when it is a padding pass)."""
    return tuple(i for row in rows for i in row) or ("pad", n)


def reference_logprobs(tr: Trainer, batch: Batch, plan):
    """log pi_old (the policy before this step's first update) and log pi_ref, per micro-batch. pi_old
    is needed only when the policy moves within the step (several epochs or mini-batches); otherwise the
    ratio is 1 and the loss uses the current log-probs, detached."""
    cfg = tr.cfg
    need_old = cfg.ppo_epochs > 1 or cfg.mini_batches > 1
    old, ref = {}, {}
    if need_old or cfg.loss.kl_beta:
        for n, rows in ((n, rows) for chunks in plan for n, rows in enumerate(chunks)):
            mb, _ = build_micro(tr, batch, rows)
            if need_old:
                old[micro_key(rows, n)] = per_token(tr.policy, mb, grad=False)[0]
            if cfg.loss.kl_beta:
                ref[micro_key(rows, n)] = per_token(tr.ref_policy, mb, grad=False)[0]
    return old, ref


def ppo_update(tr: Trainer, batch: Batch, A, W, W_reg, bucket, plan):
    """ppo_epochs passes over the mini-batches, one optimiser step each. Returns the summed loss
    statistics (sums over tokens; ratio_max/min as such) and the gradient norm of every step."""
    cfg, (_, world_size) = tr.cfg, world()
    old_logp, ref_logp = reference_logprobs(tr, batch, plan)
    totals, grad_norms = {}, []
    sharded = isinstance(tr.policy, FSDPModule)
    for epoch in range(cfg.ppo_epochs):
        for chunks in plan:
            for n, rows in enumerate(chunks):
                if sharded:  # reduce-scatter gradients once per optimiser step, after its last backward
                    tr.policy.set_requires_gradient_sync(cfg.grad_sync == "micro_batch" or n == len(chunks) - 1)
                mb, is_dummy = build_micro(tr, batch, rows)
                logp, ent = per_token(tr.policy, mb, grad=True)
                old = old_logp[micro_key(rows, n)] if old_logp else logp.detach()
                if is_dummy:  # a zero-weight pass: only to join the collectives
                    Ai, Wi, Wri, bi = torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long)
                else:
                    Ai, Wi, Wri, bi = A[mb.index], W[mb.index], W_reg[mb.index], bucket[mb.index]
                loss, stats = policy_loss(logp, old, mb.mask, Ai.to(tr.device), Wi.to(tr.device), cfg.loss,
                                          W_reg=Wri.to(tr.device), ref_logp=ref_logp.get(micro_key(rows, n)),
                                          entropy=ent, bucket=bi.to(tr.device), n_buckets=cfg.G + 1)
                # FSDP averages gradients over ranks; the loss is a global sum, so undo the average
                (loss * world_size).backward()
                stats["loss"] = loss.detach().double()
                for k, v in stats.items():
                    if k in ("ratio_max", "ratio_min"):
                        totals[k] = v if k not in totals else (max if k == "ratio_max" else min)(totals[k], v)
                    else:
                        totals[k] = totals.get(k, 0) + v
            grad_norm = torch.nn.utils.clip_grad_norm_(tr.policy.parameters(), cfg.optim.grad_clip)
            grad_norms.append(float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
    return totals, grad_norms


def reduce_stats(totals):
    """Sum the statistics over ranks (max / min for ratio_max / ratio_min), as float64 CPU vectors."""
    out = {}
    for k, v in totals.items():
        v = torch.as_tensor(v, dtype=torch.float64).detach().cpu().reshape(-1).clone()
        op = {"ratio_max": dist.ReduceOp.MAX, "ratio_min": dist.ReduceOp.MIN}.get(k)
        out[k] = all_reduce(v, op)
    return out


def update_metrics(cfg: TrainConfig, totals, grad_norms, lr):
    """Per-step numbers from the reduced statistics: per-token means over the trained tokens, the padding
    share of the micro-batches, the share of skipped responses, and L_mu and the loss scale per
    difficulty bucket k (DARO's Fig. 2)."""
    tok, passes = max(float(totals["tokens"][0]), 1.0), cfg.ppo_epochs * cfg.mini_batches
    m = {"loss": float(totals["loss"][0]) / passes, "pg_loss": float(totals["pg_loss"][0]) / passes,
         "grad_norm": float(np.mean(grad_norms)), "lr": lr,
         "padding_share": 1 - float(totals["real_tokens"][0]) / max(float(totals["computed_tokens"][0]), 1.0),
         "skipped_frac": float(totals["skipped"][0]) / max(float(totals["responses"][0]), 1.0)}
    if float(totals["tokens"][0]) > 0:  # every response may have been skipped
        m.update(ratio_max=float(totals["ratio_max"][0]), ratio_min=float(totals["ratio_min"][0]))
    for key, name in [("clip_low", "clip_low"), ("clip_high", "clip_high"), ("approx_kl", "approx_kl"),
                      ("ratio", "ratio_mean"), ("entropy", "entropy"), ("kl_ref", "kl_ref")]:
        if key in totals:
            m[name] = float(totals[key][0]) / tok
    bl, bt, bs = totals["bucket_loss"], totals["bucket_tokens"], totals["bucket_scale"]
    for k in range(1, cfg.G):
        if bt[k] > 0:
            m[f"bucket_loss/{k}"] = float(bl[k] / bt[k])  # L_mu: mean surrogate per token (signed)
            m[f"bucket_scale/{k}"] = float(bs[k]) / passes  # sum W |surrogate|
    return m


def train_on_batch(tr: Trainer, batch: Batch):
    """One training step on this rank's share of the batch; returns its metrics.

    The global batch interleaves the ranks' groups (rank r's q-th group sits at position q * world + r
    when ranks hold equal shares, which is how collect_batch deals prompts out). Loss and gradient equal
    those of one process holding the whole batch."""
    cfg = tr.cfg
    P_local, G = batch.rewards.shape
    lengths = torch.tensor([sum(m) for m in batch.loss_mask], dtype=torch.float32).view(P_local, G)
    R, L, C, mine = gather_global_batch(batch.rewards, lengths, batch.correct)
    if len(R) == 0:  # dynamic sampling kept no group on any rank: nothing to learn from this step
        tr.scheduler.step()
        return {"empty_batch": 1.0}
    tr.scheme.begin_step(R, L, C, batch.accuracy)
    A, W, W_reg, bucket, mini = advantages_and_weights(cfg, tr.scheme, R, L, C, mine)
    # A response with A_i = 0 adds nothing to the policy-gradient term (-min(r 0, clip(r) 0) = 0): without
    # a KL or entropy term it needs no forward or backward. Normalisers (W) come from the whole batch.
    regularised = cfg.loss.kl_beta or cfg.loss.entropy_coef
    trained = [not (cfg.skip_zero_advantage and not regularised and a == 0) for a in A.tolist()]
    row_len = row_length(tr, batch)
    plan = plan_micro_batches(cfg, mini, row_len, trained)
    totals, grad_norms = ppo_update(tr, batch, A, W, W_reg, bucket, plan)
    tr.scheduler.step()
    totals = reduce_stats({**totals, **plan_stats(plan, row_len, trained)})
    # DARO's L_mu divides by the bucket's tokens: all of them, trained or skipped (exact integers)
    totals["bucket_tokens"] = torch.zeros(G + 1, dtype=torch.float64).index_add_(
        0, pass_counts(C), L.double().sum(1)) * cfg.ppo_epochs
    tr.scheme.update({k: v / cfg.ppo_epochs for k, v in totals.items() if k.startswith("bucket_")})
    return update_metrics(cfg, totals, grad_norms, tr.optimizer.param_groups[0]["lr"])


def diagnose_batch(tr: Trainer, batch: Batch):
    """This rank's engine-vs-trainer log-prob mismatch before the update, by one extra no-grad pass: mean
    and max |engine - trainer| over the response tokens, float64 differences of float32 values, both at
    temperature 1 (the engine returns raw-logit log-probs). Every rank runs the same number of passes."""
    n = len(batch.response_ids)
    (chunks,) = plan_micro_batches(tr.cfg, [list(range(n // tr.cfg.G))], row_length(tr, batch), [True] * n)
    temperature, tr.policy.temperature = tr.policy.temperature, 1.0
    deltas = []
    try:
        for rows in chunks:
            mb, is_dummy = build_micro(tr, batch, rows)
            logp = per_token(tr.policy, mb, grad=False)[0].double().cpu()
            for b, i in enumerate([] if is_dummy else mb.index.tolist()):
                engine = torch.tensor(batch.engine_logprobs[i], dtype=torch.float64)
                deltas.append((logp[b, : len(engine)] - engine).abs())
    finally:
        tr.policy.temperature = temperature
    d = torch.cat(deltas) if deltas else torch.zeros(0, dtype=torch.float64)
    return {"logprob_delta_mean": float(d.mean()) if len(d) else None,
            "logprob_delta_max": float(d.max()) if len(d) else None, "logprob_tokens": len(d)}


def longest_micro_batch(tr: Trainer, max_model_len):
    """diagnostics: as many rows as one micro-batch holds of the widest the config allows (data.max_prompt_tokens
    + rollout.max_tokens, within the engine's max_model_len) through forward and backward at zero weight
    (policy.longest_pass), so that the update's worst activation peak shows before a batch needs it. Returns
    the tokens it ran."""
    cfg = tr.cfg
    width = min(cfg.data.max_prompt_tokens + cfg.rollout.max_tokens,
                max_model_len or tr.policy.model.config.max_position_embeddings)
    rows = max(1, min(cfg.micro_batch_size, cfg.micro_batch_tokens // width)) if cfg.micro_batch_tokens \
        else cfg.micro_batch_size
    return longest_pass(tr.policy, rows, width, tr.pad_id, gradient_sync=cfg.grad_sync == "micro_batch")


# ---------------------------------------------------------------------------------------------
# The learning-rate schedule and checkpoints.

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


# checkpoints/step_N/: model/ (Hugging Face safetensors, full float32 weights), dcp/ (the sharded model and
# AdamW state, any world size), trainer.pt; see distributed.py's checkpoint section.

def save_checkpoint(run_dir, step, tr: Trainer, stream: PromptStream, tokenizer, keep):
    """Write checkpoints/step_N (above) on every rank together; returns its path."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final, tmp = ckpt_root / f"step_{step:06d}", ckpt_root / f".tmp_step_{step:06d}"
    rank, world_size = world()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_sharded(tr.policy, tr.optimizer, tmp / "dcp")
    model_sd = full_model_state(tr.policy.model)
    state = {"step": step, "world_size": world_size, "scheduler": tr.scheduler.state_dict(),
             "stream": stream.state_dict(), "scheme": tr.scheme.state_dict(), "rng": all_gather(rng_state())}
    if rank == 0:
        tr.policy.model.save_pretrained(tmp / "model", state_dict=model_sd, safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(state, tmp / "trainer.pt")
        publish(ckpt_root, tmp, final, keep)
    barrier()
    check_every_rank_reads(final, f"checkpoint {final} was written")
    return final


def load_checkpoint(ckpt, tr: Trainer, stream: PromptStream):
    """Restore what save_checkpoint wrote into a freshly built trainer, resharding the model and AdamW state
    to this world size; returns the step to continue from."""
    state = torch.load(Path(ckpt) / "trainer.pt", weights_only=False)
    load_sharded(tr.policy, tr.optimizer, Path(ckpt) / "dcp")
    tr.scheduler.load_state_dict(state["scheduler"])
    stream.load_state_dict(state["stream"])
    tr.scheme.load_state_dict(state["scheme"])
    restore_rng(state["rng"], tr.cfg.seed, state["step"])
    return state["step"]


# ---------------------------------------------------------------------------------------------
# Validation during training, sharded over ranks.

def run_eval(cfg: TrainConfig, engine, val_rows):
    """Validation accuracy (avg@n) through eval.py, each rank sampling its share of the problems (rows
    rank, rank + world, ...) and the verdicts gathered; the synthetic task scores by its first character."""
    rank, world_size = world()
    shards = {}
    for name in cfg.eval.benchmarks:
        rows = val_rows if name == "synthetic" else load_benchmark(name, cfg.eval.data_dir)
        shards[name] = (rows[: cfg.eval.limit] if cfg.eval.limit else rows)[rank::world_size]
    score_fn = first_char_scores if cfg.reward.kind == "first_char" else None
    mine = {name: rows for name, rows in shards.items() if rows}
    records = evaluation.evaluate(engine, mine, n=cfg.eval.n, temperature=cfg.eval.temperature,
                                  max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens, workers=cfg.reward.workers,
                                  seed=cfg.seed + rank, score_fn=score_fn, progress=False)[1] if mine else []
    scores = {name: [] for name in shards}
    for part in all_gather([(r["benchmark"], r["score"]) for r in records]):
        for name, score in part:
            scores[name].append(score)
    return {f"val/{name}": sum(s) / len(s) for name, s in scores.items() if s}


# ---------------------------------------------------------------------------------------------
# The loop.

def setup_run(cfg: TrainConfig, resume):
    """Seeds, the run dir, the base model (built for model.path: tiny), and the checkpoint to resume from,
    agreed by all ranks. Returns (run_dir, base_path, ckpt or None)."""
    rank, _ = world()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = agree_on_checkpoint(run_dir) if resume else None
    if resume and ckpt is None and rank == 0:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints, starting fresh", file=sys.stderr)
    base_path = cfg.model.path
    if base_path == "tiny":
        base_path = str(run_dir / "tiny_model")
        if rank == 0 and not (Path(base_path) / "config.json").is_file():
            build_tiny_model(base_path, seed=cfg.seed,
                             chars=SYNTHETIC_CHARS if cfg.data.train == "synthetic" else TINY_CHARS)
        barrier()
    if rank == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return run_dir, base_path, ckpt


def build_trainer(cfg: TrainConfig, model_path, base_path, device):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    precision = logprob_precision(cfg.loss)
    policy = load_policy(model_path, cfg.model, cfg.rollout.temperature, device, logprob_precision=precision)
    ref_policy = load_policy(base_path, cfg.model, cfg.rollout.temperature, device, trainable=False,
                             logprob_precision=precision) if cfg.loss.kl_beta else None
    # fused: one kernel over all parameters (CPU and CUDA); on the CPU 5-9x faster than the per-tensor default
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.steps))
    scheme = make_scheme(cfg.scheme, G=cfg.G, max_len=cfg.rollout.max_tokens)
    return Trainer(cfg, policy, ref_policy, optimizer, scheduler, scheme, device, pad_id), tokenizer


def make_batch(cfg: TrainConfig, groups, rewards, scores, accuracy):
    samples = [s for g in groups for s in g]
    return Batch(prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.token_ids for s in samples],
                 loss_mask=[[0.0 if cfg.reward.overlong_filter and s.truncated else 1.0] * s.length for s in samples],
                 rewards=rewards, correct=scores > 0.5, accuracy=accuracy,
                 engine_logprobs=[s.logprobs for s in samples])


def training_step(tr: Trainer, engine, stream, step):
    """Collect, train, sync; returns the step's metrics (before evaluation) and this rank's diagnostics
    (memory after each phase; with cfg.diagnostics also the log-prob mismatch and the LM-head kernel time)."""
    cfg, rank = tr.cfg, world()[0]
    timers = {"rollout": 0.0, "verify": 0.0, "train": 0.0, "sync": 0.0}
    t_step = time.perf_counter()
    rows, groups, scores, rewards, gen_info = collect_batch(cfg, engine, stream, step, timers)
    mem = {"rollout": memory_gib(tr.device)}  # engine awake; "train" and "sync" below: asleep, then awake again
    engine.sleep()
    batch = make_batch(cfg, groups, rewards, scores, gen_info["accuracy"])
    diag = diagnose_batch(tr, batch) if cfg.diagnostics else {}
    recomputes = RecomputeCounter(tr.policy) if cfg.diagnostics else None  # over the longest pass and the update
    if cfg.diagnostics:  # the config's largest micro-batch while the engine sleeps: the update's worst peak
        diag["longest_micro_batch_tokens"] = longest_micro_batch(tr, engine.max_model_len)
        mem["longest_micro_batch"] = memory_gib(tr.device)
    tr.policy.kernel_timer = KernelTimer(tr.device) if cfg.diagnostics else None
    t0 = time.perf_counter()
    train_m = train_on_batch(tr, batch)
    timers["train"] = time.perf_counter() - t0
    mem["train"] = memory_gib(tr.device)
    if recomputes is not None:
        diag["checkpoint_recomputes"] = recomputes.close()
    if tr.policy.kernel_timer is not None:
        diag["lm_head_share"] = tr.policy.kernel_timer.seconds / timers["train"]
        tr.policy.kernel_timer = None
    free_cached_memory(tr.device)  # the engine re-maps its weights and KV cache next, in memory we give back
    t0 = time.perf_counter()
    engine.sync_weights(tr.policy.model)  # wakes a sleeping engine in the right order
    timers["sync"] = time.perf_counter() - t0
    mem["sync"] = memory_gib(tr.device)

    m = {"step": step + 1, **gather_metrics(batch_metrics(cfg.G, rows, groups, scores, rewards)), **train_m,
         **{f"gen/{k}": v for k, v in gen_info.items()}, **tr.scheme.metrics()}
    if gen_info["dynamic_sampling_gave_up"] and rank == 0:
        tqdm.write(f"step {step + 1}: dynamic sampling gave up after {gen_info['gen_rounds']} rounds "
                   f"with {m['groups']} of {cfg.prompts_per_step} groups; training on those")
    n_tokens = float(all_reduce(torch.tensor([float(sum(len(r) for r in batch.response_ids))]))[0])
    elapsed = time.perf_counter() - t_step
    m.update({f"time/{k}": v for k, v in timers.items()})
    m.update({"time/step": elapsed, "tokens_per_s": n_tokens / elapsed})
    m.update({f"mem/{phase}_{kind}_gib": v for phase, gib in mem.items() if gib for kind, v in gib.items()})
    return m, {**diag, "padding_share": train_m.get("padding_share"), "mem": mem,
               **{f"time/{k}": v for k, v in timers.items()}}


def run_info(tr: Trainer, engine):
    """Where this rank trains and samples: its devices, and the engine's KV-cache blocks (vLLM)."""
    llm = getattr(engine, "llm", None)
    if llm is None:  # the transformers engine
        return {"device": str(tr.device), "engine_device": str(next(engine.model.parameters()).device)}
    return {"device": str(tr.device), "engine_device": str(llm.collective_rpc(lambda worker: worker.device)[0]),
            "kv_cache_blocks": llm.llm_engine.vllm_config.cache_config.num_gpu_blocks}


def train(cfg: TrainConfig, resume=False):
    """The run, in a process group that this call sets up (or joins, under torchrun) and takes down."""
    device = init_distributed()
    try:
        return run(cfg, resume, device)
    finally:
        gc.collect()  # free FSDP state before its process group: torch 2.13 + gloo can abort at exit
        shutdown_distributed()


def run(cfg: TrainConfig, resume, device):
    run_dir, base_path, ckpt = setup_run(cfg, resume)
    rank = world()[0]
    model_path = str(ckpt / "model") if ckpt is not None else base_path
    tr, tokenizer = build_trainer(cfg, model_path, base_path, device)
    stream = PromptStream(load_rows(cfg.data, cfg.seed), cfg.seed, cfg.data.shuffle)
    val_rows = synthetic_rows(200, cfg.seed + 1_000_003) if cfg.data.train == "synthetic" else []
    start = load_checkpoint(ckpt, tr, stream) if ckpt is not None else 0
    if ckpt is not None and rank == 0:
        print(f"resumed from {ckpt} at step {start}", file=sys.stderr)
    log = MetricsLog(run_dir, start, cfg.tensorboard)

    # the sampler runs in the trainer's dtype unless told otherwise (vLLM's "auto" turns float32 into bf16 on CPU)
    rollout_cfg = cfg.rollout
    if rollout_cfg.dtype == "auto":
        rollout_cfg = dataclasses.replace(rollout_cfg, dtype=cfg.model.dtype)
    engine = make_engine(rollout_cfg, model_path, seed=cfg.seed + rank)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="train")
    try:
        info = run_info(tr, engine) if cfg.diagnostics else {}
        for step in bar:
            m, diag = training_step(tr, engine, stream, step)
            if cfg.eval.every and cfg.eval.benchmarks and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.steps):
                m.update(run_eval(cfg, engine, val_rows))
            log.write(m)
            bar.set_postfix(reward=f"{m.get('reward_mean', float('nan')):.3f}", len=f"{m.get('len_mean', 0):.1f}")
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                save_checkpoint(run_dir, step + 1, tr, stream, tokenizer, cfg.keep_checkpoints)
            if cfg.diagnostics:
                write_diagnostics(run_dir, {"step": step + 1, **info, **diag})
        barrier()  # every rank is past its last collective before vLLM shuts down
    finally:
        engine.close()
        log.close()
    if rank == 0 and cfg.steps > start:
        print(run_summary(log.path), file=sys.stderr)
        print(f"done: {log.path}; plots: python plot.py {run_dir}", file=sys.stderr)
    return run_dir


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
    try:
        train(cfg, resume=args.resume)
    except CheckpointError as e:
        sys.exit(f"checkpoint error: {e}")


if __name__ == "__main__":
    main()
