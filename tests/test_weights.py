"""weights.py against float64 references written out from SPEC's formulas (numpy, per-prompt loops)."""
import math

import numpy as np
import pytest
import torch

from weights import (DARO, HADW, SCHEMES, BlindHardConfig, DAROConfig, HADWConfig, SchemeConfig, effective_curve,
                     hadw_bias_probability, make_scheme, StepStats)

EPS = 1e-6


def reference(name, rewards, lengths, max_len):
    """A and W for one optimizer-step batch, one prompt at a time (numpy float64, unbiased std)."""
    r, L = np.asarray(rewards, np.float64), np.asarray(lengths, np.float64)
    P, G = r.shape
    A, W = np.zeros((P, G)), np.zeros((P, G))
    batch_std = np.std(r.reshape(-1), ddof=1)
    total = L.sum()
    for p in range(P):
        mean, std = r[p].mean(), np.std(r[p], ddof=1)
        for i in range(G):
            if name in ("grpo", "dapo"):
                A[p, i] = (r[p, i] - mean) / (std + EPS)
            elif name == "lipo":
                A[p, i] = (r[p, i] - mean) / (batch_std + EPS)
            else:  # drgrpo, daro
                A[p, i] = r[p, i] - mean
            if name == "grpo":
                W[p, i] = 1.0 / (L[p, i] * G * P)
            elif name == "drgrpo":
                W[p, i] = 1.0 / (max_len * G * P)
            elif name in ("dapo", "lipo"):
                W[p, i] = 1.0 / total
    if name == "daro":  # w_mu = 1 at init; Omega_mu = 1 / tokens in the bucket; mu in {0, 1} left out
        k = (r > 0.5).sum(1)
        for p in range(P):
            if 0 < k[p] < G:
                W[p, :] = 1.0 / L[k == k[p]].sum()
    return A, W


def random_batch(P, G, binary, seed):
    g = torch.Generator().manual_seed(seed)
    if binary:
        rewards = (torch.rand(P, G, generator=g) < torch.rand(P, 1, generator=g)).float()
    else:
        rewards = torch.randn(P, G, generator=g) * 0.7 + torch.rand(P, 1, generator=g)
    rewards[0] = 1.0  # zero-variance groups: all correct,
    rewards[1] = 0.0  # all wrong
    lengths = torch.randint(1, 50, (P, G), generator=g).float()
    return rewards, lengths


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "dapo", "lipo", "daro"])
@pytest.mark.parametrize("G", [2, 4, 8, 16])
@pytest.mark.parametrize("binary", [True, False])
def test_advantages_and_weights_match_reference(name, G, binary):
    rewards, lengths = random_batch(12, G, binary, seed=G * 7 + binary)
    scheme = make_scheme(SchemeConfig(name=name), G=G, max_len=64)
    A, W = scheme(rewards, lengths)
    A_ref, W_ref = reference(name, rewards, lengths, 64)
    assert torch.isfinite(A).all() and torch.isfinite(W).all() and (W >= 0).all()
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W.numpy(), W_ref, rtol=1e-5, atol=1e-12)
    assert (A[:2] == 0).all()  # zero-variance groups give zero advantage, not NaN


