"""The trainable policy's per-token log-probs: a causal LM whose final hidden states at response positions
go through the chunked log-prob kernel (loss.token_logprobs), in micro-batches of rows. A row holds one
prompt + response, right-padded, or several packed one after another (position ids restart at each, and
transformers then masks attention between them), or, with prompts shared, a prompt followed by its responses
attending through `block_attention`. The [tokens, vocab] logits are never materialised.
"""
import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from distributed import all_reduce, note_backend
from loss import token_logprobs


class Policy(torch.nn.Module):
    """Wraps a causal LM so that one forward gives log pi and the entropy at response positions.
    Under FSDP2 this wrapper is the root module, so the LM head (and tied embedding) is unsharded
    while `forward` runs and the kernel can read its full weight."""

    def __init__(self, model, temperature, precision="highest"):
        super().__init__()
        self.model, self.temperature = model, temperature
        self.precision = precision  # the LM-head kernel's float32 matmuls: loss.logprob_precision()
        self.kernel_timer = None  # a KernelTimer while diagnostics measure the LM-head kernel
        if model.config._attn_implementation == "sdpa":  # the same, plus shared-prompt blocks when given
            register_block_attention()
            model.set_attn_implementation("sdpa_blocks")

    def forward(self, input_ids, attention_mask, position_ids, rows, cols, targets, blocks=None):
        if blocks is not None and self.model.config._attn_implementation != "sdpa_blocks":
            raise ValueError(f"share_prompt needs the model's attention to be sdpa, found "
                             f"{self.model.config._attn_implementation!r}")
        # no KV cache: with one, transformers would not look for packed sequences in position_ids.
        # A 4D mask (the blocks') goes through transformers as is; `blocks` reaches every attention call.
        kw = {"attention_mask": attention_mask} if blocks is None else {"attention_mask": blocks.mask,
                                                                         "blocks": blocks}
        hidden = self.model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                  **kw).last_hidden_state
        h = hidden[rows, cols]  # [n, H]: the states that predict the response tokens
        kernel = token_logprobs if self.kernel_timer is None else self.kernel_timer
        return kernel(h, self.model.lm_head.weight, targets, temperature=self.temperature, precision=self.precision)


@dataclass
class PromptBlocks:
    """share_prompt's attention: a block per prompt (its tokens, causal) and one per response (its prompt's
    tokens, then its own, causal), gathered from the micro-batch's R x S token grid."""
    q_index: torch.Tensor  # [N, Q] flat index (row * S + column) of each block's query tokens, padded with 0
    q_dest: torch.Tensor   # [N * Q] where each query's output goes: q_index, or R * S (a slot dropped) for padding
    k_index: torch.Tensor  # [N, K] flat index of its keys, padded with 0
    mask: torch.Tensor     # [N, 1, Q, K] bool: key visible from query (a padded query sees one key: no NaN)


