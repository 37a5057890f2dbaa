"""RLVR training: prompts -> rollout (G samples) -> verify (rewards) -> weights (A, W) -> loss -> AdamW
-> weights synced back into the rollout engine. FSDP2 at every world size: one process is a group of one
(distributed.init_distributed), torchrun shards over many GPUs/CPUs.

    python train.py --config configs/experiments/tiny.yaml              # CPU, a few minutes (make tiny)
    torchrun --nproc_per_node 8 train.py --config configs/daro.yaml     # 8 GPUs
    python train.py --config configs/experiments/tiny.yaml --resume     # continue the last checkpoint
    python train.py --config configs/daro.yaml --print-config           # the merged config, as yaml
    python -m scripts.plot runs/tiny [runs/other ...] --out plots/      # PNG figures from metrics.jsonl

The file reads top to bottom: the batch (rollout and rewards), A and W, the update, `training_step` (the
whole step on one screen), checkpoints, validation, and the loop (`train`).
"""
import argparse
import dataclasses
import gc
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from torch.distributed.fsdp import FSDPModule

import eval as evaluation  # 'eval' is a builtin; the module is eval.py
import memory
from config import ConfigError, TrainConfig, check_config, load_config
from data import load_benchmark, prompt_stream, reward_function
from distributed import (CheckpointError, agree_on_checkpoint, all_gather, all_reduce, barrier, check_every_rank_reads,
                         free_cached_memory, full_model_state, init_distributed, interleaved, latest_checkpoint,
                         load_sharded, memory_gib, publish, restore_rng, rng_state, save_sharded, shutdown_distributed,
                         world, write_diagnostics, write_failed)
from loss import logprob_precision, policy_loss
from metrics import (MetricsLog, Progress, accumulate, gather_responses, run_summary, step_metrics,
                     update_metrics)
from policy import (KernelTimer, Micro, Policy, RecomputeCounter, load_policy, longest_pass, per_token,
                    plan_micro_batches)
from rollout import encode_prompts, make_engine
from weights import Scheme, StepStats, make_scheme


# ---------------------------------------------------------------------------------------------
# The batch: this rank's share of the step's prompts, G samples each, scored.

@dataclass
class Batch:
    """This rank's share of one step: P_local prompt groups of G responses, flattened group-major (response
    p * G + i is prompt p's i-th sample), scored. Built by collect_batch; weigh reads it."""
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    loss_mask: list[list[float]]   # per response token: 0 drops it from the loss (DAPO's overlong filtering)
    rewards: torch.Tensor          # [P_local, G] rewards, shaping included
    correct: torch.Tensor          # [P_local, G] bool, the verifier's verdicts: mu, DARO's buckets
    accuracy: Optional[float] = None  # correct / sampled over the step, before any filtering (HA-DW's y_t)
    reward_mean: Optional[float] = None  # mean reward (shaping included) over the same responses (y_t in reward units)
    engine_logprobs: Optional[list[list[float]]] = None  # the engine's log-probs of the responses (None: not asked)
    rows: list = field(default_factory=list)     # the prompts' data rows
    groups: list = field(default_factory=list)   # their samples (rollout.Sample), G each
    info: dict = field(default_factory=dict)     # generation: rounds, dynamic sampling, skipped prompts


def overlong_penalty(length, max_len, buffer):
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to L_max - L_cache, then a linear
    ramp to -1 at L_max, -1 beyond."""
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return ((max_len - buffer) - length) / buffer
    return -1.0


def hash_seed(*parts):
    """A sampling seed that depends only on (seed, step, round, rank): runs and resumes reproduce."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def prompt_fits(cfg: TrainConfig, engine, problem):
    """Whether the templated prompt, encoded as the engine will, has 1 to data.max_prompt_tokens tokens and
    leaves room for a response under the engine's max_model_len."""
    try:
        (ids,) = encode_prompts(engine.tokenizer, [problem], cfg.rollout.template, engine.max_model_len,
                                instruction=cfg.rollout.instruction)
    except (ValueError, TypeError):  # empty after templating, no room left, or not a string
        return False
    return len(ids) <= cfg.data.max_prompt_tokens