def test_population_std_option():
    rewards, lengths = random_batch(6, 8, True, seed=1)
    scheme = make_scheme(SchemeConfig(name="grpo", std="population"), G=8, max_len=8)
    r = rewards.double().numpy()
    expected = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=0, keepdims=True) + EPS)
    np.testing.assert_allclose(scheme.advantages(rewards).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("G", [4, 8, 16])
def test_effective_curves(G):
    L = 16
    mu = np.arange(1, G) / G
    P = G - 1  # effective_curve's batch: one prompt per k = 1..G-1
    curves = {}
    for name in ["grpo", "drgrpo", "lipo", "dapo"]:
        scheme = make_scheme(SchemeConfig(name=name), G=G, max_len=L)
        m, w = effective_curve(scheme, G, length=L)
        np.testing.assert_allclose(m.numpy(), mu)
        curves[name] = w.numpy()
    # GRPO, on per-response token means (x L): sqrt(mu(1-mu)) with the unbiased-std constant sqrt((G-1)/G) / P
    grpo = np.sqrt((G - 1) / G) * np.sqrt(mu * (1 - mu)) / P
    np.testing.assert_allclose(curves["grpo"] * L, grpo, rtol=1e-4)
    # Dr.GRPO, on token sums: mu(1-mu) / (L_max P)
    np.testing.assert_allclose(curves["drgrpo"], mu * (1 - mu) / (L * P), rtol=1e-4)
    # LIPO, on token sums: G mu(1-mu) / (sigma_batch T), sigma_batch over all P*G rewards of the batch
    rewards = np.array([[1.0] * k + [0.0] * (G - k) for k in range(1, G)])
    sigma = rewards.std(ddof=1)
    np.testing.assert_allclose(curves["lipo"], G * mu * (1 - mu) / (sigma * P * G * L), rtol=1e-4)
    # shapes: GRPO and DAPO share sqrt(mu(1-mu)), Dr.GRPO and LIPO share mu(1-mu)
    shape = np.sqrt(mu * (1 - mu))
    np.testing.assert_allclose(curves["dapo"] / curves["dapo"].max(), shape / shape.max(), rtol=1e-4)


def test_unknown_scheme_and_bad_rewards():
    with pytest.raises(ValueError, match="unknown scheme.name 'grpoo'"):
        make_scheme(SchemeConfig(name="grpoo"), G=4, max_len=8)
    scheme = make_scheme(SchemeConfig(name="grpo"), G=4, max_len=8)
    with pytest.raises(ValueError, match="NaN"):
        scheme(torch.tensor([[1.0, float("nan"), 0, 0]]), torch.ones(1, 4))
    with pytest.raises(ValueError, match="G >= 2"):
        scheme(torch.ones(3, 1), torch.ones(3, 1))


def test_blind_hard_control_is_grpo_without_the_hardest_quarter():
    G, P = 8, 4
    # correct counts k = 1, 2, 3, 8: the first two prompts sit at mu <= 1/4 and get no weight
    rewards = torch.tensor([[1.0] * k + [0.0] * (G - k) for k in (1, 2, 3, 8)])
    lengths = torch.arange(1, P * G + 1, dtype=torch.float32).view(P, G)
    control = make_scheme(SchemeConfig(name="blind_hard"), G=G, max_len=64)
    A, W = control(rewards, lengths)
    A_ref, W_ref = reference("grpo", rewards, lengths, 64)
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=1e-5, atol=1e-6)
    assert (W[:2] == 0).all()
    np.testing.assert_allclose(W[2:].numpy(), 1.0 / (lengths[2:].double().numpy() * G * P), rtol=1e-6)
    # its buckets count verdicts: a correct answer shaped to reward 0 still counts (k = 3, so it keeps W)
    shaped = rewards[2:3].clone()
    shaped[0, 0] = 0.0
    W = control.weights(shaped, lengths[2:3], correct=rewards[2:3] > 0.5)
    assert (W > 0).all() and (control.weights(shaped, lengths[2:3]) == 0).all()  # fallback: k = 2
    with pytest.raises(ValueError, match="scheme.blind_hard.mu < 1 .* got mu=0.25 at G=2"):
        make_scheme(SchemeConfig(name="blind_hard"), G=2, max_len=8)(torch.tensor([[1.0, 0.0]]), torch.ones(1, 2))


@pytest.mark.parametrize("G, mu, dropped", [(8, 0.125, 1), (8, 0.3, 2), (16, 0.25, 4), (16, 0.5, 8)])
def test_blind_hard_grades_its_handicap_by_its_own_mu(G, mu, dropped):
    # one prompt at each k = 0..G: exactly the groups with k <= dropped lose their weight, the rest keep GRPO's
    rewards = torch.tensor([[1.0] * k + [0.0] * (G - k) for k in range(G + 1)])
    lengths = torch.full(rewards.shape, 5.0)
    blind = lambda mu: SchemeConfig(name="blind_hard", blind_hard=BlindHardConfig(mu=mu))  # noqa: E731
    W = make_scheme(blind(mu), G=G, max_len=8).weights(rewards, lengths)
    kept = [k for k in range(G + 1) if (W[k] > 0).all()]
    assert kept == list(range(dropped + 1, G + 1)) and (W[:dropped + 1] == 0).all()
    np.testing.assert_allclose(W[dropped + 1:].numpy(), 1.0 / (5.0 * G * (G + 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="scheme.blind_hard.mu"):
        make_scheme(blind(1.0), G=G, max_len=8).weights(rewards, lengths)


def test_per_token_weights_says_whether_W_counts_other_responses_tokens():
    """A scheme's per_token_weights (what config.check_config's GSPO warning reads) against what its W does:
    W_i of a response moves when another response of the same bucket grows longer exactly where W normalises
    by a token count shared across responses (DAPO and LIPO: the batch's; DARO: the bucket's), and not where
    it is per response (GRPO, the blind_hard control) or a constant (Dr.GRPO). HA-DW says its base's."""
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])   # two groups in one bucket, k = 2
    lengths = torch.full(rewards.shape, 3.0)
    longer = lengths.clone()
    longer[1, 1] = 9.0
    for name, cls in SCHEMES.items():
        weights = lambda L: make_scheme(SchemeConfig(name=name), G=4, max_len=16).weights(  # noqa: E731
            rewards, L, rewards > 0.5)
        moved = not torch.equal(weights(lengths)[0], weights(longer)[0])
        assert cls.per_token_weights == moved, name
        for wrapped in (False, True):
            scheme = make_scheme(SchemeConfig(name=name, hadw=HADWConfig(enabled=wrapped)), G=4, max_len=16)
            assert scheme.per_token_weights == cls.per_token_weights
    assert [n for n, c in SCHEMES.items() if c.per_token_weights] == ["dapo", "lipo", "daro"]


