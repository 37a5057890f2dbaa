"""loss.policy_loss against a plain per-token Python loop in float64 (autograd through scalars)."""
import math

import pytest
import torch

from loss import LossConfig, policy_loss
from weights import SchemeConfig, make_scheme


def make_batch(N=6, T=7, seed=0, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    logp = old + torch.randn(N, T, generator=g, dtype=torch.float64) * spread  # ratios well outside 1 +- eps
    ref = old + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.3
    ent = torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    A = torch.randn(N, generator=g, dtype=torch.float64)
    W = torch.rand(N, generator=g, dtype=torch.float64) / (N * T)
    return logp, old, ref, ent, mask, A, W, lengths


def loop_loss(logp, old, ref, ent, lengths, A, W, cfg):
    """The objective token by token, in the paper's own form (GSPO as a sequence-level ratio)."""
    total = 0.0
    for i in range(logp.shape[0]):
        n = int(lengths[i])
        a, w = A[i], W[i]
        if cfg.ratio == "sequence":
            s = torch.exp(sum(logp[i, t] - old[i, t] for t in range(n)) / n)
            clipped = torch.clamp(s, 1 - cfg.eps_low, 1 + cfg.eps_high)
            total = total - n * w * torch.min(s * a, clipped * a)
        for t in range(n):
            if cfg.ratio == "token":
                r = torch.exp(logp[i, t] - old[i, t])
                term = -torch.min(r * a, torch.clamp(r, 1 - cfg.eps_low, 1 + cfg.eps_high) * a)
                if cfg.dual_clip is not None and a < 0:
                    term = torch.min(term, -cfg.dual_clip * a)
                total = total + w * term
            if cfg.kl_beta:
                d = ref[i, t] - logp[i, t]
                total = total + w * cfg.kl_beta * (torch.exp(d) - d - 1)
            if cfg.entropy_coef:
                total = total - w * cfg.entropy_coef * ent[i, t]
    return total


CONFIGS = [
    LossConfig(ratio="token", eps_low=0.2, eps_high=0.28, kl_beta=0.05),
    LossConfig(ratio="token", eps_low=0.2, eps_high=0.2, dual_clip=1.5, kl_beta=0.1, entropy_coef=0.01),
    LossConfig(ratio="sequence", eps_low=0.02, eps_high=0.03, kl_beta=0.05),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["token", "token-dualclip-entropy", "sequence"])
def test_value_and_gradient_match_loop(cfg):
    logp, old, ref, ent, mask, A, W, lengths = make_batch(N=12, spread=0.6 if cfg.ratio == "token" else 0.08)
    x = logp.clone().requires_grad_()
    loss, stats = policy_loss(x, old, mask, A, W, cfg, ref_logp=ref, entropy=ent)
    loss.backward()
    y = logp.clone().requires_grad_()
    expected = loop_loss(y, old, ref, ent, lengths, A, W, cfg)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    # the batch exercises clipping on both sides (zero gradient there), so this is not the unclipped case
    assert stats["clip_low"].sum() > 0 and stats["clip_high"].sum() > 0
    assert (x.grad[mask == 0] == 0).all()


def test_dual_clip_by_hand():
    """verl's dual-clip (Ye et al. 2020; clip_ratio_c, 3 by default): for A < 0 the token loss is capped at
    c |A|. One-token responses, W = 1, eps 0.2: (ratio, A) -> PPO's loss, with c = 3, d loss / d log pi."""
    ratio = torch.tensor([5.0, 2.0, 5.0, 0.5], dtype=torch.float64)
    A = torch.tensor([-2.0, -2.0, 1.0, -2.0], dtype=torch.float64)
    # (5, -2):  -min(-10, -2.4) = 10 -> capped at 6, gradient 0 (PPO alone: -A r = 10)
    # (2, -2):  -min(-4, -2.4) = 4 < 6, gradient -A r = 4
    # (5, +1):  -min(5, 1.2) = -1.2, clipped high: gradient 0 (A > 0: no cap)
    # (0.5, -2): -min(-1, -1.6) = 1.6, clipped low: gradient 0
    cases = {None: (14.4, [10.0, 4.0, 0.0, 0.0]), 3.0: (10.4, [0.0, 4.0, 0.0, 0.0])}
    for c, (value, grad) in cases.items():
        old = torch.zeros(4, 1, dtype=torch.float64)
        logp = ratio.log()[:, None].clone().requires_grad_()
        loss, _ = policy_loss(logp, old, torch.ones_like(old), A, torch.ones_like(A), LossConfig(dual_clip=c))
        loss.backward()
        assert loss.item() == pytest.approx(value, rel=1e-12), c
        torch.testing.assert_close(logp.grad[:, 0], torch.tensor(grad, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_per_response_stats_against_a_token_loop():
    """Every statistic is a per-response sum (max / min) over that response's tokens, written out here
    token by token: clip counts, k3 KL(old || new), ratio, the surrogate with and without W, its magnitude."""
    cfg = LossConfig(eps_low=0.2, eps_high=0.28)
    logp, old, ref, ent, mask, A, W, lengths = make_batch(spread=0.6)
    _, stats = policy_loss(logp, old, mask, A, W, cfg, entropy=ent)
    r = torch.exp(logp - old)
    assert all(v.shape == (logp.shape[0],) and v.dtype == torch.float64 for v in stats.values())
    for i in range(logp.shape[0]):
        n, a = int(lengths[i]), float(A[i])
        rs = [float(r[i, t]) for t in range(n)]
        surrogate = [-min(x * a, min(max(x, 0.8), 1.28) * a) for x in rs]
        assert stats["tokens"][i] == n
        assert stats["clip_low"][i] == sum(x < 0.8 and a < 0 for x in rs)
        assert stats["clip_high"][i] == sum(x > 1.28 and a > 0 for x in rs)
        assert float(stats["approx_kl"][i]) == pytest.approx(sum(x - 1 - math.log(x) for x in rs), rel=1e-9)
        assert float(stats["ratio"][i]) == pytest.approx(sum(rs), rel=1e-12)
        assert float(stats["ratio_max"][i]) == pytest.approx(max(rs)) and float(stats["ratio_min"][i]) == min(rs)
        assert float(stats["surrogate"][i]) == pytest.approx(sum(surrogate), rel=1e-9, abs=1e-12)
        assert float(stats["abs_surrogate"][i]) == pytest.approx(sum(map(abs, surrogate)), rel=1e-9, abs=1e-12)
        assert float(stats["pg_loss"][i]) == pytest.approx(float(W[i]) * sum(surrogate), rel=1e-9, abs=1e-15)
        assert float(stats["entropy"][i]) == pytest.approx(float(ent[i, :n].sum()), rel=1e-12)
    assert stats["clip_low"].sum() > 0 and stats["clip_high"].sum() > 0  # both sides exercised


@pytest.mark.parametrize("ratio", ["token", "sequence"])
def test_microbatch_split_invariance(ratio):
    """A and W from the whole batch (as train.py does); the loss of 4 micro-batches sums to the full loss."""
    torch.manual_seed(3)
    P, G, T = 8, 4, 9
    rewards = (torch.rand(P, G) < 0.5).float()
    lengths = torch.randint(1, T + 1, (P, G)).float()
    cfg = LossConfig(ratio=ratio, eps_low=0.1, eps_high=0.15, kl_beta=0.02)
    for name in ["grpo", "dapo", "lipo", "drgrpo", "daro"]:
        scheme = make_scheme(SchemeConfig(name=name), G=G, max_len=T)
        A, W = scheme(rewards, lengths)
        A, W = A.flatten().double(), W.flatten().double()
        mask = (torch.arange(T)[None, :] < lengths.flatten()[:, None]).double()
        old = -torch.rand(P * G, T, dtype=torch.float64)
        ref = old + 0.1 * torch.randn(P * G, T, dtype=torch.float64)
        logp0 = old + 0.2 * torch.randn(P * G, T, dtype=torch.float64)
        full = logp0.clone().requires_grad_()
        loss_full, _ = policy_loss(full, old, mask, A, W, cfg, ref_logp=ref)
        loss_full.backward()
        parts = logp0.clone().requires_grad_()
        total = 0.0
        for idx in torch.arange(P * G).chunk(4):
            loss_mb, _ = policy_loss(parts[idx], old[idx], mask[idx], A[idx], W[idx], cfg, ref_logp=ref[idx])
            loss_mb.backward()
            total += loss_mb.detach().item()
        assert total == pytest.approx(loss_full.detach().item(), rel=1e-12, abs=1e-15), name
        torch.testing.assert_close(parts.grad, full.grad, rtol=1e-12, atol=1e-15)


def test_float32_and_bad_ratio():
    logp, old, ref, ent, mask, A, W, lengths = make_batch()
    loss32, _ = policy_loss(logp.float(), old.float(), mask.bool(), A.float(), W.float(), LossConfig())
    loss64, _ = policy_loss(logp, old, mask, A, W, LossConfig())
    assert loss32.dtype == torch.float32 and float(loss32) == pytest.approx(float(loss64), rel=1e-5)
    with pytest.raises(ValueError, match="loss.ratio"):
        policy_loss(logp, old, mask, A, W, LossConfig(ratio="seq"))


@pytest.mark.parametrize("term", ["kl", "entropy"])
def test_kl_and_entropy_terms_are_token_means_whatever_w(term):
    """reg_weight token_mean: the KL / entropy term's gradient is that of (1/tokens) sum_t term, even for
    responses whose W is 0 (DARO's mu in {0, 1}); reg_weight scheme couples it to W (float64 autograd)."""
    torch.manual_seed(0)
    N, T = 4, 5
    logp = (torch.randn(N, T, dtype=torch.float64) - 2).requires_grad_()
    ref, entropy_in = torch.randn(N, T, dtype=torch.float64) - 2, torch.rand(N, T, dtype=torch.float64)
    mask = torch.ones(N, T, dtype=torch.float64)
    mask[1, 3:] = 0
    A, W = torch.zeros(N, dtype=torch.float64), torch.tensor([0.0, 0.3, 0.0, 0.1], dtype=torch.float64)
    V = torch.full((N,), 1.0 / float(mask.sum()), dtype=torch.float64)
    coef = 0.7
    cfg = LossConfig(kl_beta=coef if term == "kl" else 0.0, entropy_coef=coef if term == "entropy" else 0.0)
    # entropy as a function of logp, so that the entropy term has a gradient to compare
    ent = entropy_in * logp if term == "entropy" else None
    loss, _ = policy_loss(logp, logp.detach(), mask, A, W, cfg, W_reg=V, ref_logp=ref, entropy=ent)
    (grad,) = torch.autograd.grad(loss, logp)
    lp = logp.detach().clone().requires_grad_()
    if term == "kl":
        d = ref - lp
        reference = coef * ((torch.exp(d) - d - 1) * mask).sum() / mask.sum()
    else:
        reference = -coef * (entropy_in * lp * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(reference, lp)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert grad[0].abs().sum() > 0  # W_0 = 0, yet its KL / entropy still counts
    ent = entropy_in * logp if term == "entropy" else None
    coupled, _ = policy_loss(logp, logp.detach(), mask, A, W, cfg, ref_logp=ref, entropy=ent)  # V = W
    (grad_w,) = torch.autograd.grad(coupled, logp)
    assert float(grad_w[0].abs().sum()) == 0.0
