"""metrics.py: what a training step logs. Statistics of the sampled responses (rewards, lengths, pass-rate
histogram, accuracy per level) over all ranks; the update's loss statistics, per response (summed
over micro-batches and epochs, gathered over ranks) and per step; metrics.jsonl, one JSON record per step,
which plot.py draws (and TensorBoard and Weights & Biases, when asked); and the run's progress line."""
import json
import math
import secrets
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


def gather_responses(position, values, n_groups, G):
    """{name: [P, G] float64} over the whole global batch, in its order, from every rank's {name: [responses]}
    (`position`: the global position of each of this rank's groups)."""
    out = {k: torch.zeros(n_groups, G, dtype=torch.float64) for k in values}
    for where, part in all_gather((position, {k: v.double().view(-1, G) for k, v in values.items()})):
        for k, v in part.items():
            out[k][where] = v
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
        if key in responses and tok > 0:  # a step that trained no token has no value, not 0
            m[name] = float(responses[key].sum()) / tok
    return m


# ---------------------------------------------------------------------------------------------
# metrics.jsonl

class MetricsLog:
    """metrics.jsonl (and TensorBoard and Weights & Biases when asked), written by rank 0. A resumed run keeps
    only the records of the steps its checkpoint holds, so the file never holds a step twice.
    wandb: a WandbConfig (config.py) or None; config: the merged config as a dict, logged once to W&B."""

    def __init__(self, run_dir, start_step, tensorboard, wandb=None, config=None):
        self.path, self.writer, self.tracker = Path(run_dir) / "metrics.jsonl", None, None
        if world()[0] != 0:
            return
        old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] \
            if start_step and self.path.is_file() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in old if r["step"] <= start_step))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(Path(run_dir) / "tensorboard")
        if wandb is not None and wandb.enabled:
            self.tracker = WandbRun(run_dir, start_step, wandb, config or {})

    @property
    def wants_samples(self):
        """Whether write() takes an evaluation's sampled answers (rank 0, W&B on, eval_samples > 0)."""
        return self.tracker is not None and self.tracker.eval_samples > 0

    def write(self, m, samples=()):
        """One step's record; `samples`: rank 0's evaluation records of this step (eval.py's, plus `problem`)."""
        if world()[0] != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(m) + "\n")
        for k, v in m.items() if self.writer else ():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, m["step"])
        if self.tracker:
            self.tracker.log(m, samples)

    def close(self):
        if self.writer:
            self.writer.close()
        if self.tracker:
            self.tracker.finish(failed=sys.exc_info()[0] is not None)  # called from a finally: a crash shows


WANDB_ID_FILE = "wandb_run_id"  # in the run dir: the W&B run that --resume continues
SAMPLE_COLUMNS = ("step", "benchmark", "id", "problem", "response", "extracted", "answer", "score")


class WandbRun:
    """A Weights & Biases run, on rank 0: the merged config at init, each metrics.jsonl record at its own step
    (the same keys and values), and per evaluation a table of the first `eval_samples` problems' first answers
    per benchmark. W&B's files go to run_dir/wandb. A resumed run (start_step > 0) continues the run whose id
    run_dir/wandb_run_id holds; a fresh run gets a new id and overwrites the file."""

    def __init__(self, run_dir, start_step, cfg, config):
        import wandb
        id_file = Path(run_dir) / WANDB_ID_FILE
        old = id_file.read_text().strip() if start_step and id_file.is_file() else ""
        run_id = old or secrets.token_hex(4)  # W&B's ids are short [a-z0-9] strings
        id_file.write_text(run_id + "\n")
        self.wandb, self.eval_samples = wandb, cfg.eval_samples
        self.run = wandb.init(project=cfg.project, entity=cfg.entity or None, group=cfg.group or None,
                              name=cfg.name or Path(run_dir).resolve().name, tags=list(cfg.tags), config=config,
                              dir=str(run_dir), id=run_id, resume="allow", mode=cfg.mode or None)

    def log(self, m, samples=()):
        step = m["step"]
        if step < self.run.step:
            return  # logged before an interruption, past the checkpoint; W&B drops a step that goes back
        data = dict(m)
        if samples and self.eval_samples:
            rows, seen = [], {}
            for s in samples:
                if s["sample"] == 0 and seen.get(s["benchmark"], 0) < self.eval_samples:
                    seen[s["benchmark"]] = seen.get(s["benchmark"], 0) + 1
                    rows.append([step, *(s[c] for c in SAMPLE_COLUMNS[1:])])
            data["val/samples"] = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)
        self.run.log(data, step=step)

    def finish(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)


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


def read_metrics(path):
    """A run's metrics.jsonl as a list of records, one per logged line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_summary(metrics_path, window=50):
    """One line a reader can check at a glance: mean reward over the first and last `window` steps (each at most
    half the run, so the two never share a step), and the last value of each evaluation."""
    rows = read_metrics(metrics_path)
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    if not rewards:
        return "summary: no training steps logged"
    n = min(window, len(rewards) // 2)
    if n == 0:
        text = f"summary: reward {rewards[0]:.3f} (1 step)"
    else:
        head, tail = rewards[:n], rewards[-n:]
        text = (f"summary: reward {sum(head) / n:.3f} (first {n} steps) -> "
                f"{sum(tail) / n:.3f} (last {n} steps)")
    evals = {k: v for r in rows for k, v in r.items() if k.startswith("val/")}  # the latest of each
    return text + "".join(f"; {k} {v:.3f}" for k, v in evals.items())