# ---------------------------------------------------------------- DARO

def daro(**kw):
    return DARO(SchemeConfig(name="daro", daro=DAROConfig(**kw)), G=4, max_len=0)


def bucket_step(scheme, L, tokens, abs_L=None):
    """One step's begin_step and update on a batch built so that bucket k (k correct of G) holds tokens[k]
    response tokens with mean surrogate L[k] per token (and mean magnitude abs_L[k], default |L[k]|): one
    prompt per non-empty bucket, its G responses tokens[k] / G long, each with surrogate sum L[k] tokens[k] / G."""
    G = scheme.G
    ks = [k for k in range(G + 1) if float(tokens[k]) > 0]
    rewards = torch.tensor([[1.0] * k + [0.0] * (G - k) for k in ks])
    lengths = torch.tensor([[float(tokens[k]) / G] * G for k in ks])
    per_response = lambda x: torch.tensor([[float(x[k]) * float(tokens[k]) / G] * G for k in ks],  # noqa: E731
                                          dtype=torch.float64)
    surrogate = per_response(L)
    scheme.begin_step(rewards, lengths)
    scheme.update(StepStats(surrogate=surrogate, abs_surrogate=surrogate.abs() if abs_L is None else per_response(abs_L),
                            W=torch.ones_like(surrogate), epochs=1, optimizer_steps=1))


@pytest.mark.parametrize("update", ["sgd", "ema"])
def test_daro_weights_move_to_optimum_within_bounds(update):
    scheme = daro(loss_scale="abs", update=update, lr=0.2, w_min=0.1, w_max=10.0)
    tokens = torch.tensor([5.0, 10.0, 20.0, 0.0, 7.0])          # bucket 3 empty this batch
    L = torch.tensor([0.3, 0.5, -0.25, 0.4, 0.9])                # bucket means; sums = L * tokens
    w0 = scheme.w.clone()
    objective = lambda w: float(w[1] * 0.5 - math.log(w[1]))     # bucket 1's own objective w L - ln w
    before = objective(scheme.w)
    for _ in range(200):
        bucket_step(scheme, L, tokens)
    # optimum of w |L_mu| - ln w is 1 / |L_mu|: 2.0 for bucket 1, 4.0 for bucket 2 (abs of -0.25)
    np.testing.assert_allclose(scheme.w[1:3].numpy(), [2.0, 4.0], rtol=1e-3)
    assert objective(scheme.w) < before
    assert scheme.w[3] == w0[3]                                  # empty bucket untouched
    assert scheme.w[0] == 0 and scheme.w[4] == 0                 # mu = 0 and mu = 1 carry no weight