def collect_batch(cfg: TrainConfig, engine, stream, step, timers) -> Batch:
    """Generate and score this rank's share of the step's prompts: verifier scores (0/1) and rewards
    (scores plus DAPO's overlong shaping). With dynamic sampling (DAPO), groups whose responses are all
    correct or all wrong are dropped and more prompts are generated, in rounds that all ranks take
    together, until P groups are kept or max_num_gen_batches rounds were spent. info["accuracy"] is
    correct over all responses sampled this step on all ranks, before that filtering (HA-DW's y_t).
    Prompts longer than data.max_prompt_tokens are skipped before generation by the rank that drew them
    (no engine ever raises on one rank alone) and counted over all ranks (gen/skipped_prompts). The stream
    sees every rank's verdicts per level (a LevelCurriculum draws the next levels from them)."""
    P, G = cfg.prompts_per_step, cfg.G
    rank, world_size = world()
    score = reward_function(cfg.reward.kind, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    rows, groups, scores, rewards = [], [], [], []
    rounds, gave_up, skipped = 0, False, 0
    correct = sampled = reward_sum = 0.0  # over every response sampled (before dynamic sampling's filter)
    nll = tokens = 0.0  # -log pi(y_t) of every sampled token and their count: gen/entropy
    # vLLM returns the sampled token's log-prob at little cost; HF generate would keep every step's logits
    want_logprobs = cfg.diagnostics or cfg.rollout.engine == "vllm"
    by_level = torch.zeros(len(stream.levels), 2, dtype=torch.float64)  # correct, sampled: for a LevelCurriculum
    while True:
        drawn = stream.take(P)[rank::world_size]  # every rank walks the same stream and takes its share
        mine = [r for r in drawn if prompt_fits(cfg, engine, r["problem"])]
        skipped += len(drawn) - len(mine)
        t0 = time.perf_counter()
        seed = hash_seed(cfg.seed, step, rounds, rank)
        out = engine.generate([r["problem"] for r in mine], G, seed=seed, logprobs=want_logprobs) if mine else []
        t1 = time.perf_counter()
        sc = torch.tensor(score([s.text for g in out for s in g], [r["answer"] for r in mine for _ in range(G)],
                                [r["problem"] for r in mine for _ in range(G)]),  # the problem: "round to ..."
                          dtype=torch.float32).view(len(mine), G)
        timers["rollout"] += t1 - t0
        timers["verify"] += time.perf_counter() - t1
        rw = sc.clone()
        if cfg.reward.overlong_buffer > 0:
            for p, g in enumerate(out):
                for i, s in enumerate(g):
                    rw[p, i] += overlong_penalty(s.length, cfg.rollout.max_tokens, cfg.reward.overlong_buffer)
        rounds += 1
        k = (sc > 0.5).sum(1)
        correct, sampled = correct + float(k.sum()), sampled + sc.numel()
        logprobs = [s.logprobs for g in out for s in g if s.logprobs is not None]
        nll, tokens = nll - sum(map(sum, logprobs)), tokens + sum(map(len, logprobs))
        reward_sum += float(rw.double().sum())
        for row, k_p in zip(mine, k.tolist()) if stream.levels else ():
            by_level[stream.levels.index(row["level"])] += torch.tensor([k_p, G], dtype=torch.float64)
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
    total = sum_over_ranks(correct=correct, sampled=sampled, reward_sum=reward_sum, skipped=skipped,
                           by_level=by_level, nll=nll, tokens=tokens)
    stream.observe(total["by_level"])  # every rank's verdicts, before dynamic sampling's filter
    accuracy = float(total["correct"]) / max(float(total["sampled"]), 1.0)
    samples = [s for g in groups for s in g]
    return Batch(prompt_ids=[s.prompt_ids for s in samples], response_ids=[s.token_ids for s in samples],
                 loss_mask=[[0.0 if cfg.reward.overlong_filter and s.truncated else 1.0] * s.length for s in samples],
                 rewards=rewards, correct=scores > 0.5, accuracy=accuracy,
                 reward_mean=float(total["reward_sum"]) / max(float(total["sampled"]), 1.0),
                 engine_logprobs=[s.logprobs for s in samples], rows=rows, groups=groups,
                 info={"gen_rounds": rounds, "dynamic_sampling_gave_up": float(gave_up),
                       "accuracy": accuracy, "skipped_prompts": int(total["skipped"]),
                       # the policy's entropy over every sampled response, trained or not (the logged `entropy`
                       # covers trained tokens only): the mean of -log pi(y_t) over sampled tokens, which at
                       # temperature 1 has the per-token entropy as its expectation; absent without log-probs
                       **({"entropy": float(total["nll"]) / float(total["tokens"])} if total["tokens"] else {})})


def sum_over_ranks(**values):
    """Each named number or float64 tensor summed over all ranks, in one collective; returned by name as
    float64 tensors of their own shapes (a number: 0-d)."""
    parts = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in values.items()}
    flat = all_reduce(torch.cat([p.reshape(-1) for p in parts.values()]))
    pieces = flat.split([p.numel() for p in parts.values()])
    return {k: piece.view(p.shape) for (k, p), piece in zip(parts.items(), pieces)}