def block_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, blocks=None, **kwargs):
    """transformers' sdpa attention, or with `blocks` (share_prompt) attention block by block: a response's
    queries against its prompt's keys and its own, as if each response sat in a row of its own after its
    prompt. The cost is N x Q x K scores instead of (prompt + G responses)^2 per row with a dense mask.
    query [R, H, S, D], key/value [R, Hkv, S, D]; returns [R, S, H, D] (transformers' layout)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    R, H, S, D = query.shape
    flat = lambda x: x.transpose(1, 2).reshape(R * S, x.shape[1], D)  # noqa: E731  [R * S, heads, D]
    q = flat(query)[blocks.q_index].transpose(1, 2)  # [N, H, Q, D]
    k, v = (flat(x)[blocks.k_index].transpose(1, 2).repeat_interleave(H // key.shape[1], dim=1)
            for x in (key, value))  # [N, H, K, D]; query head h reads key head h // (H / Hkv), as transformers does
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=blocks.mask, dropout_p=dropout,
                                                           scale=scaling)
    # each real token is the query of exactly one block; padded queries all land in the extra slot R * S.
    # (Fixed shapes, no boolean indexing: no host sync on GPUs, one graph under torch.compile.)
    out = out.transpose(1, 2).reshape(-1, H, D)  # [N * Q, H, D]
    grid = out.new_zeros(R * S + 1, H, D).index_copy(0, blocks.q_dest, out)
    return grid[: R * S].view(R, S, H, D), None


def register_block_attention():
    """Make "sdpa_blocks" (block_attention, with sdpa's masks) an attention implementation of transformers."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask
    AttentionInterface.register("sdpa_blocks", block_attention)
    AttentionMaskInterface.register("sdpa_blocks", sdpa_mask)


class OneDNNLinear(torch.autograd.Function):
    """y = x @ w.T + b by oneDNN instead of torch's BLAS, for float32 on the CPU. torch sends CPU matmuls to MKL,
    whose sgemm is slower than oneDNN (vLLM's CPU build uses it too) at the forward and input-gradient matmuls
    of these shapes (K = 576 or 1536, N up to 3072); benchmarks/bench_train_pass.py measures both (figures in
    benchmarks/README.md). Strict float32 either way, only the order of the sums differs. The weight gradient stays with
    torch: oneDNN was no faster at that shape. The op is torch's own oneDNN linear, the one inductor's CPU
    backend emits; it is private API, pinned here by torch==2.13.0 and by tests/test_policy.py."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = torch.ops.mkldnn._linear_pointwise(grad, weight.t(), None, "none", [], "") if need_x else None
        gw = g2.t() @ x2 if need_w else None
        gb = g2.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb


def use_onednn_linears(model):
    """Route the decoder layers' nn.Linear modules through OneDNNLinear while their inputs are float32 CPU
    tensors (anything else, e.g. bfloat16 compute, takes torch's own path)."""
    def forward(module, x):
        if x.dtype == torch.float32 and x.device.type == "cpu" and module.weight.dtype == torch.float32:
            return OneDNNLinear.apply(x, module.weight, module.bias)
        return torch.nn.functional.linear(x, module.weight, module.bias)
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                module.forward = functools.partial(forward, module)


def load_policy(path, model_cfg, temperature, device, trainable=True, logprob_precision="highest"):
    """The policy with float32 master weights, sharded by FSDP2 over the process group (one shard in one
    process) with a mixed-precision policy: compute in model_cfg.dtype, gradients reduced in float32, AdamW
    state in float32, at every world size. logprob_precision: the LM-head kernel's (loss.logprob_precision).

    Only rank 0 reads the checkpoint (in float32, on the host); every rank builds the model on the meta device,
    shards it, allocates its own shards on `device`, and takes its part of each of rank 0's tensors, broadcast one
    at a time (rank 0 lets each go once sent): a node holds one float32 copy of the model in host memory, not one
    per rank. The values are those of from_pretrained on every rank (tests/dist_load.py compares them bit for
    bit, and benchmarks/bench_memory.py --host-rss measures the host memory)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import distribute_tensor
    from transformers import AutoModelForCausalLM
    if not dist.is_initialized():
        raise RuntimeError("load_policy shards the model over the process group: call init_distributed() first")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[model_cfg.dtype]
    if dist.get_rank() == 0:
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
        full = loaded.state_dict()  # rank 0's tensors, held until they are broadcast into the shards
        buffers = dict(loaded.named_buffers())  # with the non-persistent ones (rotary inv_freq), not in the state dict
        shared = [loaded.config, loaded.generation_config]
        del loaded
    else:
        full, buffers, shared = {}, {}, [None, None]
    dist.broadcast_object_list(shared, src=0)  # the config as from_pretrained set it (attention, dtype) on rank 0
    with torch.device("meta"):  # the same module tree on every rank, tied head included, and no memory
        model = AutoModelForCausalLM.from_config(shared[0], dtype=torch.float32)
    model.generation_config = shared[1]  # (save_pretrained writes it into checkpoints)
    if model_cfg.gradient_checkpointing and trainable:
        model.gradient_checkpointing_enable()
    # from_pretrained returns the model in eval mode, and transformers' decoder layers checkpoint only in train
    # mode (GradientCheckpointingLayer: gradient_checkpointing and self.training). These models have no dropout
    # (Qwen2, Llama: attention_dropout 0), so train mode changes nothing else; the KL reference stays in eval.
    model.train(trainable)
    model.config.use_cache = False
    # (not under model.compile: inductor picks its own matmul kernels, and cannot lower the oneDNN op's backward)
    onednn = model_cfg.onednn_linears and not model_cfg.compile and torch.backends.mkldnn.is_available()
    if onednn and device.type == "cpu":
        use_onednn_linears(model)
    policy = Policy(model, temperature, logprob_precision)
    if not trainable:
        policy.requires_grad_(False)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
        if model_cfg.compile:  # the forward only: FSDP2's unshard/reshard hooks stay outside the graph
            layer.forward = torch.compile(layer.forward, dynamic=True)
    fully_shard(policy, mp_policy=mp)  # the root: embedding, final norm, LM head
    policy.to_empty(device=device)  # this rank's shards (and the unsharded buffers), uninitialised
    with torch.no_grad():
        for name, param in model.named_parameters():  # (a tied head once) one full tensor at a time
            whole = full.pop(name).to(device) if dist.get_rank() == 0 else \
                torch.empty(param.shape, dtype=param.dtype, device=device)
            dist.broadcast(whole, src=0)
            # this rank's part, cut as the sharded parameter is (src_data_rank None: from the local copy, no traffic)
            param.to_local().copy_(distribute_tensor(whole, param.device_mesh, param.placements,
                                                     src_data_rank=None).to_local())
            del whole
        for name, buf in model.named_buffers():  # to_empty left them uninitialised: rank 0's, persistent or not
            if dist.get_rank() == 0:
                buf.copy_(buffers[name])
            dist.broadcast(buf, src=0)
    del full, buffers
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

    def __call__(self, h, weight, targets, *, temperature, precision):
        t0 = self._now()
        logp, ent = token_logprobs(h, weight, targets, temperature=temperature, precision=precision)
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


# ---------------------------------------------------------------------------------------------
# Diagnostics (cfg.diagnostics, benchmarks/gpu_check.py): checkpoint recomputes, the longest micro-batch.

class RecomputeCounter:
    """Counts gradient-checkpoint recomputes of the decoder layers: their forward calls with autograd on, beyond
    one per layer for each forward of the policy with autograd on (a checkpointed layer runs its forward again in
    the backward). Forward pre-hooks: they fire on the recompute too, and wherever model.compile or
    use_onednn_linears put a layer's forward."""

    def __init__(self, policy):
        self.layer_calls, self.passes = 0, 0
        layers = policy.model.model.layers
        self.n_layers = len(layers)
        self.handles = [layer.register_forward_pre_hook(self._layer) for layer in layers]
        self.handles.append(policy.register_forward_pre_hook(self._pass))

    def _layer(self, module, args):
        self.layer_calls += torch.is_grad_enabled()

    def _pass(self, module, args):
        self.passes += torch.is_grad_enabled()

    def close(self):
        """Remove the hooks; returns the recomputes counted."""
        for h in self.handles:
            h.remove()
        return self.layer_calls - self.n_layers * self.passes


def longest_pass(policy, rows, width, pad_id, gradient_sync):
    """Forward + backward of `rows` packed rows of `width` tokens (two sequences each, a quarter of each its
    prompt, so the attention mask is the packed rows' [S, S] one) at zero loss weight: the activation memory
    of the largest micro-batch a config allows. Returns the tokens it ran. The gradients it leaves are exact zeros; `gradient_sync` False
    (as between micro-batches under grad_sync "step") keeps them in FSDP2's unsharded float32 accumulation,
    where the next real micro-batch adds to them, as in the update."""
    if width < 4 or rows < 1:
        raise ValueError(f"longest_pass needs rows >= 1 and width >= 4, got {rows} x {width}")
    prompts, responses = [], []
    for n in [width // 2, width - width // 2] * rows:  # (the configs' 1024 of 4096 tokens are prompt)
        prompts.append([pad_id] * max(1, n // 4))
        responses.append([pad_id] * (n - max(1, n // 4)))
    device = next(policy.parameters()).device
    mb = make_micro(prompts, responses, [[1.0] * len(r) for r in responses],
                    [[2 * r, 2 * r + 1] for r in range(rows)], pad_id, device)
    if hasattr(policy, "set_requires_gradient_sync"):
        policy.set_requires_gradient_sync(gradient_sync)
    logp, ent = per_token(policy, mb, grad=True)
    ((logp + ent) * mb.mask * 0.0).sum().backward()
    return int(mb.input_ids.numel())


@dataclass
class Micro:
    """One micro-batch of B responses in R rows, ready for Policy.forward (built complete by make_micro)."""
    input_ids: torch.Tensor       # [R, S] prompt + response sequences, right-padded
    attention_mask: Optional[torch.Tensor]  # [R, S] with one sequence per row; None when packed or shared
    position_ids: Optional[torch.Tensor]    # [R, S] restarting at each packed sequence; None: one per row
    rows: torch.Tensor            # [n] the row of each response token (n = response tokens in all)
    cols: torch.Tensor            # [n] the column of the hidden state that predicts it
    targets: torch.Tensor         # [n] the token
    b_idx: torch.Tensor           # [n] its response, 0..B-1
    t_idx: torch.Tensor           # [n] its position in the response
    mask: torch.Tensor            # [B, T] loss mask
    index: torch.Tensor           # [B] the responses' indices in the rank's batch
    blocks: Optional[PromptBlocks]  # share_prompt: the attention blocks
    real_tokens: int              # tokens in its rows before padding (input_ids holds rows x widest)
    dummy: bool = False           # a one-token pass of zero weight, only to join the ranks' collectives


def dummy_micro(pad_id, device):
    """A one-token micro-batch of no response (index empty, mask 0, no real tokens): the pass a rank with
    fewer micro-batches makes so that every rank joins FSDP's collectives equally often."""
    mb = make_micro([[pad_id]], [[pad_id]], [[0.0]], [[0]], pad_id, device)
    return dataclasses.replace(mb, index=mb.index[:0], real_tokens=0, dummy=True)


def plan_micro_batches(batch, mini, trained, cfg, *, pad_id, device):
    """Every micro-batch of the step, built once: per mini-batch (`mini`: its local groups), a list of Micro.

    Only responses in `trained` go in. Responses (or, with cfg.share_prompt, a prompt's trained responses
    side by side) are packed into rows by pack_micro_batches under cfg.micro_batch_tokens / micro_batch_size.
    Every rank gets the same number of micro-batches per mini-batch, at least one (dummies pad): FSDP's
    collectives run once per forward and backward, so a rank with fewer responses joins them with a
    zero-weight pass, and every optimiser step's backward leaves gradients (maybe zero), as the full batch
    would. `batch` needs prompt_ids, response_ids, loss_mask (lists per response); cfg: G, share_prompt,
    micro_batch_size, micro_batch_tokens."""
    G, share = cfg.G, cfg.share_prompt
    row_len = lambda row: row_tokens(row, batch.prompt_ids, batch.response_ids, share)  # noqa: E731
    plan = []
    for local in mini:
        groups = [[q * G + i for i in range(G) if trained[q * G + i]] for q in local]
        items = [g for g in groups if g] if share else [[i] for g in groups for i in g]
        rows_of_items = pack_micro_batches(list(range(len(items))), [row_len(it) for it in items],
                                           cfg.micro_batch_size, cfg.micro_batch_tokens)
        chunks = [[[i for u in row for i in items[u]] for row in rows] for rows in rows_of_items]
        n_max = int(all_reduce(torch.tensor([max(1, len(chunks))]), dist.ReduceOp.MAX if dist.is_initialized()
                               else None))  # every rank: the most micro-batches any rank has
        micros = [make_micro(batch.prompt_ids, batch.response_ids, batch.loss_mask, rows, pad_id, device,
                             share_prompt=share) for rows in chunks]
        plan.append(micros + [dummy_micro(pad_id, device) for _ in range(n_max - len(chunks))])
    return plan


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


def reuses_prompt(row, prompt_ids, share):
    """Per response of a row, whether it reuses the prompt just before it instead of carrying its own copy:
    with `share`, when the previous response in the row has the same prompt (a group's responses sit
    together in a row)."""
    return [share and k > 0 and prompt_ids[i] == prompt_ids[row[k - 1]] for k, i in enumerate(row)]


def row_tokens(row, prompt_ids, response_ids, share=False):
    """The tokens make_micro lays out for one row (before its padding)."""
    return sum(len(response_ids[i]) + (0 if reuse else len(prompt_ids[i]))
               for i, reuse in zip(row, reuses_prompt(row, prompt_ids, share)))


def make_micro(prompt_ids, response_ids, loss_mask, rows, pad_id, device, share_prompt=False):
    """The micro-batch of `rows` (lists of response indices): each row's [prompt + response] sequences
    one after another, right-padded; and where each response token's predictor sits (the column before).

    share_prompt: a response whose prompt equals the previous one's in its row follows it without a copy of
    the prompt, [prompt, response_1, response_2, ...], each response at the positions it would have after
    its prompt, and attention goes block by block (PromptBlocks, block_attention): the log-probs and
    gradients of one row per response (tested), with the prompt's forward and backward done once."""
    index = [i for row in rows for i in row]
    r_len = torch.tensor([len(response_ids[i]) for i in index])
    row_lengths = [row_tokens(row, prompt_ids, response_ids, share_prompt) for row in rows]
    width = max(row_lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)
    prompt_last, response_start, row_of, spans, shared = [], [], [], [], False
    for r, row in enumerate(rows):
        col = 0
        for i, reuse in zip(row, reuses_prompt(row, prompt_ids, share_prompt)):
            p, o = prompt_ids[i], response_ids[i]
            if not reuse:
                input_ids[r, col: col + len(p)] = torch.tensor(p)
                position_ids[r, col: col + len(p)] = torch.arange(len(p))
                if share_prompt:  # the prompt's block: its tokens' flat indices, queries and keys
                    prompt = torch.arange(len(p)) + r * width + col
                    spans.append((prompt, prompt))
                last, col = col + len(p) - 1, col + len(p)
            shared |= reuse
            input_ids[r, col: col + len(o)] = torch.tensor(o)
            position_ids[r, col: col + len(o)] = len(p) + torch.arange(len(o))
            if share_prompt:  # the response's block: its queries, its prompt's keys and its own
                own = torch.arange(len(o)) + r * width + col
                spans.append((own, torch.cat([prompt, own])))
            prompt_last.append(last)
            response_start.append(col)
            row_of.append(r)
            col += len(o)
        position_ids[r, col:] = torch.arange(width - col)  # the padding: a sequence of its own
    packed = len(index) > len(rows)
    b_idx = torch.repeat_interleave(torch.arange(len(index)), r_len)
    t_idx = torch.arange(len(b_idx)) - torch.repeat_interleave(r_len.cumsum(0) - r_len, r_len)
    # token t of a response is predicted by the state before it: the prompt's last token for t = 0
    cols = torch.where(t_idx == 0, torch.tensor(prompt_last)[b_idx], torch.tensor(response_start)[b_idx] + t_idx - 1)
    targets = torch.tensor([t for i in index for t in response_ids[i]], dtype=torch.long)
    mask = torch.zeros(len(index), max(1, int(r_len.max())))
    mask[b_idx, t_idx] = torch.tensor([m for i in index for m in loss_mask[i]], dtype=torch.float32)
    blocks, attention_mask = None, None  # packed: transformers masks sequences apart from the position ids
    if shared:
        blocks = prompt_blocks(spans, position_ids.flatten())
    elif not packed:
        lengths = torch.tensor([row_tokens(row, prompt_ids, response_ids) for row in rows])
        attention_mask = (torch.arange(width) < lengths[:, None]).long()
    to = lambda x: None if x is None else x.to(device)  # noqa: E731
    if blocks is not None:
        blocks = PromptBlocks(*(to(x) for x in dataclasses.astuple(blocks)))
    return Micro(to(input_ids), to(attention_mask), to(position_ids) if packed or shared else None,
                 to(torch.tensor(row_of)[b_idx]), to(cols), to(targets), to(b_idx), to(t_idx), to(mask),
                 torch.tensor(index, dtype=torch.long), blocks, real_tokens=sum(row_lengths))


def prompt_blocks(spans, positions):
    """PromptBlocks from (query tokens, key tokens) pairs of flat indices, one pair per block: key k is
    visible from query q when its position is not after q's (prompt keys come before every response)."""
    Q, K = max(len(q) for q, _ in spans), max(len(k) for _, k in spans)
    q_index, k_index = torch.zeros(len(spans), Q, dtype=torch.long), torch.zeros(len(spans), K, dtype=torch.long)
    q_valid, k_valid = torch.zeros(len(spans), Q, dtype=torch.bool), torch.zeros(len(spans), K, dtype=torch.bool)
    for n, (q, k) in enumerate(spans):
        q_index[n, : len(q)], q_valid[n, : len(q)] = q, True
        k_index[n, : len(k)], k_valid[n, : len(k)] = k, True
    mask = k_valid[:, None, :] & (positions[k_index][:, None, :] <= positions[q_index][:, :, None])
    mask[:, :, 0] |= ~q_valid  # a padded query sees the first key, so that no softmax row is empty
    q_dest = torch.where(q_valid, q_index, len(positions)).flatten()
    return PromptBlocks(q_index, q_dest, k_index, mask[:, None])


class PerToken(NamedTuple):
    """A micro-batch's per-token values, [B, T] float32, 0 past each response's end."""
    logp: torch.Tensor     # log pi of each response token
    entropy: torch.Tensor  # the entropy of pi at its position


def per_token(policy, mb, grad) -> PerToken:
    """Log-probs and entropies of a micro-batch; with grad=True both carry the graph (the loss's entropy
    bonus, loss.entropy_coef, differentiates through the entropy)."""
    with contextlib.nullcontext() if grad else torch.no_grad():
        logp, ent = policy(mb.input_ids, mb.attention_mask, mb.position_ids, mb.rows, mb.cols, mb.targets, mb.blocks)
    B, T = mb.mask.shape
    out_logp = torch.zeros(B, T, device=logp.device, dtype=logp.dtype).index_put((mb.b_idx, mb.t_idx), logp)
    out_ent = torch.zeros(B, T, device=ent.device, dtype=ent.dtype).index_put((mb.b_idx, mb.t_idx), ent)
    return PerToken(out_logp, out_ent)