def test_daro_clamps_and_signed_variant():
    scheme = daro(loss_scale="abs", w_min=0.5, w_max=3.0, lr=0.5)
    tokens = torch.full((5,), 10.0)
    for _ in range(100):
        # L = 0.5, 0.001, 10
        bucket_step(scheme, [0.0, 0.5, 0.001, 10.0, 0.0], tokens)
    np.testing.assert_allclose(scheme.w[1:4].numpy(), [2.0, 3.0, 0.5], rtol=1e-3)  # 1/0.5; capped; floored
    signed = daro(loss_scale="signed", w_max=5.0)
    for _ in range(100):
        # L <= 0: the term w L - ln w has no minimum, so w holds (it ran to w_max before the rule)
        bucket_step(signed, [0.0, -0.5, 0.0, 0.25, 0.0], tokens)
    assert signed.w[1] == signed.w[2] == 1.0  # w_init, held
    np.testing.assert_allclose(float(signed.w[3]), 4.0, rtol=1e-4)  # 1 / 0.25
    bucket_step(signed, [0.0, 0.5, 0.0, 0.25, 0.0], tokens)  # a positive L_mu: bucket 1 learns again
    assert signed.w[1] == pytest.approx(math.exp(-0.1 * (1.0 * 0.5 - 1.0)))


def test_daro_token_abs_equalises_buckets_where_abs_saturates():
    # On-policy, equal-length responses: a bucket's mean surrogate -sum_i |o_i| A_i / tokens is 0 (A is
    # centred), so "abs" drives every w to w_max; "token_abs" sees mean |A| = 2 mu (1 - mu) and learns
    # w_mu = 1 / (2 mu (1 - mu)). The bucket sums come from loss.policy_loss itself.
    from loss import LossConfig, policy_loss
    G, T = 4, 3
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [1.0, 1, 1, 0], [0.0, 1, 0, 0]])
    logp = torch.randn(rewards.numel(), T, dtype=torch.float64)
    scheme = daro(lr=0.2)
    A = scheme.advantages(rewards).flatten().double()
    _, stats = policy_loss(logp, logp, torch.ones_like(logp), A, torch.ones_like(A), LossConfig())
    step = StepStats(surrogate=stats["surrogate"].view(-1, G), abs_surrogate=stats["abs_surrogate"].view(-1, G),
                     W=torch.ones(len(rewards), G, dtype=torch.float64), epochs=1, optimizer_steps=1)
    saturated = daro(loss_scale="abs", lr=0.2, w_max=10.0)
    for _ in range(300):
        for s in (scheme, saturated):
            s.begin_step(rewards, torch.full_like(rewards, float(T)))
            s.update(step)
    assert max(abs(scheme.metrics()[f"bucket_loss/{k}"]) for k in range(1, G)) < 1e-12  # signed L_mu = 0
    mu = torch.tensor([1, 2, 3], dtype=torch.float64) / G
    torch.testing.assert_close(scheme.w[1:G], 1 / (2 * mu * (1 - mu)), rtol=1e-4, atol=0)
    assert saturated.w[1:G].tolist() == [10.0, 10.0, 10.0]


@pytest.mark.parametrize("loss_scale", ["token_abs", "signed"])
def test_daro_on_policy_fixed_points_with_unequal_lengths(loss_scale):
    """w learned through Scheme.update from loss.policy_loss's per-response sums (ratio 1) converges to
    the closed forms of the DARO docstring, with Lc, Li the mean lengths of a bucket's correct and wrong answers:
    token_abs (mu Lc + (1 - mu) Li) / (mu (1 - mu) (Lc + Li)); signed mu (1 - mu) (Li - Lc) / (mu Lc + (1 - mu) Li)
    inverted where wrong answers run longer, held at w_init where they do not."""
    from loss import LossConfig, policy_loss
    G, T = 4, 8
    rewards = torch.tensor([[1.0, 0, 0, 0], [0.0, 1, 0, 0], [1.0, 1, 0, 0], [1.0, 1, 1, 0]])  # k = 1, 1, 2, 3
    lengths = torch.tensor([[1.0, 6, 6, 6], [5.0, 3, 7, 6],    # k = 1: correct 1 and 3 (Lc 2), wrong 6 (Li 6)
                            [2.0, 2, 6, 6],                    # k = 2: Lc 2, Li 6
                            [8.0, 8, 8, 4]])                   # k = 3: Lc 8, Li 4 (wrong answers shorter)
    Lc, Li = {1: 2.0, 2: 2.0, 3: 8.0}, {1: 6.0, 2: 6.0, 3: 4.0}
    scheme = daro(loss_scale=loss_scale, lr=0.2)
    A = scheme.advantages(rewards).flatten().double()
    mask = (torch.arange(T)[None, :] < lengths.flatten()[:, None]).double()
    logp = -torch.rand(len(A), T, dtype=torch.float64)
    _, stats = policy_loss(logp, logp, mask, A, torch.ones_like(A), LossConfig())
    step = StepStats(surrogate=stats["surrogate"].view(-1, G), abs_surrogate=stats["abs_surrogate"].view(-1, G),
                     W=torch.ones(4, G, dtype=torch.float64), epochs=1, optimizer_steps=1)
    for _ in range(300):
        scheme.begin_step(rewards, lengths)
        scheme.update(step)
    for k in (1, 2, 3):
        mu, c, i = k / G, Lc[k], Li[k]
        if loss_scale == "token_abs":
            expected = (mu * c + (1 - mu) * i) / (mu * (1 - mu) * (c + i))  # 3.333, 2.0, 3.111
        else:
            L_mu = mu * (1 - mu) * (i - c) / (mu * c + (1 - mu) * i)         # 0.15, 0.25, -0.0833
            assert scheme.metrics()[f"bucket_loss/{k}"] == pytest.approx(L_mu, rel=1e-12)
            expected = 1 / L_mu if L_mu > 0 else 1.0                          # 6.667, 4.0, held at w_init
        assert float(scheme.w[k]) == pytest.approx(expected, rel=1e-6), k
    if loss_scale == "token_abs":  # lengths move it off the static control 1 / (2 mu (1 - mu)) = 2.667, 2, 2.667
        assert float(scheme.w[1]) > 3.3 and float(scheme.w[3]) > 3.1


