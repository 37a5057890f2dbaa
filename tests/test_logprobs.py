"""loss.token_logprobs (and the benchmark's same-pass token_loss_fused) against a naive float64 log_softmax
reference."""
import sys
from pathlib import Path

import pytest
import torch

from loss import token_logprobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_logprobs import token_loss_fused  # noqa: E402  (the same-pass candidate the benchmark compares)

V_ROWS, V_REAL, H = 300, 257, 24   # the weight has padded rows beyond the real vocabulary, as Qwen's does


def make_inputs(n, dtype=torch.float32, seed=0, ignored=(), device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, H, generator=g) * 2.0).to(dtype)
    weight = (torch.randn(V_ROWS, H, generator=g) * 0.5).to(dtype)
    targets = torch.randint(0, V_REAL, (n,), generator=g)
    targets[list(ignored)] = -100
    return hidden.to(device).requires_grad_(), weight.to(device).requires_grad_(), targets.to(device)


def reference(hidden, weight, targets, temperature, vocab_size=V_REAL):
    """Full float64 logits; entropy written as -sum p log p (the kernel uses logsumexp - E_p[z])."""
    logits = hidden.double() @ weight.double()[:vocab_size].T / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    valid = targets != -100
    logp = logp_all.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * valid
    entropy = -(logp_all.exp() * logp_all).sum(-1) * valid
    return logp, entropy


def grads(outputs, inputs, coefs):
    loss = sum((c.to(o.dtype) * o).sum() for o, c in zip(outputs, coefs))
    return torch.autograd.grad(loss, inputs)


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [3, 4, None])   # 3 and 4 do not divide N = 10
def test_values_and_gradients_match_float64(temperature, chunk_size):
    hidden, weight, targets = make_inputs(10, ignored=(2, 7))
    logp, entropy = token_logprobs(hidden, weight, targets, temperature=temperature, vocab_size=V_REAL,
                                   chunk_size=chunk_size)
    ref_logp, ref_entropy = reference(hidden, weight, targets, temperature)
    close(logp, ref_logp)
    close(entropy, ref_entropy)
    coefs = (torch.randn(10, generator=torch.Generator().manual_seed(1)), torch.randn(10))
    g_h, g_w = grads((logp, entropy), (hidden, weight), coefs)
    ref_g_h, ref_g_w = grads((ref_logp, ref_entropy), (hidden, weight), coefs)
    close(g_h, ref_g_h)
    close(g_w, ref_g_w)
    assert logp[2] == 0 and entropy[7] == 0 and g_h[2].abs().max() == 0 and g_h[7].abs().max() == 0
    assert g_w[V_REAL:].abs().max() == 0        # padded rows never enter the softmax


def test_single_token_and_logprob_only_loss():
    """N = 1; entropy left out of the loss (a metric), so the backward takes its logp-only branch."""
    hidden, weight, targets = make_inputs(1, seed=3)
    logp, entropy = token_logprobs(hidden, weight, targets, vocab_size=V_REAL, chunk_size=5)
    ref_logp, ref_entropy = reference(hidden, weight, targets, 1.0)
    close(entropy, ref_entropy)
    g_h, g_w = torch.autograd.grad(-3.0 * logp.sum(), (hidden, weight))
    ref_g_h, ref_g_w = torch.autograd.grad(-3.0 * ref_logp.sum(), (hidden, weight))
    close(g_h, ref_g_h)
    close(g_w, ref_g_w)


def test_leading_dims_full_vocab_and_no_grad():
    """[B, T, H] hidden states as the model returns them; vocab_size=None uses every row; under no_grad
    (old / reference log-probs) nothing is kept for a backward."""
    hidden, weight, targets = make_inputs(12, seed=4)
    with torch.no_grad():
        logp, entropy = token_logprobs(hidden.view(3, 4, H), weight, targets.view(3, 4), chunk_size=5)
    assert logp.shape == (3, 4) and not logp.requires_grad
    ref_logp, ref_entropy = reference(hidden, weight, targets, 1.0, vocab_size=V_ROWS)
    close(logp.reshape(-1), ref_logp)
    close(entropy.reshape(-1), ref_entropy)


