"""The unified token-level objective, and the fused log-prob / entropy kernel that feeds it.

    L = - sum_i sum_t m_it W_i min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)
        + kl_beta sum_i sum_t m_it V_i k3_it  -  entropy_coef sum_i sum_t m_it V_i H_it

Every method is a choice of (A_i, W_i) made in weights.py; GSPO is a choice of ratio made here.
W_i carries the global normaliser (1/tokens in the batch, 1/(|o_i| G P), ...), so L is a plain sum:
the loss of a batch is the sum of its micro-batch (and per-rank) losses, with no re-normalisation.
The KL and entropy terms carry V_i = 1 / (tokens in the batch) whatever the scheme (reg_weight
"token_mean"): with V = W, DARO's w_mu would scale them and drop them for mu in {0, 1}.
"""
import contextlib
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LossConfig:
    ratio: str = "token"                 # "token" (PPO/GRPO) | "sequence" (GSPO, in its GSPO-token form; the
                                         # paper's per-sequence mean only with a per-sequence W: grpo, drgrpo)
    eps_low: float = 0.2
    eps_high: float = 0.2                # DAPO clip-higher: 0.28; GSPO: eps_low 3e-4, eps_high 4e-4
    dual_clip: Optional[float] = None    # c > 1: for A < 0 cap the token loss at c |A|
                                         # (Ye et al. 2020, arXiv 1912.09729)
    kl_beta: float = 0.0                 # k3 KL to the reference policy (Schulman 2020 estimator)
    entropy_coef: float = 0.0            # > 0 rewards entropy
    reg_weight: str = "token_mean"       # weight V_i of the KL and entropy terms: "token_mean" (the caller's
                                         # 1 / tokens, scheme-independent) | "scheme" (V_i = W_i)
    logprob_precision: str = "auto"      # the LM-head kernel's float32 matmuls on GPUs: "high" (TF32: log pi off by
                                         # ~4e-4, inside a 0.2 clip range), "highest" (IEEE: ~6e-7, needed by GSPO's
                                         # 3e-4 clip on a per-sequence ratio); "auto": highest for ratio
                                         # "sequence", else high. No effect on CPUs. See logprob_precision().


PRECISIONS = ("auto", "high", "highest")


def logprob_precision(cfg: LossConfig) -> str:
    """The float32 matmul precision of the LM-head kernel (torch.set_float32_matmul_precision's names).

    Per-token ratios clip at 0.2 (0.28): TF32's log pi error (see _fp32_matmuls) is far inside that, and TF32
    runs the kernel's V x H GEMMs on tensor cores (about 5 per trained token, as many FLOPs as the whole bf16
    trunk of a 1.5B model). GSPO's sequence ratio exp(mean_t log pi - log pi_old) clips at 3e-4, the size of
    TF32's error, so it keeps IEEE float32."""
    if cfg.logprob_precision not in PRECISIONS:
        raise ValueError(f"loss.logprob_precision must be one of {PRECISIONS}, got {cfg.logprob_precision!r}")
    if cfg.logprob_precision != "auto":
        return cfg.logprob_precision
    return "highest" if cfg.ratio == "sequence" else "high"