def test_daro_weight_uses_bucket_token_counts():
    scheme = daro()
    scheme.w[1:4] = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [0.0, 1, 0, 0], [1.0, 1, 1, 1]])
    lengths = torch.tensor([[1.0, 2, 3, 4], [5.0, 5, 5, 5], [1.0, 1, 1, 1], [9.0, 9, 9, 9]])
    _, W = scheme(rewards, lengths)
    # bucket k=1 holds rows 0 and 2 (14 tokens), k=2 row 1 (20 tokens), k=4 (mu = 1) is left out
    expected = torch.tensor([0.5 / 14, 2.0 / 20, 0.5 / 14, 0.0])[:, None].expand(4, 4)
    torch.testing.assert_close(W, expected.float())


def test_daro_state_round_trip():
    a = daro(loss_scale="abs")
    tokens = torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0])
    bucket_step(a, torch.tensor([1.0, 2.0, -3.0, 4.0, 5.0]) / tokens, tokens)
    b = daro(loss_scale="abs")
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        bucket_step(s, torch.tensor([0.5, 1.0, 2.0, 0.1, 1.0]) / tokens, tokens)
    torch.testing.assert_close(a.w, b.w, rtol=0, atol=0)


# ---------------------------------------------------------------- HA-DW

def hadw(cfg, G=4):
    """HA-DW on top of Dr.GRPO (its reweighting does not depend on the base scheme)."""
    return HADW(make_scheme(SchemeConfig(name="drgrpo"), G=G, max_len=8), cfg)


def batch_with_accuracy(acc, G=4, P=4):
    """P prompts of G binary rewards whose batch mean is acc (acc * P * G correct, filled row-major)."""
    flat = torch.zeros(P * G)
    flat[: round(acc * P * G)] = 1.0
    return flat.view(P, G)


def test_hadw_belief_updates_by_hand():
    h = hadw(HADWConfig(enabled=True, anchor="belief", eta=2.0, m=3))
    A = torch.ones(4, 4)
    anchors, beliefs = [], []
    for acc in [0.5, 0.25, 0.75]:
        h.reweight(batch_with_accuracy(acc), A)
        anchors.append(h.last["hadw_anchor"])
        beliefs.append(h.belief)
    # step 1: C_1^- = y_1 = 0.5; window [0.5] has no spread, eta_1 = 0, C_1^+ = 0.5
    # step 2: window [0.5, 0.25], pstd 0.125, eta_2 = 0.25, C_2^+ = 0.75 * 0.5 + 0.25 * 0.25 = 0.4375
    # step 3: window [0.5, 0.25, 0.75], pstd sqrt(1/24), eta_3 = 2 sqrt(1/24), C_3^+ = 0.4375 + eta_3 (0.75 - 0.4375)
    eta3 = 2 * math.sqrt(((0.25 ** 2) * 2) / 3)
    assert anchors == pytest.approx([0.5, 0.5, 0.4375])
    assert beliefs == pytest.approx([0.5, 0.4375, 0.4375 + eta3 * 0.3125])