# ---------------------------------------------------------------------------------------------
# A and W: from the whole global batch, as one process holding every rank's groups would compute them.

@dataclass
class Weighting:
    """What weigh computes for this rank's responses ([P_local * G] float32, in the batch's order), and where
    its groups sit in the global batch."""
    A: torch.Tensor            # advantages
    W: torch.Tensor            # weights (the global normaliser included)
    W_reg: torch.Tensor        # weights of the KL and entropy terms
    position: list[int]        # global position of each local group
    mini: list[list[int]]      # the local groups of each mini-batch
    n_groups: int              # groups in the global batch (0: dynamic sampling kept none on any rank)


def weigh(cfg: TrainConfig, scheme: Scheme, batch: Batch) -> Weighting:
    """A, W and W_reg of this rank's responses, computed from every rank's groups.

    Every rank gathers the rewards, lengths and verdicts of all groups (a few numbers per response) in the
    global order, which interleaves the ranks (rank r's q-th group sits at q * world + r when shares are
    equal, as collect_batch deals prompts out). A comes from the whole batch, W from each mini-batch (the
    j-th contiguous slice of the global order). W_reg weighs the KL and entropy terms: 1 / (tokens in the
    mini-batch) unless loss.reg_weight is "scheme" (then W)."""
    P_local, G = batch.rewards.shape
    rank, _ = world()
    lengths = torch.tensor([sum(m) for m in batch.loss_mask], dtype=torch.float32).view(P_local, G)
    gathered = all_gather((batch.rewards, lengths, batch.correct))
    order = interleaved([parts[0].shape[0] for parts in gathered])
    R, L, C = (torch.stack([gathered[r][j][q] for r, q in order]) if order else empty[:0]
               for j, empty in enumerate((batch.rewards, lengths, batch.correct)))
    index = {rq: i for i, rq in enumerate(order)}
    position = [index[(rank, q)] for q in range(P_local)]
    slices = [(len(R) * j // cfg.mini_batches, len(R) * (j + 1) // cfg.mini_batches) for j in range(cfg.mini_batches)]
    mini = [[q for q in range(P_local) if a <= position[q] < b] for a, b in slices]
    if not order:
        nothing = torch.zeros(0)
        return Weighting(nothing, nothing, nothing, position, mini, n_groups=0)
    scheme.begin_step(R, L, C, batch.accuracy, reward_mean=batch.reward_mean)
    A = scheme.advantages(R)
    W, W_reg = torch.zeros(len(R), G), torch.zeros(len(R), G)
    for a, b in slices:
        if b > a:
            W[a:b] = scheme.weights(R[a:b], L[a:b], C[a:b])
            W_reg[a:b] = W[a:b] if cfg.loss.reg_weight == "scheme" else 1.0 / max(float(L[a:b].sum()), 1.0)
    return Weighting(A[position].flatten(), W[position].flatten(), W_reg[position].flatten(), position, mini,
                     n_groups=len(R))


# ---------------------------------------------------------------------------------------------
# The trainer: what the update needs.

@dataclass
class Trainer:
    """The config, the models, the optimiser and the weighting scheme."""
    cfg: TrainConfig
    policy: Policy
    ref_policy: Optional[Policy]   # the KL reference (loss.kl_beta > 0), else None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scheme: Scheme
    device: torch.device
    pad_id: int


# ---------------------------------------------------------------------------------------------
# The update: ppo_epochs passes over the mini-batches, one optimiser step each.

@dataclass
class Update:
    """What the optimiser steps of one training step leave: this rank's loss statistics per response
    ([responses] float64: loss.policy_loss's, summed over epochs; ratio_max / ratio_min: max / min),
    its summed loss, and the gradient norm of each optimiser step."""
    per_response: dict
    loss: float
    grad_norms: list[float]


@dataclass
class MicroBatch:
    """One micro-batch of the update, complete when built: its tokens and what the loss reads besides them."""
    tokens: Micro                    # B responses laid out for Policy.forward (policy.plan_micro_batches)
    A: torch.Tensor                  # [B] advantages, W [B] weights, W_reg [B] KL / entropy weights
    W: torch.Tensor
    W_reg: torch.Tensor
    old_logp: Optional[torch.Tensor]  # [B, T] log pi_old when the policy moves within the step, else None
    ref_logp: Optional[torch.Tensor]  # [B, T] log pi_ref with a KL term (loss.kl_beta), else None


def micro_batches(tr: Trainer, batch: Batch, weighting: Weighting, trained) -> list[list[MicroBatch]]:
    """The step's micro-batches, per mini-batch, each with its responses' A, W and W_reg and, before any
    update, log pi_old (the policy before this step's first update) and log pi_ref. pi_old is needed only
    when the policy moves within the step (several epochs or mini-batches); otherwise the ratio is 1 and the
    loss uses the current log-probs, detached. A dummy (no response) gets zero weights."""
    cfg, device = tr.cfg, tr.device
    need_old = cfg.ppo_epochs > 1 or cfg.mini_batches > 1

    def complete(mb: Micro):
        A, W, W_reg = ((torch.zeros(1, device=device) if mb.dummy else x[mb.index].to(device))
                       for x in (weighting.A, weighting.W, weighting.W_reg))
        return MicroBatch(mb, A, W, W_reg,
                          old_logp=per_token(tr.policy, mb, grad=False).logp if need_old else None,
                          ref_logp=per_token(tr.ref_policy, mb, grad=False).logp if cfg.loss.kl_beta else None)

    plan = plan_micro_batches(batch, weighting.mini, trained, cfg, pad_id=tr.pad_id, device=device)
    return [[complete(mb) for mb in mini] for mini in plan]


def update_policy(tr: Trainer, plan, n_responses) -> Update:
    """ppo_epochs passes over the plan's mini-batches (micro_batches), one optimiser step each."""
    cfg, (_, world_size) = tr.cfg, world()
    sharded = isinstance(tr.policy, FSDPModule)
    per_response, loss_sum, grad_norms = {}, 0.0, []
    for epoch in range(cfg.ppo_epochs):
        for mini in plan:
            for n, mb in enumerate(mini):
                if sharded:  # reduce-scatter gradients once per optimiser step, after its last backward
                    tr.policy.set_requires_gradient_sync(cfg.grad_sync == "micro_batch" or n == len(mini) - 1)
                now = per_token(tr.policy, mb.tokens, grad=True)
                old = mb.old_logp if mb.old_logp is not None else now.logp.detach()
                loss, stats = policy_loss(now.logp, old, mb.tokens.mask, mb.A, mb.W, cfg.loss, W_reg=mb.W_reg,
                                          ref_logp=mb.ref_logp, entropy=now.entropy)
                # FSDP averages gradients over ranks; the loss is a global sum, so undo the average
                (loss * world_size).backward()
                loss_sum += float(loss.detach().double())
                accumulate(per_response, stats, mb.tokens.index, n_responses)  # a dummy's index is empty
            grad_norm = torch.nn.utils.clip_grad_norm_(tr.policy.parameters(), cfg.optim.grad_clip)
            grad_norms.append(float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm))
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
    return Update(per_response, loss_sum, grad_norms)


def train_on_batch(tr: Trainer, batch: Batch):
    """A and W, the micro-batch plan, the policy's update and the scheme's; returns the step's metrics.
    Loss and gradient equal those of one process holding every rank's groups."""
    cfg = tr.cfg
    # ---- A, W: from every rank's groups
    weighting = weigh(cfg, tr.scheme, batch)
    if weighting.n_groups == 0:  # dynamic sampling kept no group on any rank: nothing to learn from this step
        tr.scheduler.step()
        return {"empty_batch": 1.0}
    # ---- plan: a response with A_i = 0 adds nothing to the policy-gradient term (-min(r 0, clip(r) 0) = 0):
    # without a KL or entropy term it needs no forward or backward (its tokens still count in W's normalisers)
    regularised = cfg.loss.kl_beta or cfg.loss.entropy_coef
    trained = torch.tensor([not (cfg.skip_zero_advantage and not regularised and a == 0)
                            for a in weighting.A.tolist()])
    plan = micro_batches(tr, batch, weighting, trained.tolist())  # log pi_old and log pi_ref included
    # ---- update: ppo_epochs x mini_batches optimiser steps
    update = update_policy(tr, plan, len(batch.response_ids))
    lr = tr.optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves on to the next)
    tr.scheduler.step()
    # ---- the scheme's own update (DARO's w_mu), from every response's statistics in the global order
    responses = gather_responses(weighting.position, {**update.per_response, "W": weighting.W, "trained": trained},
                                 weighting.n_groups, cfg.G)
    tr.scheme.update(StepStats(surrogate=responses["surrogate"], abs_surrogate=responses["abs_surrogate"],
                               W=responses["W"], epochs=cfg.ppo_epochs,
                               optimizer_steps=cfg.ppo_epochs * cfg.mini_batches))
    return update_metrics(cfg, update, responses, [[mb.tokens for mb in mini] for mini in plan], lr)


