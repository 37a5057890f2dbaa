"""The trainable policy's per-token log-probs: a causal LM whose final hidden states at response positions
go through the chunked log-prob kernel (loss.token_logprobs), in right-padded micro-batches of
[prompt + response] rows. The [tokens, vocab] logits are never materialised.
"""
import contextlib
import time
from dataclasses import dataclass

import torch

from loss import token_logprobs


class Policy(torch.nn.Module):
    """Wraps a causal LM so that one forward gives log pi and the entropy at response positions.
    Under FSDP2 this wrapper is the root module, so the LM head (and tied embedding) is unsharded
    while `forward` runs and the kernel can read its full weight."""

    def __init__(self, model, temperature):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.kernel_timer = None  # a KernelTimer while diagnostics measure the LM-head kernel

    def forward(self, input_ids, attention_mask, rows, cols, targets):
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = hidden[rows, cols]  # [n, H]: the states that predict the response tokens
        if self.kernel_timer is not None:
            return self.kernel_timer(h, self.model.lm_head.weight, targets, self.temperature)
        return token_logprobs(h, self.model.lm_head.weight, targets, temperature=self.temperature)


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
    return Micro(input_ids.to(device), attention_mask.to(device), t(rows), t(cols), t(targets), t(b_idx),
                 t(t_idx), mask.to(device), torch.tensor(index, dtype=torch.long))


def padding_slots(prompt_ids, response_ids, plan):
    """(pad slots, all slots) of the planned micro-batches' right-padded [prompt + response] rows; an empty
    (dummy) micro-batch counts as one wasted slot."""
    pad = slots = 0
    for index in (index for chunks in plan for index in chunks):
        lengths = [len(prompt_ids[i]) + len(response_ids[i]) for i in index] or [0]
        slots += max(1, len(index) * max(lengths))
        pad += max(1, len(index) * max(lengths)) - sum(lengths)
    return pad, slots



def per_token(policy, mb, grad):
    """[B, T] log-probs and entropies of a micro-batch; with grad=True both carry the graph (the loss's
    entropy bonus, loss.entropy_coef, differentiates through the entropy)."""
    with contextlib.nullcontext() if grad else torch.no_grad():
        logp, ent = policy(mb.input_ids, mb.attention_mask, mb.rows, mb.cols, mb.targets)
    B, T = mb.mask.shape
    out_logp = torch.zeros(B, T, device=logp.device, dtype=logp.dtype).index_put((mb.b_idx, mb.t_idx), logp)
    out_ent = torch.zeros(B, T, device=ent.device, dtype=ent.dtype).index_put((mb.b_idx, mb.t_idx), ent)
    return out_logp, out_ent
