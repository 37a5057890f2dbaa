"""metrics.py: what a training step logs. Statistics of the sampled responses (rewards, lengths, pass-rate
histogram, accuracy per level) over all ranks; the update's loss statistics, per response (summed
over micro-batches and epochs, gathered over ranks) and per step; metrics.jsonl, one JSON record per step,
which plot.py draws (and TensorBoard, when asked); and the run's progress line."""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distributed import all_gather, all_reduce, world


def step_metrics(G, rows, groups, scores, rewards):
    """Statistics of the step's groups on all ranks (rewards, lengths, truncation, the pass-rate histogram,
    groups and pass rate per level), computed from every rank's per-group values as one process holding all
    groups would: a mean of the ranks' means would weight a level's pass rate, or a correct answer's length,
    by the wrong counts. scores [P, G] are this rank's verdicts (0/1), rewards [P, G] add shaping."""
    parts = all_gather({"level": [r.get("level") for r in rows], "length": [[s.length for s in g] for g in groups],
                        "truncated": [[s.truncated for s in g] for g in groups],
                        "score": scores.tolist(), "reward": rewards.tolist()})
    every = {k: [x for p in parts for x in p[k]] for k in parts[0]}
    if not every["level"]:
        return {"groups": 0}
    lengths = torch.tensor(every["length"], dtype=torch.float32).view(-1, G)
    truncated = torch.tensor(every["truncated"], dtype=torch.float32).view(-1, G)
    scores = torch.tensor(every["score"], dtype=torch.float32).view(-1, G)
    rewards = torch.tensor(every["reward"], dtype=torch.float32).view(-1, G)
    correct = scores > 0.5
    k = correct.sum(1)
    m = {"groups": len(every["level"]), "reward_mean": float(rewards.mean()), "score_mean": float(scores.mean()),
         "zero_var_frac": float((rewards.max(1).values == rewards.min(1).values).float().mean()),
         "len_mean": float(lengths.mean()), "truncated_frac": float(truncated.mean()),
         "len_correct": float(lengths[correct].mean()) if correct.any() else None,
         "len_incorrect": float(lengths[~correct].mean()) if (~correct).any() else None}
    for j in range(G + 1):
        m[f"mu_frac/{j}"] = float((k == j).float().mean())
    for lv in sorted({lv for lv in every["level"] if isinstance(lv, (int, str))}, key=str):
        sel = torch.tensor([x == lv for x in every["level"]])
        m[f"score_by_level/{lv}"] = float(scores[sel].mean())
        m[f"groups_by_level/{lv}"] = int(sel.sum())
    return m


# ---------------------------------------------------------------------------------------------
# The update's statistics: per response, then per step.

def accumulate(per_response, stats, index, n_responses):
    """Add one micro-batch's per-response statistics into the step's [n_responses] vectors (max / min for
    ratio_max / ratio_min)."""
    for k, v in stats.items():
        reduce = {"ratio_max": "amax", "ratio_min": "amin"}.get(k, "sum")
        if k not in per_response:
            per_response[k] = torch.full((n_responses,), {"amax": -math.inf, "amin": math.inf}.get(reduce, 0.0),
                                         dtype=torch.float64)
        per_response[k] = per_response[k].scatter_reduce(0, index, v.detach().double().cpu()[: len(index)], reduce)


def gather_responses(batch, values, n_groups):
    """{name: [P, G] float64} over the whole global batch, in its order, from every rank's {name: [responses]}."""
    G = batch.rewards.shape[1]
    out = {k: torch.zeros(n_groups, G, dtype=torch.float64) for k in values}
    for position, part in all_gather((batch.position, {k: v.double().view(-1, G) for k, v in values.items()})):
        for k, v in part.items():
            out[k][position] = v
    return out


def update_metrics(cfg, update, responses, plan, lr):
    """Per-step numbers: per-token means over the trained tokens, the padding share of the micro-batches
    (rows x widest against the real tokens), the share of responses left out of the training pass."""
    real = sum(mb.real_tokens for mini in plan for mb in mini)
    computed = sum(mb.input_ids.numel() for mini in plan for mb in mini if not mb.dummy)
    loss, real, computed = all_reduce(torch.tensor([update.loss, real, computed], dtype=torch.float64)).tolist()
    tok, passes = float(responses["tokens"].sum()), cfg.ppo_epochs * cfg.mini_batches
    m = {"loss": loss / passes, "pg_loss": float(responses["pg_loss"].sum()) / passes,
         "grad_norm": float(np.mean(update.grad_norms)), "lr": lr, "padding_share": 1 - real / max(computed, 1.0),
         "skipped_frac": 1 - float(responses["trained"].mean())}
    if tok > 0:  # every response may have been skipped
        m.update(ratio_max=float(responses["ratio_max"].max()), ratio_min=float(responses["ratio_min"].min()))
    for key, name in [("clip_low", "clip_low"), ("clip_high", "clip_high"), ("approx_kl", "approx_kl"),
                      ("ratio", "ratio_mean"), ("entropy", "entropy"), ("kl_ref", "kl_ref")]:
        if key in responses:
            m[name] = float(responses[key].sum()) / max(tok, 1.0)
    return m


# ---------------------------------------------------------------------------------------------
# metrics.jsonl

class MetricsLog:
    """metrics.jsonl (and TensorBoard when asked), written by rank 0. A resumed run keeps only the
    records of the steps its checkpoint holds, so the file never holds a step twice."""

    def __init__(self, run_dir, start_step, tensorboard):
        self.path, self.writer = Path(run_dir) / "metrics.jsonl", None
        if world()[0] != 0:
            return
        old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] \
            if start_step and self.path.is_file() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in old if r["step"] <= start_step))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(Path(run_dir) / "tensorboard")

    def write(self, m):
        if world()[0] != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(m) + "\n")
        for k, v in m.items() if self.writer else ():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, m["step"])

    def close(self):
        if self.writer:
            self.writer.close()


class Progress:
    """The run's progress on rank 0: a tqdm bar on a terminal; elsewhere (stderr sent to a log file) one
    line every `every` steps and at the last, instead of thousands of redrawn bars."""

    def __init__(self, start, total, enabled=True, every=None):
        from tqdm import tqdm
        self.step, self.total, self.enabled, self.t0 = start, total, enabled, time.perf_counter()
        self.every = every or max(1, (total - start) // 20)
        self.bar = tqdm(initial=start, total=total, desc="train") if enabled and sys.stderr.isatty() else None
        self.start = start

    def update(self, m):
        self.step += 1
        reward, length = m.get("reward_mean", float("nan")), m.get("len_mean", 0.0)
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{reward:.3f}", len=f"{length:.1f}")
            self.bar.update(1)
        elif self.enabled and ((self.step - self.start) % self.every == 0 or self.step == self.total):
            elapsed = time.perf_counter() - self.t0
            print(f"step {self.step}/{self.total} reward {reward:.3f} len {length:.1f} "
                  f"({elapsed / (self.step - self.start):.2f} s/step)", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