def policy_loss(logp, old_logp, mask, A, W, cfg: LossConfig, *, W_reg=None, ref_logp=None, entropy=None):
    """The objective above for N responses padded to T tokens.

    logp, old_logp, ref_logp, entropy: [N, T] float32 per-token values (logp carries the graph).
    mask: [N, T] response mask. A, W: [N] from weights.py. W_reg: [N], the weight V_i of the KL and entropy
    terms (None: W, whatever cfg.reg_weight says; the trainer passes it).
    Returns (loss, stats). stats are detached float64 PER-RESPONSE [N] sums over each response's tokens
    (ratio_max / ratio_min: its max / min), so that the caller can add them over micro-batches, epochs and
    ranks, and each scheme can group them as it likes (DARO by difficulty): "surrogate" is the clipped
    surrogate -min(r A, clip(r) A) without W, "abs_surrogate" its magnitude, "pg_loss" W times the surrogate.
    """
    m = mask.to(logp.dtype)
    A, W = A.to(logp.dtype)[:, None], W.to(logp.dtype)[:, None]
    log_ratio = token_log_ratio = logp - old_logp
    if cfg.ratio == "sequence":
        # GSPO (Zheng et al. 2025, arXiv 2507.18071): s_i = exp(mean_t log ratio), used in its token form
        # s_it = sg[s_i] * pi(t) / sg[pi(t)]: value s_i, gradient s_i * grad log pi(t), so W_i still applies.
        seq = (log_ratio * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        log_ratio = seq.detach() + logp - logp.detach()
    elif cfg.ratio != "token":
        raise ValueError(f"loss.ratio must be 'token' or 'sequence', got {cfg.ratio!r}")
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    pg = -torch.min(ratio * A, clipped * A)
    if cfg.dual_clip is not None:
        pg = torch.where(A < 0, torch.minimum(pg, -cfg.dual_clip * A), pg)
    loss = (pg * m * W).sum()
    V = W if W_reg is None else W_reg.to(logp.dtype)[:, None]
    if cfg.kl_beta:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1           # k3 >= 0, unbiased estimate of KL(pi || pi_ref)
        loss = loss + cfg.kl_beta * (kl * m * V).sum()
    if cfg.entropy_coef:
        loss = loss - cfg.entropy_coef * (entropy * m * V).sum()

    with torch.no_grad():
        md = m.double()
        r = ratio.double()
        lr = token_log_ratio.double()
        surrogate = pg.double() * md
        stats = {
            "tokens": md.sum(1),
            "surrogate": surrogate.sum(1),
            "abs_surrogate": surrogate.abs().sum(1),
            "pg_loss": (surrogate * W.double()).sum(1),
            "clip_low": ((r < 1 - cfg.eps_low) & (A < 0)).double().mul(md).sum(1),
            "clip_high": ((r > 1 + cfg.eps_high) & (A > 0)).double().mul(md).sum(1),
            "approx_kl": (torch.expm1(lr) - lr).mul(md).sum(1),  # k3 estimate of KL(old || new), tokens ~ old
            "ratio": (r * md).sum(1),
            "ratio_max": r.masked_fill(md == 0, -float("inf")).amax(1),
            "ratio_min": r.masked_fill(md == 0, float("inf")).amin(1),
        }
        if cfg.kl_beta:
            stats["kl_ref"] = (kl.double() * md).sum(1)
        if entropy is not None:
            stats["entropy"] = (entropy.double() * md).sum(1)
    return loss, stats


# ---- fused log-prob and entropy kernel ----
# Why: logits = h @ W.T over Qwen2.5's 151,936-row vocabulary are N x V float32 (1.2 GB at N = 2048), and
# autograd keeps several such tensors (logits, log-softmax, their gradients). Here the vocabulary dimension
# only ever exists for `chunk_size` tokens at a time, in two reused float32 buffers of chunk_size x V.
# token_logprobs is a chunked autograd function: the forward keeps only per-token statistics (logsumexp),
# the backward recomputes each chunk's logits (four matmuls in all; works for any loss, GSPO's included).
# (benchmarks/bench_logprobs.py builds a same-pass variant for token-local losses, three matmuls, that forms
# the gradient in the forward; it is faster but cannot serve sequence-level ratios, so training uses this.)
# Conventions: float32 accumulation whatever the input dtype (low-precision inputs are upcast per
# chunk of tokens; the weight once per call, a transient float32 copy of V x H); logits are (h @ W.T) / T;
# rows >= vocab_size (Qwen pads its LM head) are left out of the softmax and get zero gradient; tokens whose
# target == ignore_index get logprob 0 and entropy 0 and contribute no gradient.

_CHUNK_ELEMENTS = 2**25  # default chunk: one chunk x V buffer of about 128 MB float32 (two are live)


@contextlib.contextmanager
def _fp32_matmuls(precision):
    """The logits' matmuls at `precision` ("highest": IEEE float32; "high": TF32 on GPUs), whatever the process
    chose (vLLM's worker, in this process, sets "highest"). TF32's 10-bit inputs move log pi by 4e-4 on
    average and 1.6e-3 at most against float64 (H 1536, V 151,936; bf16 inputs: 3e-3 and 1e-2), the
    size of GSPO's clip range (3e-4) on the ratio exp(log pi - log pi_old); IEEE float32: 6e-7 and 2e-6.
    (`python benchmarks/bench_logprobs.py --precision` measures these, TF32 emulated on the CPU; torch's
    CPU matmuls ignore "high".) The forward and the backward run at the same precision."""
    if precision not in ("high", "highest"):
        raise ValueError(f"precision must be 'high' or 'highest', got {precision!r}")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _prepare(hidden, weight, targets, vocab_size, chunk_size, ignore_index):
    """Validate the inputs; return (h [N, H], targets [N], vocab_size, chunk_size)."""
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden [..., H] and weight [V, H] disagree: {tuple(hidden.shape)} vs {tuple(weight.shape)}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must match hidden's leading dims {tuple(hidden.shape[:-1])}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    vocab_size = weight.shape[0] if vocab_size is None else int(vocab_size)
    if not 0 < vocab_size <= weight.shape[0]:
        raise ValueError(f"vocab_size {vocab_size} must be in [1, {weight.shape[0]}] (the weight's rows)")
    targets = targets.reshape(-1).long()
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab_size))
    if bad.any():
        raise ValueError(f"target ids outside [0, {vocab_size}) that are not ignore_index={ignore_index}: "
                         f"{targets[bad][:5].tolist()}")
    chunk_size = chunk_size or max(1, _CHUNK_ELEMENTS // vocab_size)
    return hidden.reshape(-1, hidden.shape[-1]), targets, vocab_size, int(chunk_size)


def _chunk_softmax(h_chunk, w, targets, valid, temperature, shifted, expd):
    """Tempered logits of one chunk into `shifted` (minus the row max) and exp(shifted) into `expd`.
    Returns per-token (logp, entropy, logsumexp), float32: what the backward needs besides the inputs."""
    h_chunk = h_chunk.float() / temperature
    torch.mm(h_chunk, w.t(), out=shifted)
    row_max = shifted.amax(dim=1)
    shifted.sub_(row_max[:, None])              # exp below cannot overflow
    torch.exp(shifted, out=expd)
    sum_exp = expd.sum(dim=1)
    log_sum = sum_exp.log()
    centre = torch.bmm(expd[:, None, :], shifted[:, :, None]).view(-1) / sum_exp  # E_p[z - max]
    logp = shifted.gather(1, targets.clamp(min=0)[:, None]).view(-1) - log_sum
    entropy = log_sum - centre                  # H = logsumexp - E_p[z]
    zero = torch.zeros((), device=logp.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero), row_max + log_sum


def _chunk_logit_grad(logq, q, entropy, g_logp, g_entropy, targets, valid):
    """d loss / d logits for one chunk, written over one of the two buffers (which it returns).
    `logq` = log p and `q` = p over the chunk's vocabulary rows; entropy H = -E_p[log p] per token.
    d logp_t / dz = onehot(t) - p;  d H / dz = -p * (log p + H)."""
    g_logp = torch.where(valid, g_logp, 0.0)
    if g_entropy is None:
        grad = q.mul_((-g_logp)[:, None])
    else:
        g_entropy = torch.where(valid, g_entropy, 0.0)
        grad = logq.mul_((-g_entropy)[:, None]).sub_((g_logp + g_entropy * entropy)[:, None])
        grad.mul_(q)
    rows = torch.arange(len(targets), device=grad.device)
    grad.index_put_((rows, targets.clamp(min=0)), g_logp, accumulate=True)
    return grad


def _chunks(n, chunk_size, vocab_size, device):
    """Yield (start, end, shifted view, expd view) over two float32 buffers reused by every chunk."""
    rows = min(n, chunk_size)
    shifted_buf = torch.empty(rows, vocab_size, device=device)
    expd_buf = torch.empty(rows, vocab_size, device=device)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        yield start, end, shifted_buf[: end - start], expd_buf[: end - start]


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, vocab_size, chunk_size, ignore_index, precision):
        w = weight[:vocab_size].float()
        valid = targets != ignore_index
        n = hidden.shape[0]
        logp, entropy, lse = (torch.zeros(n, device=hidden.device) for _ in range(3))
        for a, b, shifted, expd in _chunks(n, chunk_size, vocab_size, hidden.device):
            logp[a:b], entropy[a:b], lse[a:b] = _chunk_softmax(
                hidden[a:b], w, targets[a:b], valid[a:b], temperature, shifted, expd)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.settings = (temperature, vocab_size, chunk_size, ignore_index)
        ctx.precision = precision
        ctx.set_materialize_grads(False)  # an unused output (entropy as a metric) gives None: cheaper backward
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        with _fp32_matmuls(ctx.precision):
            return _ChunkedTokenLogprobs._backward(ctx, g_logp, g_entropy)

    @staticmethod
    def _backward(ctx, g_logp, g_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        temperature, vocab_size, chunk_size, ignore_index = ctx.settings
        w = weight[:vocab_size].float()
        valid = targets != ignore_index
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.zeros(hidden.shape, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device) if need_w else None
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp
        for a, b, shifted, expd in _chunks(hidden.shape[0], chunk_size, vocab_size, hidden.device):
            h_chunk = hidden[a:b].float() / temperature
            torch.mm(h_chunk, w.t(), out=shifted)       # recompute the chunk's logits
            shifted.sub_(lse[a:b, None])                # = log p
            torch.exp(shifted, out=expd)                # = p
            grad = _chunk_logit_grad(shifted, expd, entropy[a:b], g_logp[a:b],
                                     None if g_entropy is None else g_entropy[a:b], targets[a:b], valid[a:b])
            if need_h:
                torch.mm(grad, w, out=grad_h[a:b]).div_(temperature)
            if need_w:
                grad_w[:vocab_size].addmm_(grad.t(), h_chunk)
        return (None if grad_h is None else grad_h.to(hidden.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None, None)


def token_logprobs(hidden, weight, targets, *, temperature=1.0, vocab_size=None, chunk_size=None,
                   ignore_index=-100, precision="highest"):
    """log pi(target) and the entropy of pi for every token, never holding N x V logits.

    hidden [..., H] (the model's final hidden states, any float dtype), weight [V, H] (lm_head.weight),
    targets [...] (token ids; ignore_index marks tokens to skip). pi = softmax((hidden @ weight.T) / temperature)
    over the first vocab_size rows. Returns (logprobs, entropy), float32, shaped like targets; both are
    differentiable w.r.t. hidden and weight (the backward recomputes logits chunk by chunk).
    chunk_size: tokens per chunk (default: about 128 MB of float32 logits per buffer).
    precision: of the float32 matmuls, forward and backward: "highest" (IEEE) or "high" (TF32 on GPUs);
    the trainer's choice is loss.logprob_precision.
    """
    shape = targets.shape
    h, t, vocab_size, chunk_size = _prepare(hidden, weight, targets, vocab_size, chunk_size, ignore_index)
    with _fp32_matmuls(precision):
        logp, entropy = _ChunkedTokenLogprobs.apply(h, weight, t, float(temperature), vocab_size, chunk_size,
                                                    ignore_index, precision)
    if logp.shape != shape:  # flat inputs stay un-viewed: FSDP2 warns when its root module returns a view
        logp, entropy = logp.view(shape), entropy.view(shape)
    return logp, entropy
