"""The unified token-level objective, and the fused log-prob / entropy kernel that feeds it.

    L = - sum_i sum_t m_it W_i min(r_it A_i, clip(r_it, 1 - eps_low, 1 + eps_high) A_i)
        + kl_beta sum_i sum_t m_it W_i k3_it  -  entropy_coef sum_i sum_t m_it W_i H_it

Every method is a choice of (A_i, W_i) made in weights.py; GSPO is a choice of ratio made here.
W_i carries the global normaliser (1/tokens in the batch, 1/(|o_i| G P), ...), so L is a plain sum:
the loss of a batch is the sum of its micro-batch (and per-rank) losses, with no re-normalisation.
"""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LossConfig:
    ratio: str = "token"                 # "token" (PPO/GRPO) | "sequence" (GSPO, in its GSPO-token form)
    eps_low: float = 0.2
    eps_high: float = 0.2                # DAPO clip-higher: 0.28; GSPO: eps_low 3e-4, eps_high 4e-4
    dual_clip: Optional[float] = None    # c > 1: for A < 0 cap the token loss at c |A| (Ye et al. 2020, arXiv 1912.09729)
    kl_beta: float = 0.0                 # k3 KL to the reference policy (Schulman 2020 estimator)
    entropy_coef: float = 0.0            # > 0 rewards entropy


def policy_loss(logp, old_logp, mask, A, W, cfg: LossConfig, *, ref_logp=None, entropy=None, bucket=None, n_buckets=0):
    """The objective above for N responses padded to T tokens.

    logp, old_logp, ref_logp, entropy: [N, T] float32 per-token values (logp carries the graph).
    mask: [N, T] response mask. A, W: [N] from weights.py. bucket: [N] long, the prompt's correct
    count k (0..G), used only for the per-bucket loss metrics (DARO's L_mu, its Figure 2).
    Returns (loss, stats). stats are detached float64 SUMS over tokens (plus max/min), so that the
    caller can add them over micro-batches and ranks and divide by stats["tokens"] at the end.
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
    per_token = pg
    if cfg.kl_beta:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1           # k3 >= 0, unbiased estimate of KL(pi || pi_ref)
        per_token = per_token + cfg.kl_beta * kl
    if cfg.entropy_coef:
        per_token = per_token - cfg.entropy_coef * entropy
    loss = (per_token * m * W).sum()

    with torch.no_grad():
        md = m.double()
        r = ratio.double()
        lr = token_log_ratio.double()
        stats = {
            "tokens": md.sum(),
            "clip_low": ((r < 1 - cfg.eps_low) & (A < 0)).double().mul(md).sum(),
            "clip_high": ((r > 1 + cfg.eps_high) & (A > 0)).double().mul(md).sum(),
            "approx_kl": (torch.expm1(lr) - lr).mul(md).sum(),  # k3 estimate of KL(old || new), tokens ~ old
            "ratio": (r * md).sum(),
            "ratio_max": r.masked_fill(md == 0, -float("inf")).max(),
            "ratio_min": r.masked_fill(md == 0, float("inf")).min(),
            "pg_loss": (pg.double() * md * W.double()).sum(),
        }
        if cfg.kl_beta:
            stats["kl_ref"] = (kl.double() * md).sum()
        if entropy is not None:
            stats["entropy"] = (entropy.double() * md).sum()
        if bucket is not None:
            # per-bucket token sums of the surrogate (without W): L_mu = bucket_loss / bucket_tokens
            stats["bucket_loss"] = torch.zeros(n_buckets, dtype=torch.float64, device=md.device).index_add_(0, bucket, (pg.double() * md).sum(1))
            stats["bucket_tokens"] = torch.zeros(n_buckets, dtype=torch.float64, device=md.device).index_add_(0, bucket, md.sum(1))
    return loss, stats