def test_hadw_literal_belief_sigma_and_c0():
    h = hadw(HADWConfig(enabled=True, anchor="belief", eta=2.0, m=2, sigma_of="beliefs", c0=0.2))
    A = torch.ones(4, 4)
    for acc in [0.5, 0.75]:
        h.reweight(batch_with_accuracy(acc), A)
    # beliefs window [C_0] has no spread: the literal rule never moves the belief from c0
    assert h.beliefs == pytest.approx([0.2, 0.2, 0.2])


def test_hadw_moving_average_anchor():
    h = hadw(HADWConfig(enabled=True, anchor="moving_average", k=2))
    A = torch.ones(4, 4)
    anchors = []
    for acc in [0.5, 0.25, 0.75, 1.0]:
        h.reweight(batch_with_accuracy(acc), A)
        anchors.append(h.last["hadw_anchor"])
    assert anchors == pytest.approx([0.5, 0.375, 0.5, 0.875])  # mean of the last 2, current included


def test_hadw_sign_logic_and_first_step():
    lam = 1.4
    h = hadw(HADWConfig(enabled=True, anchor="belief", lambda_scale=lam, c0=0.5))
    # prompt 0 is hard (p_hat = 0.25 < belief 0.5), prompt 1 easy (0.75), prompt 2 at the belief (0.5)
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 1, 0], [1.0, 1, 0, 0]])
    A = rewards - rewards.mean(1, keepdim=True)
    out = h.reweight(rewards, A)
    phi = out / torch.where(A == 0, torch.ones_like(A), A)
    M = 0.25
    assert phi[0, 0] == pytest.approx(lam * math.exp(M))    # correct on a hard prompt: amplified
    assert phi[0, 1] == pytest.approx(lam * math.exp(-M))   # incorrect on a hard prompt: damped
    assert phi[1, 0] == pytest.approx(lam * math.exp(-M))   # correct on an easy prompt: damped
    assert phi[1, 3] == pytest.approx(lam * math.exp(M))    # incorrect on an easy prompt: amplified
    assert torch.allclose(phi[2], torch.full((4,), lam))    # at the belief: only lambda_scale
    # first step without c0: the anchor is the batch's own accuracy
    h2 = hadw(HADWConfig(enabled=True))
    h2.reweight(rewards, A)
    assert h2.last["hadw_anchor"] == pytest.approx(float(rewards.mean()))


def test_hadw_state_round_trip():
    a = hadw(HADWConfig(enabled=True, anchor="belief"))
    for acc in [0.25, 0.5]:
        a.reweight(batch_with_accuracy(acc), torch.ones(4, 4))
    b = hadw(HADWConfig(enabled=True, anchor="belief"))
    b.load_state_dict(a.state_dict())
    x = batch_with_accuracy(0.75)
    torch.testing.assert_close(a.reweight(x, x - 0.5), b.reweight(x, x - 0.5), rtol=0, atol=0)


@pytest.mark.parametrize("G,a,b,table", [(4, 0, 0.5, 0.7770), (6, 0, 0.5, 0.6897), (8, 0, 0.5, 0.6409),
                                         (6, 0, 0.25, 0.8278), (8, 0, 0.25, 0.7811)])
def test_hadw_theorem2_reproduces_tables(G, a, b, table):
    n = 20000  # midpoint rule over p ~ U(a, b)
    ps = a + (np.arange(n) + 0.5) * (b - a) / n
    value = np.mean([hadw_bias_probability(G, p) for p in ps])
    assert abs(value - table) <= 1e-4


# ---------------------------------------------------------------- open choices (DAROConfig / HADWConfig)

def on_policy_update(scheme, rewards, T=3):
    """begin_step and update with loss.policy_loss's per-response sums for equal-length responses at ratio 1."""
    from loss import LossConfig, policy_loss
    G = rewards.shape[1]
    A = daro().advantages(rewards).flatten().double()
    logp = torch.zeros(rewards.numel(), T, dtype=torch.float64)
    stats = policy_loss(logp, logp, torch.ones_like(logp), A, torch.ones_like(A), LossConfig())[1]
    scheme.begin_step(rewards, torch.full_like(rewards, float(T)))
    scheme.update(StepStats(surrogate=stats["surrogate"].view(-1, G), abs_surrogate=stats["abs_surrogate"].view(-1, G),
                            W=torch.ones(len(rewards), G, dtype=torch.float64), epochs=1, optimizer_steps=1))


