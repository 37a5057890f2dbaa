"""The trainable policy's per-token log-probs: a causal LM whose final hidden states at response positions
go through the chunked log-prob kernel (loss.token_logprobs), in right-padded micro-batches of
[prompt + response] rows. The [tokens, vocab] logits are never materialised.
"""
import contextlib
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

    def forward(self, input_ids, attention_mask, rows, cols, targets):
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = hidden[rows, cols]  # [n, H]: the states that predict the response tokens
        return token_logprobs(h, self.model.lm_head.weight, targets, temperature=self.temperature)


@dataclass
class Micro:
    """One micro-batch of responses, ready for Policy.forward."""
    input_ids: torch.Tensor       # [B, S] prompt + response, right-padded
    attention_mask: torch.Tensor  # [B, S]
    b_idx: torch.Tensor           # [n] the row of each response token (n = response tokens in all)
    t_idx: torch.Tensor           # [n] its position in the response
    cols: torch.Tensor            # [n] the position of the hidden state that predicts it
    targets: torch.Tensor         # [n] the token
    mask: torch.Tensor            # [B, T] loss mask
    index: torch.Tensor           # [B] the responses' indices in the rank's batch


def make_micro(prompt_ids, response_ids, loss_mask, index, pad_id, device):
    """Right-padded [prompt + response] rows of the responses `index`, and where each response token's
    predictor sits (the position before it)."""
    p_len = torch.tensor([len(prompt_ids[i]) for i in index])
    r_len = torch.tensor([len(response_ids[i]) for i in index])
    seqs = [torch.tensor(prompt_ids[i] + response_ids[i], dtype=torch.long) for i in index]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    attention_mask = (torch.arange(input_ids.shape[1]) < (p_len + r_len)[:, None]).long()
    b_idx = torch.repeat_interleave(torch.arange(len(index)), r_len)
    t_idx = torch.arange(len(b_idx)) - torch.repeat_interleave(r_len.cumsum(0) - r_len, r_len)
    targets = torch.tensor([t for i in index for t in response_ids[i]], dtype=torch.long)
    mask = torch.zeros(len(index), max(1, int(r_len.max())))
    mask[b_idx, t_idx] = torch.tensor([m for i in index for m in loss_mask[i]], dtype=torch.float32)
    to = lambda x: x.to(device)
    return Micro(to(input_ids), to(attention_mask), to(b_idx), to(t_idx), to(p_len[b_idx] - 1 + t_idx),
                 to(targets), to(mask), torch.tensor(index, dtype=torch.long))


def per_token(policy, mb, grad):
    """[B, T] log-probs and entropies of a micro-batch."""
    with contextlib.nullcontext() if grad else torch.no_grad():
        logp, ent = policy(mb.input_ids, mb.attention_mask, mb.b_idx, mb.cols, mb.targets)
    B, T = mb.mask.shape
    out_logp = torch.zeros(B, T, device=logp.device, dtype=logp.dtype).index_put((mb.b_idx, mb.t_idx), logp)
    out_ent = torch.zeros(B, T, device=ent.device, dtype=ent.dtype).index_put((mb.b_idx, mb.t_idx), ent.detach())
    return out_logp, out_ent