# ---------------------------------------------------------------------------------------------
# One training step: rollout -> verify -> A, W -> plan -> update -> sync.

def training_step(tr: Trainer, engine, stream, step):
    """Returns the step's metrics (before evaluation) and this rank's diagnostics (memory after each phase;
    with cfg.diagnostics also the engine-vs-trainer log-prob mismatch and the LM-head kernel's time)."""
    cfg = tr.cfg
    timers = {"rollout": 0.0, "verify": 0.0, "train": 0.0, "sync": 0.0}
    t_step = time.perf_counter()
    # ---- rollout and verify: G samples of this rank's prompts, scored (collect_batch times both)
    batch = collect_batch(cfg, engine, stream, step, timers)
    mem = {"rollout": memory_gib(tr.device)}  # engine awake; "train" and "sync" below: asleep, then awake again
    engine.sleep()
    diag = diagnose_batch(tr, batch) if cfg.diagnostics else {}
    recomputes = RecomputeCounter(tr.policy) if cfg.diagnostics else None  # over the longest pass and the update
    if cfg.diagnostics:  # the config's largest micro-batch while the engine sleeps: the update's worst peak
        diag["longest_micro_batch_tokens"] = longest_micro_batch(tr, engine.max_model_len)
        mem["longest_micro_batch"] = memory_gib(tr.device)
    tr.policy.kernel_timer = KernelTimer(tr.device) if cfg.diagnostics else None
    # ---- A, W -> plan -> update: the policy's optimiser steps, then the scheme's own update
    t0 = time.perf_counter()
    train_m = train_on_batch(tr, batch)
    timers["train"] = time.perf_counter() - t0
    mem["train"] = memory_gib(tr.device)
    if recomputes is not None:
        diag["checkpoint_recomputes"] = recomputes.close()
    if tr.policy.kernel_timer is not None:
        diag["lm_head_share"] = tr.policy.kernel_timer.seconds / timers["train"]
        tr.policy.kernel_timer = None
    # ---- sync: the new weights into the engine (which wakes it in the right order)
    free_cached_memory(tr.device)  # the engine re-maps its weights and KV cache next, in memory we give back
    t0 = time.perf_counter()
    engine.sync_weights(tr.policy.model)
    timers["sync"] = time.perf_counter() - t0
    mem["sync"] = memory_gib(tr.device)

    m = {"step": step + 1, **step_metrics(cfg.G, batch.rows, batch.groups, batch.correct.float(), batch.rewards),
         **train_m, **{f"gen/{k}": v for k, v in batch.info.items()}, **tr.scheme.metrics()}
    if batch.info["dynamic_sampling_gave_up"] and world()[0] == 0:
        print(f"step {step + 1}: dynamic sampling gave up after {batch.info['gen_rounds']} rounds "
              f"with {m['groups']} of {cfg.prompts_per_step} groups; training on those", file=sys.stderr)
    n_tokens = float(all_reduce(torch.tensor([float(sum(len(r) for r in batch.response_ids))]))[0])
    elapsed = time.perf_counter() - t_step
    m.update({f"time/{k}": v for k, v in timers.items()})
    m.update({"time/step": elapsed, "tokens_per_s": n_tokens / elapsed})
    m.update({f"mem/{phase}_{kind}_gib": v for phase, gib in mem.items() if gib for kind, v in gib.items()})
    return m, {**diag, "padding_share": train_m.get("padding_share"), "mem": mem,
               **{f"time/{k}": v for k, v in timers.items()}}


