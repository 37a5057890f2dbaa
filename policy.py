"""The trainable policy's per-token log-probs: a causal LM whose final hidden states at response positions
go through the chunked log-prob kernel (loss.token_logprobs), in micro-batches of rows. A row holds one
prompt + response, right-padded, or several packed one after another (position ids restart at each, and
transformers then masks attention between them). The [tokens, vocab] logits are never materialised.
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Optional

import torch

from distributed import note_backend
from loss import token_logprobs


class Policy(torch.nn.Module):
    """Wraps a causal LM so that one forward gives log pi and the entropy at response positions.
    Under FSDP2 this wrapper is the root module, so the LM head (and tied embedding) is unsharded
    while `forward` runs and the kernel can read its full weight."""

    def __init__(self, model, temperature):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.kernel_timer = None  # a KernelTimer while diagnostics measure the LM-head kernel

    def forward(self, input_ids, attention_mask, position_ids, rows, cols, targets):
        # no KV cache: with one, transformers would not look for packed sequences in position_ids
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        h = hidden[rows, cols]  # [n, H]: the states that predict the response tokens
        if self.kernel_timer is not None:
            return self.kernel_timer(h, self.model.lm_head.weight, targets, self.temperature)
        return token_logprobs(h, self.model.lm_head.weight, targets, temperature=self.temperature)


def load_policy(path, model_cfg, temperature, device, trainable=True):
    """The policy with float32 master weights, sharded by FSDP2 over the process group (one shard in one
    process) with a mixed-precision policy: compute in model_cfg.dtype, gradients reduced in float32, AdamW
    state in float32, at every world size."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM
    if not dist.is_initialized():
        raise RuntimeError("load_policy shards the model over the process group: call init_distributed() first")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[model_cfg.dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
    if model_cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.to(device)
    policy = Policy(model, temperature)
    if not trainable:
        policy.requires_grad_(False)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)  # the root: embedding, final norm, LM head
    note_backend("fsdp all_gather/reduce_scatter, grad-norm all_reduce", device)
    return policy


class KernelTimer:
    """Seconds in the LM-head kernel (loss.token_logprobs), forward and backward. The backward is timed from
    the first gradient reaching the kernel's outputs to its input's gradient, by tensor hooks. On CUDA every
    reading synchronises the device (a diagnostic: it slows the step a little)."""

    def __init__(self, device):
        self.device, self.seconds = torch.device(device), 0.0

    def _now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self, h, weight, targets, temperature):
        t0 = self._now()
        logp, ent = token_logprobs(h, weight, targets, temperature=temperature)
        self.seconds += self._now() - t0
        if logp.requires_grad:
            start = []

            def begin(grad):
                if not start:
                    start.append(self._now())

            def end(grad):
                self.seconds += self._now() - start[0]

            logp.register_hook(begin)
            ent.register_hook(begin)
            h.register_hook(end)
        return logp, ent


@dataclass
class Micro:
    """One micro-batch of B responses in R rows, ready for Policy.forward."""
    input_ids: torch.Tensor       # [R, S] prompt + response sequences, right-padded
    attention_mask: Optional[torch.Tensor]  # [R, S] with one sequence per row; None when packed
    position_ids: Optional[torch.Tensor]    # [R, S] restarting at each packed sequence; None: one per row
    rows: torch.Tensor            # [n] the row of each response token (n = response tokens in all)
    cols: torch.Tensor            # [n] the column of the hidden state that predicts it
    targets: torch.Tensor         # [n] the token
    b_idx: torch.Tensor           # [n] its response, 0..B-1
    t_idx: torch.Tensor           # [n] its position in the response
    mask: torch.Tensor            # [B, T] loss mask
    index: torch.Tensor           # [B] the responses' indices in the rank's batch


def pack_micro_batches(index, seq_lens, max_rows, max_tokens=0):
    """Split the responses `index` into micro-batches of rows (a row is a list of responses).

    max_tokens == 0: one response per row, runs of max_rows rows in the given order (right padding).
    max_tokens > 0: responses packed into rows as wide as the longest prompt + response (first fit,
    longest first), rows grouped max_tokens // width at a time (at most max_rows): padding is left only
    at the ends of rows, however heavy-tailed the lengths. The loss is a plain sum over responses, so
    any split gives the same gradient."""
    if not max_tokens:
        return [[[i] for i in index[a: a + max_rows]] for a in range(0, len(index), max_rows)]
    width = max((seq_lens[i] for i in index), default=1)
    rows, room = [], []
    for i in sorted(index, key=lambda i: -seq_lens[i]):
        r = next((r for r, free in enumerate(room) if free >= seq_lens[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= seq_lens[i]
    per_chunk = max(1, min(max_rows, max_tokens // width))
    return [rows[a: a + per_chunk] for a in range(0, len(rows), per_chunk)]


def make_micro(prompt_ids, response_ids, loss_mask, rows, pad_id, device):
    """The micro-batch of `rows` (lists of response indices): each row's [prompt + response] sequences
    one after another, right-padded; and where each response token's predictor sits (the column before)."""
    index = [i for row in rows for i in row]
    p_len = torch.tensor([len(prompt_ids[i]) for i in index])
    r_len = torch.tensor([len(response_ids[i]) for i in index])
    width = max(sum(len(prompt_ids[i]) + len(response_ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    starts, row_of = [], []
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            n = len(prompt_ids[i]) + len(response_ids[i])
            input_ids[r, col: col + n] = torch.tensor(prompt_ids[i] + response_ids[i])
            position_ids[r, col: col + n] = torch.arange(n)
            starts.append(col)
            row_of.append(r)
            col += n
        position_ids[r, col:] = torch.arange(width - col)  # the padding: a sequence of its own
    packed = len(index) > len(rows)
    b_idx = torch.repeat_interleave(torch.arange(len(index)), r_len)
    t_idx = torch.arange(len(b_idx)) - torch.repeat_interleave(r_len.cumsum(0) - r_len, r_len)
    cols = (torch.tensor(starts) + p_len - 1)[b_idx] + t_idx
    targets = torch.tensor([t for i in index for t in response_ids[i]], dtype=torch.long)
    mask = torch.zeros(len(index), max(1, int(r_len.max())))
    mask[b_idx, t_idx] = torch.tensor([m for i in index for m in loss_mask[i]], dtype=torch.float32)
    attention_mask = None if packed else (torch.arange(input_ids.shape[1]) < (p_len + r_len)[:, None]).long()
    to = lambda x: None if x is None else x.to(device)
    return Micro(to(input_ids), to(attention_mask), to(position_ids) if packed else None,
                 to(torch.tensor(row_of)[b_idx]), to(cols), to(targets), to(b_idx), to(t_idx), to(mask),
                 torch.tensor(index, dtype=torch.long))


def per_token(policy, mb, grad):
    """[B, T] log-probs and entropies of a micro-batch; with grad=True both carry the graph (the loss's
    entropy bonus, loss.entropy_coef, differentiates through the entropy)."""
    with contextlib.nullcontext() if grad else torch.no_grad():
        logp, ent = policy(mb.input_ids, mb.attention_mask, mb.position_ids, mb.rows, mb.cols, mb.targets)
    B, T = mb.mask.shape
    out_logp = torch.zeros(B, T, device=logp.device, dtype=logp.dtype).index_put((mb.b_idx, mb.t_idx), logp)
    out_ent = torch.zeros(B, T, device=ent.device, dtype=ent.dtype).index_put((mb.b_idx, mb.t_idx), ent)
    return out_logp, out_ent