def test_daro_static_control_is_the_learned_fixed_point():
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [1.0, 1, 1, 0]])
    static = daro(update="static")
    mu = torch.arange(5, dtype=torch.float64) / 4
    torch.testing.assert_close(static.w[1:4], 1 / (2 * mu[1:4] * (1 - mu[1:4])), rtol=0, atol=1e-12)
    w0 = static.w.clone()
    on_policy_update(static, rewards)
    assert torch.equal(static.w, w0)  # no learning
    learned = daro(lr=0.2)
    for _ in range(300):
        on_policy_update(learned, rewards)
    torch.testing.assert_close(learned.w, static.w, rtol=1e-4, atol=1e-12)


def test_daro_adam_update_first_step_and_optimum():
    scheme = daro(update="adam", loss_scale="abs", lr=0.05)
    tokens = torch.tensor([0.0, 10.0, 10.0, 0.0, 0.0])
    L = [0.0, 0.5, 0.2, 0.0, 0.0]
    bucket_step(scheme, L, tokens)
    # Adam's bias-corrected first step is lr * g / (|g| + eps): ln w moves by -lr * sign(w L - 1) = +0.05
    np.testing.assert_allclose(np.log(scheme.w[1:3].numpy()), [0.05, 0.05], rtol=1e-6)
    assert scheme.w[3] == 1.0  # absent bucket: no gradient, no move
    for _ in range(2000):
        bucket_step(scheme, L, tokens)
    np.testing.assert_allclose(scheme.w[1:3].numpy(), [2.0, 5.0], rtol=2e-2)  # 1 / L_mu


def test_daro_omega_per_step_per_response_and_normalized():
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [0.0, 0, 1, 0]])  # k = 1, 2, 1
    lengths = torch.tensor([[1.0, 2, 3, 4], [5.0, 5, 5, 5], [2.0, 2, 2, 2]])
    scheme = daro(omega="step")
    scheme.w[1:4] = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    scheme.begin_step(rewards, lengths)  # the step holds buckets k=1 (10 + 8 tokens), k=2 (20 tokens)
    W = scheme.weights(rewards[:1], lengths[:1])  # a mini-batch of prompt 0 alone
    torch.testing.assert_close(W, torch.full((1, 4), 0.5 / 18))
    resp = daro(omega="response")
    resp.w[1:4] = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    W = resp.weights(rewards, lengths)
    # bucket k=1 holds 8 responses (rows 0 and 2): W_i = w_1 / (8 |o_i|); k=2 holds 4: W_i = w_2 / (4 |o_i|)
    expected = torch.stack([0.5 / (8 * lengths[0]), 2.0 / (4 * lengths[1]), 0.5 / (8 * lengths[2])])
    torch.testing.assert_close(W, expected.float())
    norm = daro(normalize=True)
    norm.w[1:4] = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    W = norm.weights(rewards, lengths)
    # present buckets k=1, 2: mean w = 1.25, so w becomes 0.4 and 1.6; Omega = 1/18 and 1/20
    expected = torch.tensor([0.4 / 18, 1.6 / 20, 0.4 / 18])[:, None].expand(3, 4)
    torch.testing.assert_close(W, expected.float())


def test_daro_buckets_count_verdicts_not_shaped_rewards():
    # a correct answer that ran overlong: reward 1 - 1 = 0 after DAPO's shaping, verdict still correct
    shaped = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    correct = torch.tensor([[True, True, False, False]])
    scheme = daro()
    scheme.w[1:4] = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    lengths = torch.full((1, 4), 5.0)
    torch.testing.assert_close(scheme.weights(shaped, lengths, correct), torch.full((1, 4), 2.0 / 20))  # k = 2
    torch.testing.assert_close(scheme.weights(shaped, lengths), torch.full((1, 4), 0.5 / 20))  # fallback: k = 1