def diagnose_batch(tr: Trainer, batch: Batch):
    """This rank's engine-vs-trainer log-prob mismatch before the update, by one extra no-grad pass: mean
    and max |engine - trainer| over the response tokens, float64 differences of float32 values, both at
    temperature 1 (the engine returns raw-logit log-probs). Every rank runs the same number of passes."""
    n = len(batch.response_ids)
    (micros,) = plan_micro_batches(batch, [list(range(n // tr.cfg.G))], [True] * n, tr.cfg, pad_id=tr.pad_id,
                                   device=tr.device)
    temperature, tr.policy.temperature = tr.policy.temperature, 1.0
    deltas = []
    try:
        for mb in micros:
            logp = per_token(tr.policy, mb, grad=False).logp.double().cpu()
            for b, i in enumerate(mb.index.tolist()):
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
# Checkpoints.

# checkpoints/step_N/: model/ (Hugging Face safetensors, full float32 weights), dcp/ (the sharded model and
# AdamW state, any world size), trainer.pt; see distributed.py's checkpoint section.

def save_checkpoint(run_dir, step, tr: Trainer, stream, tokenizer, keep):
    """Write checkpoints/step_N (above) on every rank together; returns its path. A write that fails (a full
    disk) raises one CheckpointError on every rank and leaves the previous checkpoint as `latest`."""
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
    failure = None
    if rank == 0:
        try:
            tr.policy.model.save_pretrained(tmp / "model", state_dict=model_sd, safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            torch.save(state, tmp / "trainer.pt")
            publish(ckpt_root, tmp, final, keep)
        except (OSError, RuntimeError) as e:
            failure = str(write_failed(tmp, e))
    failures = [f for f in all_gather(failure) if f]  # every rank raises, none is left waiting in a collective
    if failures:
        raise CheckpointError(failures[0])
    check_every_rank_reads(final, f"checkpoint {final} was written")
    return final


def load_checkpoint(ckpt, tr: Trainer, stream):
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

def load_val_sets(cfg: TrainConfig):
    """{name: rows} of eval.benchmarks (names in eval.data_dir, or .jsonl paths named by their stem), read
    before training starts so that a missing file stops the run at once, not at the first evaluation."""
    if not (cfg.eval.every and cfg.eval.benchmarks):
        return {}
    sets = {}
    for name in cfg.eval.benchmarks:
        try:
            rows = load_benchmark(name, cfg.eval.data_dir)
        except (OSError, ValueError) as e:
            raise SetupError(f"eval.benchmarks: {e}") from None
        sets[Path(name).stem if name.endswith(".jsonl") else name] = rows[: cfg.eval.limit] if cfg.eval.limit else rows
    return sets


def run_eval(cfg: TrainConfig, engine, val_sets, samples=None):
    """Validation accuracy (avg@n) through eval.py, each rank sampling its share of the problems (rows
    rank, rank + world, ...), scored by the run's reward, and the verdicts gathered. `samples`, a list: rank 0
    appends its own eval.py records to it, each with its problem (the W&B table of answers)."""
    rank, world_size = world()
    shards = {name: rows[rank::world_size] for name, rows in val_sets.items()}
    mine = {name: rows for name, rows in shards.items() if rows}
    score = reward_function(cfg.reward.kind, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    records = evaluation.evaluate(engine, mine, n=cfg.eval.n, temperature=cfg.eval.temperature,
                                  max_tokens=cfg.eval.max_tokens or cfg.rollout.max_tokens, seed=cfg.seed + rank,
                                  score_fn=score, progress=False)[1] if mine else []
    if samples is not None and rank == 0:  # this rank's own answers, with their problems, for the W&B table
        problem = {(name, row["id"]): row["problem"] for name, rows in mine.items() for row in rows}
        samples += [{**r, "problem": problem[r["benchmark"], r["id"]]} for r in records]
    scores = {name: [] for name in shards}
    for part in all_gather([(r["benchmark"], r["score"]) for r in records]):
        for name, s in part:
            scores[name].append(s)
    return {f"val/{name}": sum(s) / len(s) for name, s in scores.items() if s}


# ---------------------------------------------------------------------------------------------
# The loop.

class SetupError(Exception):
    """Something the config names cannot be had (a model path, a data file): one line, every rank stops."""


def setup_run(cfg: TrainConfig, resume):
    """Seeds, the run dir and config.yaml, and the checkpoint to resume from, agreed by all ranks."""
    rank, _ = world()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = agree_on_checkpoint(run_dir) if resume else None
    if resume and ckpt is None and rank == 0:
        print(f"--resume: no checkpoint in {run_dir}/checkpoints, starting fresh", file=sys.stderr)
    if not resume and rank == 0 and latest_checkpoint(run_dir) is not None:
        print(f"warning: {run_dir} holds an earlier run's checkpoints ({latest_checkpoint(run_dir).name}); this "
              "run starts fresh beside them (--resume continues that run)", file=sys.stderr)
    if rank == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return run_dir, ckpt


def load_tokenizer(path):
    """The model's tokenizer; a path that is neither a local model nor reachable on the hub is one line."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        where = "is not a local model directory" if not Path(path).exists() else "holds no model files"
        raise SetupError(f"model.path {path!r} {where} and could not be loaded from the hub "
                             f"({str(e).splitlines()[0][:120]}): download it or set model.path") from None


def build_trainer(cfg: TrainConfig, model_path, base_path, device):
    tokenizer = load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    precision = logprob_precision(cfg.loss)
    policy = load_policy(model_path, cfg.model, cfg.rollout.temperature, device, logprob_precision=precision)
    ref_policy = load_policy(base_path, cfg.model, cfg.rollout.temperature, device, trainable=False,
                             logprob_precision=precision) if cfg.loss.kl_beta else None
    # fused: one kernel over all parameters (CPU and CUDA) instead of a loop of kernels per tensor
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.optim.lr_factor(cfg.steps))
    scheme = make_scheme(cfg.scheme, G=cfg.G, max_len=cfg.rollout.max_tokens)
    return Trainer(cfg, policy, ref_policy, optimizer, scheduler, scheme, device, pad_id), tokenizer


def train(cfg: TrainConfig, resume=False, memory_check=True):
    """The run, in a process group that this call sets up (or joins, under torchrun) and takes down. On GPUs the
    memory plan (memory.py) runs first, before any model or engine is built: a run it says cannot fit is refused
    in one line naming the key to change (memory_check=False, train.py --skip-memory-check, runs it anyway)."""
    device = init_distributed()
    try:
        if memory_check and device.type == "cuda":
            try:
                memory.check(cfg, world()[1], torch.cuda.mem_get_info(device)[1])
            except memory.PlanError as e:
                raise SetupError(f"{e} (--skip-memory-check starts anyway)") from None
        return run(cfg, resume, device)
    finally:
        gc.collect()  # free FSDP state before its process group: torch 2.13 + gloo can abort at exit
        shutdown_distributed()


def run(cfg: TrainConfig, resume, device):
    run_dir, ckpt = setup_run(cfg, resume)
    rank = world()[0]
    model_path = str(ckpt / "model") if ckpt is not None else cfg.model.path
    val_sets = load_val_sets(cfg)
    tr, tokenizer = build_trainer(cfg, model_path, cfg.model.path, device)
    try:
        stream = prompt_stream(cfg.data, cfg.seed)
    except (OSError, ValueError) as e:
        raise SetupError(f"data.train: {e}") from None
    start = load_checkpoint(ckpt, tr, stream) if ckpt is not None else 0
    if ckpt is not None and rank == 0:
        print(f"resumed from {ckpt} at step {start}", file=sys.stderr)
    log = MetricsLog(run_dir, start, cfg.tensorboard, cfg.wandb, dataclasses.asdict(cfg))

    engine = make_engine(dataclasses.replace(cfg.rollout, dtype=cfg.sampler_dtype), model_path, seed=cfg.seed + rank)
    progress = Progress(start, cfg.steps, enabled=rank == 0)
    try:
        info = {"device": str(tr.device), **engine.info()} if cfg.diagnostics else {}
        for step in range(start, cfg.steps):
            m, diag = training_step(tr, engine, stream, step)
            samples = [] if log.wants_samples else None
            if cfg.eval.every and cfg.eval.benchmarks and ((step + 1) % cfg.eval.every == 0 or step + 1 == cfg.steps):
                m.update(run_eval(cfg, engine, val_sets, samples))
            log.write(m, samples)
            progress.update(m)
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
                save_checkpoint(run_dir, step + 1, tr, stream, tokenizer, cfg.keep_checkpoints)
            if cfg.diagnostics:
                write_diagnostics(run_dir, {"step": step + 1, **info, **diag})
        barrier()  # every rank is past its last collective before vLLM shuts down
    finally:
        progress.close()
        engine.close()
        log.close()
    if rank == 0 and cfg.steps > start:
        print(run_summary(log.path), file=sys.stderr)
        print(f"done: {log.path}; plots: python -m scripts.plot {run_dir}", file=sys.stderr)
    return run_dir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="yaml config (see configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir's latest checkpoint")
    ap.add_argument("--print-config", action="store_true", help="print the merged config as yaml and exit")
    ap.add_argument("--memory-plan", action="store_true", help="print the memory plan per GPU, term by term, and "
                    "exit: 0 when it fits with 15%% headroom, 1 (one line naming the key to change) when not")
    ap.add_argument("--world-size", type=int, help="--memory-plan: GPUs to plan for (default: $WORLD_SIZE, else 1)")
    ap.add_argument("--model-config", help="--memory-plan: a directory holding the model's config.json (default: "
                                           "model.path; no weights are read)")
    ap.add_argument("--gpu-memory", type=float, default=80.0, help="--memory-plan: GB per GPU (default 80)")
    ap.add_argument("--skip-memory-check", action="store_true", help="on GPUs, start even when the memory plan "
                                                                     "says the run cannot fit")
    ap.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
    except (ConfigError, yaml.YAMLError) as e:
        sys.exit(f"config error: {e}")
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
        return
    if args.memory_plan:
        world_size = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
        try:
            p = memory.plan(cfg, memory.read_model_config(args.model_config or cfg.model.path), world_size,
                            args.gpu_memory * memory.GB, name=args.config or "")
        except memory.PlanError as e:
            sys.exit(f"memory plan: {e}")
        print(memory.format_plan(p, cfg))
        sys.exit(0 if p.fits() else 1)
    try:
        train(cfg, resume=args.resume, memory_check=not args.skip_memory_check)
    except CheckpointError as e:
        sys.exit(f"checkpoint error: {e}")
    except SetupError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