def test_bfloat16_inputs():
    """bf16 hidden/weight: the math runs in float32 on the bf16 values, so log-probs and entropy match the
    float64 reference of those same values to 1e-5 (plus float32 rounding of logits of size ~10: 1e-4 here);
    gradients come back in bf16, i.e. within bf16 rounding (relative 2**-8) of the reference."""
    hidden, weight, targets = make_inputs(9, dtype=torch.bfloat16, seed=5, ignored=(4,))
    logp, entropy = token_logprobs(hidden, weight, targets, temperature=0.7, vocab_size=V_REAL, chunk_size=4)
    assert logp.dtype == torch.float32
    ref_logp, ref_entropy = reference(hidden, weight, targets, 0.7)
    close(logp, ref_logp, tol=1e-4)
    close(entropy, ref_entropy, tol=1e-4)
    coefs = (torch.randn(9), torch.randn(9))
    g_h, g_w = grads((logp, entropy), (hidden, weight), coefs)
    ref_g_h, ref_g_w = grads((ref_logp, ref_entropy), (hidden, weight), coefs)
    assert g_h.dtype == g_w.dtype == torch.bfloat16
    torch.testing.assert_close(g_h.double(), ref_g_h.double(), rtol=2**-7, atol=1e-4)
    torch.testing.assert_close(g_w.double(), ref_g_w.double(), rtol=2**-7, atol=1e-4)