def test_hadw_configs_reproduce_the_official_anchor_sequence():
    from pathlib import Path
    from config import load_config
    history = [0.1, 0.3, 0.2, 0.6, 0.5, 0.4, 0.9, 0.7, 0.8, 0.2, 0.3, 0.5]  # batch accuracies y_1..y_12
    for name in ("grpo_hadw", "gspo_hadw", "dapo_hadw"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
        scheme = make_scheme(cfg.scheme, G=4, max_len=8)
        rewards = batch_with_accuracy(0.5)
        anchors = []
        for y in history:  # y_t before any filtering, in the official code's units: the mean reward
            scheme.begin_step(rewards, torch.ones(4, 4), rewards > 0.5, accuracy=1 - y, reward_mean=y)
            scheme.advantages(rewards)
            anchors.append(scheme.metrics()["hadw_anchor"])
        # the official code: mean of the last 10 batch accuracies, the current one included
        expected = [sum(history[max(0, t - 9): t + 1]) / len(history[max(0, t - 9): t + 1]) for t in range(12)]
        assert anchors == pytest.approx(expected, abs=1e-12), name
        assert expected[11] == pytest.approx(sum(history[2:12]) / 10)


def test_hadw_signal_reward_or_verdicts_with_overlong_shaping():
    """p_hat and y_t in one unit: "reward" (official code) both from the shaped reward, "verdicts" both from
    the verifier. Prompt 0: 3 correct of 4, one of them overlong (reward 1 - 1 = 0); prompt 1: 1 of 4."""
    shaped = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    correct = torch.tensor([[True, True, True, False], [True, False, False, False]])
    A = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0]])
    lam = 1.5
    for signal, y, p_hat in [("reward", 0.3, (0.5, 0.25)), ("verdicts", 0.6, (0.75, 0.25))]:
        h = hadw(HADWConfig(enabled=True, anchor="moving_average", k=10, lambda_scale=lam, signal=signal))
        # the trainer's y_t over every sampled response: accuracy 0.6, mean shaped reward 0.3
        h.begin_step(shaped, torch.ones(2, 4), correct, accuracy=0.6, reward_mean=0.3)
        phi = h.reweight(shaped, A) / A
        assert h.last["hadw_anchor"] == pytest.approx(y)
        for p in range(2):
            d = p_hat[p] - y  # D = -sgn(A) sgn(d): a correct answer above the anchor is damped
            assert phi[p, 0] == pytest.approx(lam * math.exp(-math.copysign(1, d) * abs(d)), rel=1e-6), (signal, p)
            assert phi[p, 3] == pytest.approx(lam * math.exp(math.copysign(1, d) * abs(d)), rel=1e-6), (signal, p)
    # without the trainer's numbers: the batch's own means in the chosen units (threshold 0.5 for verdicts)
    h = hadw(HADWConfig(enabled=True, anchor="moving_average", signal="verdicts"))
    h.reweight(shaped, A)
    assert h.last["hadw_anchor"] == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="signal reward|verdicts"):
        hadw(HADWConfig(enabled=True, signal="accuracy"))
    h.begin_step(shaped, torch.ones(2, 4), correct)
    with pytest.raises(ValueError, match="not the batch of begin_step"):
        h.reweight(shaped[:1], A[:1])


def test_every_scheme_logs_L_mu_and_loss_scale_per_bucket():
    """Scheme.update's per-difficulty diagnostics (DARO's Fig. 2), for any scheme, HA-DW on top included:
    L_mu = the bucket's surrogate sum / epochs / its response tokens; scale = sum W |surrogate| / optimiser steps."""
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [0.0, 1, 0, 0], [1.0, 1, 1, 1]])  # k = 1, 2, 1, 4
    lengths = torch.tensor([[2.0, 2, 2, 2], [3.0, 3, 3, 3], [1.0, 1, 1, 1], [5.0, 5, 5, 5]])
    g = torch.Generator().manual_seed(0)
    surrogate = torch.randn(4, 4, generator=g, dtype=torch.float64)
    W = torch.rand(4, 4, generator=g, dtype=torch.float64)
    stats = StepStats(surrogate=surrogate, abs_surrogate=surrogate.abs() * 1.5, W=W, epochs=2, optimizer_steps=4)
    for cfg in (SchemeConfig(name="grpo"), SchemeConfig(name="drgrpo", hadw=HADWConfig(enabled=True))):
        scheme = make_scheme(cfg, G=4, max_len=0)
        scheme.begin_step(rewards, lengths)
        scheme.update(stats)
        m = scheme.metrics()
        one, two = [0, 2], [1]  # prompts of bucket k = 1 (8 + 4 tokens) and k = 2 (12 tokens); k = 4 not logged
        assert m["bucket_loss/1"] == pytest.approx(float(surrogate[one].sum()) / 2 / 12)
        assert m["bucket_loss/2"] == pytest.approx(float(surrogate[two].sum()) / 2 / 12)
        assert m["bucket_scale/1"] == pytest.approx(float((W[one] * surrogate[one].abs() * 1.5).sum()) / 4)
        assert "bucket_loss/3" not in m and "bucket_loss/4" not in m