def ppo_clip_loss(logp, old_logp, advantages, weights, entropy, entropy_coef):
    """Token-level PPO-clip surrogate (Schulman et al. 2017), as the RL objective uses it."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
    return -(weights * surrogate).sum() - entropy_coef * (weights * entropy).sum()


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_same_pass_gradient_matches_float64_and_recompute_path(entropy_coef, temperature):
    n = 11
    hidden, weight, targets = make_inputs(n, seed=6, ignored=(0, 5))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        old_logp, _ = token_logprobs(hidden, weight, targets, temperature=temperature, vocab_size=V_REAL)
    old_logp = old_logp + 0.3 * torch.randn(n, generator=g)    # some ratios land outside the clip range
    advantages, weights = torch.randn(n, generator=g), torch.rand(n, generator=g)
    weights[[0, 5]] = 0.0

    def loss_fn(logp, entropy, rows):
        return ppo_clip_loss(logp, old_logp[rows], advantages[rows], weights[rows], entropy, entropy_coef)

    loss, logp, entropy = token_loss_fused(hidden, weight, targets, loss_fn, temperature=temperature,
                                           vocab_size=V_REAL, chunk_size=4)
    assert not logp.requires_grad and not entropy.requires_grad
    g_h, g_w = torch.autograd.grad(2.0 * loss, (hidden, weight))   # the backward scales the stored grads

    ref_logp, ref_entropy = reference(hidden, weight, targets, temperature)
    ref_loss = ppo_clip_loss(ref_logp, old_logp.double(), advantages.double(), weights.double(), ref_entropy,
                             entropy_coef)
    ref_g_h, ref_g_w = torch.autograd.grad(2.0 * ref_loss, (hidden, weight))
    close(loss, ref_loss)
    close(logp, ref_logp)
    close(entropy, ref_entropy)
    close(g_h, ref_g_h)
    close(g_w, ref_g_w)

    rc_logp, rc_entropy = token_logprobs(hidden, weight, targets, temperature=temperature, vocab_size=V_REAL,
                                         chunk_size=3)
    rc_g_h, rc_g_w = torch.autograd.grad(2.0 * loss_fn(rc_logp, rc_entropy, slice(None)), (hidden, weight))
    close(g_h, rc_g_h)
    close(g_w, rc_g_w)


def test_same_pass_with_frozen_weight_and_no_grad_inputs():
    hidden, weight, targets = make_inputs(6, seed=8)
    weight = weight.detach()
    loss, logp, _ = token_loss_fused(hidden, weight, targets, lambda lp, ent, rows: -lp.sum(), chunk_size=4)
    (g_h,) = torch.autograd.grad(loss, (hidden,), retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):   # its stored gradients are handed over
        torch.autograd.grad(loss, (hidden,))
    ref_logp, _ = reference(hidden, weight, targets, 1.0, vocab_size=V_ROWS)
    close(g_h, torch.autograd.grad(-ref_logp.sum(), (hidden,))[0])
    with torch.no_grad():                     # no gradient wanted: the loss value only
        loss, _, _ = token_loss_fused(hidden, weight, targets, lambda lp, ent, rows: -lp.sum())
    assert not loss.requires_grad
    close(loss, -ref_logp.sum())
    loss, _, _ = token_loss_fused(hidden.detach(), weight, targets, lambda lp, ent, rows: -lp.sum())
    assert not loss.requires_grad


def test_bad_inputs_raise_clear_errors():
    hidden, weight, targets = make_inputs(4)
    with pytest.raises(ValueError, match="outside"):
        token_logprobs(hidden, weight, torch.tensor([0, 1, V_REAL, 2]), vocab_size=V_REAL)
    with pytest.raises(ValueError, match="must match"):
        token_logprobs(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(hidden, weight[:, :5], targets)
    with pytest.raises(ValueError, match="vocab_size"):
        token_logprobs(hidden, weight, targets, vocab_size=V_ROWS + 1)
    with pytest.raises(ValueError, match="integer"):
        token_logprobs(hidden, weight, targets.float())
    with pytest.raises(ValueError, match="scalar"):
        token_loss_fused(hidden, weight, targets, lambda lp, ent, rows: lp)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    hidden, weight, targets = make_inputs(37, dtype=dtype, seed=9, ignored=(3,), device="cuda")
    logp, entropy = token_logprobs(hidden, weight, targets, temperature=0.7, vocab_size=V_REAL, chunk_size=8)
    g_h, g_w = grads((logp, entropy), (hidden, weight), (torch.ones(37, device="cuda"), torch.ones(37, device="cuda")))
    cpu = [t.detach().cpu().requires_grad_() for t in (hidden, weight)]
    c_logp, c_entropy = token_logprobs(cpu[0], cpu[1], targets.cpu(), temperature=0.7, vocab_size=V_REAL)
    c_g_h, c_g_w = grads((c_logp, c_entropy), cpu, (torch.ones(37), torch.ones(37)))
    tol = 1e-4 if dtype == torch.float32 else 2**-7   # TF32 may be on for float32 matmuls on GPUs
    for a, b in [(logp, c_logp), (entropy, c_entropy), (g_h, c_g_h), (g_w, c_g_w)]:
        torch.testing.assert_close(a.double().cpu(), b.double(), rtol=tol, atol=tol)


def test_autograd_graph_keeps_nothing_of_size_n_by_v():
    """What autograd saves for the backward: N x V tensors for the naive version, only [N], [N, H], [V, H] here."""
    n = 64
    hidden, weight, targets = make_inputs(n)
    for fn, expect_n_by_v in ((reference, True), (token_logprobs, False)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            fn(hidden, weight, targets, temperature=1.0)
        assert (max(saved) >= n * V_REAL) == expect_n_by_v, (fn.__name__, max(saved))


def test_logprob_precision_follows_the_ratio():
    """loss.logprob_precision "auto": TF32 ("high") for per-token ratios, IEEE ("highest") for GSPO's sequence
    ratio; an explicit choice is kept; anything else is a config error naming the key."""
    from config import ConfigError, check_config, load_config
    from loss import LossConfig, logprob_precision
    cases = {("auto", "token"): "high", ("auto", "sequence"): "highest", ("highest", "token"): "highest",
             ("high", "sequence"): "high"}
    for (precision, ratio), want in cases.items():
        assert logprob_precision(LossConfig(logprob_precision=precision, ratio=ratio)) == want
    with pytest.raises(ConfigError, match="loss.logprob_precision must be one of .* got 'medium'"):
        check_config(load_config(None, ["loss.logprob_precision=medium"]))


@pytest.mark.parametrize("precision", ["high", "highest"])
def test_kernel_matmuls_run_at_the_chosen_precision(precision, monkeypatch):
    """The forward's and the backward's matmuls run at `precision`, and the process's own setting comes back
    afterwards; on the CPU both precisions give the float64 reference's values (torch's CPU matmuls ignore
    "high")."""
    import loss
    seen = []
    for name in ("_chunk_softmax", "_chunk_logit_grad"):  # the forward's chunks, the backward's chunks
        fn = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda *a, fn=fn, name=name, **k: seen.append(
            (name, torch.get_float32_matmul_precision())) or fn(*a, **k))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        hidden, weight, targets = make_inputs(10, ignored=(2,))
        logp, entropy = token_logprobs(hidden, weight, targets, vocab_size=V_REAL, chunk_size=4, precision=precision)
        assert torch.get_float32_matmul_precision() == "medium"
        g_h, g_w = grads((logp, entropy), (hidden, weight), (torch.ones(10), torch.ones(10)))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen == [("_chunk_softmax", precision)] * 3 + [("_chunk_logit_grad", precision)] * 3
    ref_logp, ref_entropy = reference(hidden, weight, targets, 1.0)
    ref_g_h, ref_g_w = grads((ref_logp, ref_entropy), (hidden, weight), (torch.ones(10), torch.ones(10)))
    for mine, ref in ((logp, ref_logp), (entropy, ref_entropy), (g_h, ref_g_h), (g_w, ref_g_w)):
        close(mine, ref)
    with pytest.raises(ValueError, match="precision must be 'high' or 'highest'"):
        token_logprobs(hidden, weight, targets, vocab_size=V_REAL, precision="medium")
