"""Weighting schemes: every method is the same token-level objective with its own A_i and W_i.

    L(theta) = - sum_i sum_t m_it * W_i * min(r_it * A_i, clip(r_it, 1 - eps_low, 1 + eps_high) * A_i)

(the objective itself is `loss.policy_loss`). A scheme decides two numbers per response:
  A_i  the advantage, from the rewards of the whole batch (group statistics need whole groups);
  W_i  the non-negative weight, from the rewards and lengths of the batch of one optimizer step:
       length normalisation, the global normaliser, and any difficulty weight w(mu).
Because W_i already holds the global normaliser, the loss is a plain sum over tokens: summing
micro-batch or per-rank losses gives the full-batch loss exactly.

Shapes: rewards and lengths are [P, G] (P prompts, G samples each); A and W come back as [P, G].
Dtype: everything is computed in float64 (cheap at [P, G]) and returned as float32.
Reduction choices: "std" is the unbiased (Bessel-corrected) std by default, as verl and torch do;
`std: population` switches to the population std.

To add a scheme for an ablation: write a subclass of Scheme with `advantages` and `weights`, and add
its name to SCHEMES; its own settings go in a config of its own, a field of SchemeConfig under its name
(as DAROConfig and BlindHardConfig), and `per_token_weights = True` marks a W_i that normalises by token
counts. HA-DW (`scheme.hadw.enabled`) wraps any of them.
`python weights.py --G 8` prints every scheme's effective difficulty curve w(mu), from this code.
"""
import argparse
import math
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class DAROConfig:
    """Open choices of DARO. The paper gives the objective sum_mu [w_mu L_mu - ln w_mu]; every field
    below is this project's choice (no official code is public). See class DARO."""
    loss_scale: str = "token_abs"  # what drives w_mu: "token_abs" mean |surrogate| per token (default);
                                   # "abs" |L_mu|; "signed" L_mu as written, and where L_mu <= 0 that step
                                   # leaves w_mu as it is (w L - ln w has no minimum there; see DARO)
    update: str = "sgd"       # "sgd": a gradient step on s_mu = ln w_mu; "adam": Adam on s_mu (the policy's
                              # optimiser family); "ema": w <- (1-lr) w + lr / L_mu; "static": no learning,
                              # w_mu = 1 / (2 mu (1 - mu)), token_abs's on-policy fixed point (a control)
    lr: float = 0.1           # step size of that update (separate from the policy's)
    omega: str = "mini_batch"  # Omega_mu = 1 / (tokens of bucket mu) counted per "mini_batch" (default) or
                               # per "step" (all mini-batches); "response": 1 / (|o_i| * responses of bucket mu)
    normalize: bool = False   # divide w by its mean over the buckets present in the mini-batch (mean w = 1):
                              # DARO vs GRPO at the same loss scale under grad clipping
    w_init: float = 1.0
    w_min: float = 0.1        # clamp: with L_mu near 0 the optimum 1/L_mu is unbounded
    w_max: float = 10.0
    eps: float = 1e-6         # guards 1 / |L_mu| in the "ema" update


@dataclass
class HADWConfig:
    """HA-DW's settings. The paper's: lambda_scale (its sweep: 1.3-1.5 best). The official code's (which
    produced the paper's numbers): the moving-average anchor over k = 10 batches, current one included,
    lambda_scale = 1.5, and p_hat and y_t both from the reward (signal). This project's (the paper gives no
    values): eta, m, sigma_of, c0 of the belief anchor, the update of the paper's equations. See class HADW."""
    enabled: bool = False
    anchor: str = "moving_average"  # "moving_average" (official code) | "belief" (paper's equations)
    k: int = 10                     # window of the moving-average anchor (official code: 10)
    lambda_scale: float = 1.5       # the official code's value; 1.3-1.5 best in the paper's sweep
    eta: float = 5.0                # belief anchor: eta_t = clamp(eta * sigma_t, 0, 1)
    m: int = 8                      # belief anchor: window of the volatility sigma_t
    sigma_of: str = "accuracies"    # belief anchor: "accuracies" | "beliefs" (paper's text; see HADW)
    c0: Optional[float] = None      # belief anchor: prior C_0; None = the first batch's accuracy
    signal: str = "reward"          # the units of p_hat and y_t, the same for both: "reward" (official code:
                                    # the reward, DAPO's overlong shaping included) | "verdicts" (k / G and
                                    # correct / sampled: the paper's accuracy). Equal without shaping.


@dataclass
class BlindHardConfig:
    """The positive control's handicap. See class BlindHard."""
    mu: float = 0.25                # groups with pass rate k / G <= mu get no gradient (1/4: the hardest quarter)


@dataclass
class SchemeConfig:
    """What every scheme shares, and each scheme's own settings under its name (scheme.daro.lr=0.05)."""
    name: str = "grpo"              # grpo | drgrpo | dapo | lipo | daro | blind_hard (see SCHEMES)
    std: str = "unbiased"           # "unbiased" | "population": the std of GRPO/DAPO/LIPO
    eps: float = 1e-6               # A = (r - mean) / (std + eps)
    correct_threshold: float = 0.5  # without the verifier's verdicts, reward > this counts as correct
    daro: DAROConfig = field(default_factory=DAROConfig)
    blind_hard: BlindHardConfig = field(default_factory=BlindHardConfig)
    hadw: HADWConfig = field(default_factory=HADWConfig)


def _std(x, kind, dim=-1):
    if kind not in ("unbiased", "population"):
        raise ValueError(f"scheme.std must be 'unbiased' or 'population', got {kind!r}")
    return x.std(dim=dim, keepdim=dim is not None, correction=1 if kind == "unbiased" else 0)


def pass_counts(correct):
    """k = number of correct responses of each prompt [P] (long); mu = k / G is its pass rate."""
    return correct.sum(dim=1)


def per_bucket(k, values, G):
    """Sums of per-prompt `values` [P] by correct count k [P]: a [G + 1] float64 vector indexed by k."""
    return torch.zeros(G + 1, dtype=torch.float64).index_add_(0, k, values.double())


@dataclass
class StepStats:
    """One training step's loss statistics per response, over the whole global batch in its order, [P, G]
    float64: sums over each response's tokens and over the step's ppo_epochs passes (loss.policy_loss's
    per-response stats added up by the trainer; a response the step left out has zeros)."""
    surrogate: torch.Tensor      # sum of -min(r A, clip(r) A) over tokens, W not applied
    abs_surrogate: torch.Tensor  # sum of its magnitude
    W: torch.Tensor              # the W_i each response was trained with
    epochs: int                  # passes over the batch (ppo_epochs)
    optimizer_steps: int         # epochs x mini-batches


class Scheme:
    """What every scheme shares: the constructor, input checks, the per-difficulty diagnostics of every
    step (DARO's Fig. 2, logged for every scheme), and empty state. A scheme overrides `advantages` and
    `weights`; one with state of its own (DARO) also `update` (calling this one), `metrics` and the
    state_dict pair. The trainer calls begin_step, then advantages and weights, then update, once a step."""

    # Whether W_i normalises by a token count shared across responses (1 / tokens of the batch: DAPO, LIPO; of
    # a bucket: DARO) rather than per response (GRPO's 1 / (|o_i| G P)) or by a constant (Dr.GRPO's): with
    # GSPO's sequence ratio (loss.ratio "sequence") such a W weighs tokens, and config.check_config warns.
    per_token_weights = False

    def __init__(self, cfg: SchemeConfig, *, G: int, max_len: int):
        self.cfg, self.G, self.max_len = cfg, G, max_len
        self.k = self.bucket_tokens = None  # the step's correct counts [P] and response tokens per bucket
        self.diagnostics = {}

    def __call__(self, rewards, lengths, correct=None):
        """A and W for a batch that is also one optimizer step."""
        self.begin_step(rewards, lengths, correct)
        return self.advantages(rewards), self.weights(rewards, lengths, correct)

    def begin_step(self, rewards, lengths, correct=None, accuracy=None, reward_mean=None):
        """Called once per training step, before `advantages`, with the step's whole batch [P, G], and over
        all responses sampled this step before any filtering: `accuracy` (correct / sampled) and
        `reward_mean` (their mean reward, shaping included), HA-DW's y_t in its two units.
        Keeps each prompt's correct count k and the response tokens of each bucket k for `update`."""
        self.k = pass_counts(self.correct(rewards, correct))
        self.bucket_tokens = per_bucket(self.k, lengths.double().sum(1), self.G)

    def correct(self, rewards, correct=None):
        """The verifier's verdicts [P, G] (bool) when given, else reward > correct_threshold. Shaped
        rewards (DAPO's overlong penalty) make the fallback wrong: the trainer always passes them."""
        return (rewards > self.cfg.correct_threshold) if correct is None else correct.bool()

    def update(self, stats: StepStats):
        """Called once per training step, after the policy's update, with its per-response statistics.
        Records per bucket k = 1..G-1: L_mu, the mean surrogate per token (signed; over every response token
        of the bucket, trained or left out, averaged over epochs), and the bucket's loss scale, sum W |surrogate|
        per optimiser step."""
        if self.k is None:
            raise ValueError("Scheme.update needs begin_step(...) with the step's batch first")
        tokens = self.bucket_tokens
        loss = per_bucket(self.k, stats.surrogate.sum(1), self.G) / stats.epochs
        scale = per_bucket(self.k, (stats.W * stats.abs_surrogate).sum(1), self.G) / stats.optimizer_steps
        self.diagnostics = {}
        for k in range(1, self.G):
            if tokens[k] > 0:
                self.diagnostics[f"bucket_loss/{k}"] = float(loss[k] / tokens[k])
                self.diagnostics[f"bucket_scale/{k}"] = float(scale[k])

    def metrics(self) -> dict:
        """Numbers to log after each step: the per-bucket diagnostics (and e.g. DARO's weights)."""
        return dict(self.diagnostics)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def _group_std_advantage(self, rewards):
        r = _check(rewards).double()
        return ((r - r.mean(1, keepdim=True)) / (_std(r, self.cfg.std) + self.cfg.eps)).float()


def _check(rewards, lengths=None):
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [P, G] with G >= 2, got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    if lengths is not None and lengths.shape != rewards.shape:
        raise ValueError(f"lengths {tuple(lengths.shape)} and rewards {tuple(rewards.shape)} differ in shape")
    return rewards


class GRPO(Scheme):
    """GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    A_i = (r_i - mean(r)) / (std(r) + eps)         std over the G responses of the prompt
    W_i = 1 / (|o_i| * G * P)                       "seq-mean-token-mean" aggregation
    Effective curve: w(mu) ~ sqrt(mu (1 - mu)) on per-response token means.
    """

    def advantages(self, rewards):
        return self._group_std_advantage(rewards)

    def weights(self, rewards, lengths, correct=None):
        _check(rewards, lengths)
        P, G = rewards.shape
        return 1.0 / (lengths.double().clamp(min=1) * G * P).float()


class DrGRPO(Scheme):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    A_i = r_i - mean(r)                             no std normalisation
    W_i = 1 / (L_max * G * P)                       token sum over a constant: the max generation length
    Effective curve: w(mu) ~ mu (1 - mu) on per-response token sums.
    """

    def advantages(self, rewards):
        r = _check(rewards).double()
        return (r - r.mean(1, keepdim=True)).float()

    def weights(self, rewards, lengths, correct=None):
        _check(rewards, lengths)
        if self.max_len <= 0:
            raise ValueError("Dr.GRPO needs max_len (the maximum generation length) > 0")
        P, G = rewards.shape
        return torch.full(rewards.shape, 1.0 / (self.max_len * G * P))


class DAPO(Scheme):
    """DAPO (Yu et al. 2025, arXiv 2503.14476). Clip-higher (0.2 / 0.28) lives in the loss config;
    dynamic sampling and the soft overlong punishment live in train.py.

    A_i = (r_i - mean(r)) / (std(r) + eps)
    W_i = 1 / sum_j |o_j|                           token-level mean over the whole batch
    Effective curve: w(mu) ~ sqrt(mu (1 - mu)) on token sums.
    """
    per_token_weights = True

    def advantages(self, rewards):
        return self._group_std_advantage(rewards)

    def weights(self, rewards, lengths, correct=None):
        _check(rewards, lengths)
        return torch.full(rewards.shape, 1.0 / max(float(lengths.sum()), 1.0))


class LIPO(DAPO):
    """Lite PPO (Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
    arXiv 2508.08221): group-level mean, batch-level std, token-level aggregation.

    A_i = (r_i - mean_group(r)) / (std_batch(r) + eps)
    W_i = 1 / sum_j |o_j|
    Effective curve: w(mu) ~ mu (1 - mu) / sigma_batch on token sums.
    """

    def advantages(self, rewards):
        r = _check(rewards).double()
        return ((r - r.mean(1, keepdim=True)) / (_std(r.flatten(), self.cfg.std, dim=None) + self.cfg.eps)).float()


class BlindHard(GRPO):
    """A positive control, not a method: GRPO blind to the hardest difficulty buckets.

    A_i = GRPO's
    W_i = GRPO's 1 / (|o_i| G P) where the prompt's pass rate k / G > mu;  0 where k / G <= mu
    (k counts the verifier's verdicts, as DARO's buckets do; mu = scheme.blind_hard.mu, 1/4 by default: the
    hardest quarter.)

    The handicap is known and large where hard prompts are common: on a prompt with pass rate mu a correct
    answer carries GRPO's largest advantage, about sqrt((1 - mu) / mu) (2.6 at mu = 1/8), and this scheme drops
    those groups whole, so hard prompts learn only from what transfers from easier ones: accuracy on the hard
    levels should lag GRPO's. mu grades the handicap (1/8 at G = 8 drops only k = 1), so a sweep can
    measure its power between "no gradient from hard prompts" and GRPO. (A constant factor on the loss would be
    no control: AdamW and gradient clipping undo it.) A sweep that cannot separate this scheme from GRPO cannot
    separate the real schemes either. `python -m scripts.scheme_diagnostics` prints the share of GRPO's
    signal it drops on batches like a run's.
    """

    def weights(self, rewards, lengths, correct=None):
        G, mu = rewards.shape[1], self.cfg.blind_hard.mu
        if not 1 / G <= mu < 1:
            raise ValueError(f"blind_hard needs 1 / G <= scheme.blind_hard.mu < 1 to drop a bucket but not all, "
                             f"got mu={mu} at G={G}")
        seen = pass_counts(self.correct(rewards, correct)) > math.floor(mu * G + 1e-9)
        return super().weights(rewards, lengths, correct) * seen[:, None]


class DARO(Scheme):
    """DARO (Zhou, Ma et al. 2025, "Difficulty-Aware Reweighting Policy Optimization", arXiv 2510.09001).

    L_DARO(theta, w) = sum_{mu in {1/G..(G-1)/G}} [ w_mu * L_mu(theta) - ln w_mu ]
    A_i = r_i - mean(r)                             centred reward; a static per-mu factor is absorbed by w
    W_i = w_mu(i) * Omega_mu(i),  Omega_mu = 1 / (response tokens in bucket mu)   (0 for mu = 0 or 1)

    mu = k / G counts the verifier's verdicts (not shaped rewards). The paper leaves the rest open;
    here (config DAROConfig, defaults first):
    - w_mu = exp(s_mu), one scalar per bucket k = 1..G-1, updated once per step from the detached
      bucket loss L_mu = (sum of the bucket's per-token surrogate losses) / (its tokens), which
      loss.policy_loss returns. At the optimum of the w-term, w_mu = 1 / L_mu.
    - loss_scale picks the L_mu that drives w. The surrogate can be zero or negative, where 1 / L_mu
      means nothing, and on-policy (ratio 1) a bucket's mean surrogate is -sum_i |o_i| A_i / tokens,
      which is 0 whenever its responses have equal lengths (A is centred): |L_mu| then drives every
      w to w_max (seen on the tiny task, one-token answers), so the weights learn nothing.
      "token_abs" (default) uses the bucket's mean per-token magnitude |surrogate|, so that every bucket
      contributes on the same scale, the paper's stated aim. "abs" uses |L_mu|. "signed" uses L_mu as
      written; where L_mu <= 0 the term w L_mu - ln w has no minimum (it falls without bound as w grows,
      so any step there only walks w to w_max), and the rule is to hold: that step leaves w_mu as it is,
      as for a bucket absent from the batch.
      On-policy fixed points (ratio 1, binary rewards; Lc, Li the mean lengths of the bucket's correct and
      incorrect responses; exact per bucket, since its correct answers share A = 1 - mu, its wrong ones -mu):
        token_abs  L_mu = mu (1 - mu) (Lc + Li) / (mu Lc + (1 - mu) Li),
                   w_mu -> (mu Lc + (1 - mu) Li) / (mu (1 - mu) (Lc + Li)),  1 / (2 mu (1 - mu)) when Lc = Li
        signed     L_mu = mu (1 - mu) (Li - Lc) / (mu Lc + (1 - mu) Li),  w_mu -> 1 / L_mu where Li > Lc
                   (wrong answers longer); held at its last value where Li <= Lc
      Read this way DARO converges to a fixed re-weighting, moved only by lengths and off-policy drift:
      update "static" is 1 / (2 mu (1 - mu)) from step 1, the control that tells whether learning w helps.
      With HA-DW on top, A already holds Phi, so token_abs drives w_mu to 1 / mean |Phi A| of the bucket:
      DARO then undoes HA-DW's average scale per bucket and keeps only its within-bucket reweighting.
    - update "sgd": s_mu <- s_mu - lr * (w_mu * L_mu - 1), the gradient of the objective in s;
      "adam": Adam (lr, default betas) on s_mu with that gradient; "ema": w_mu <- (1 - lr) w_mu +
      lr / (L_mu + eps), the closed form smoothed over steps; "static": no update.
    - w is clamped to [w_min, w_max]; a bucket absent from the batch keeps its weight.
    - omega: Omega_mu counts bucket tokens in the mini-batch (default), in the whole step ("step"), or
      is 1 / (|o_i| * responses of bucket mu in the mini-batch) ("response": a token mean per response,
      then a mean over the bucket). Per mini-batch, a prompt's weight is proportional to 1 / (prompts
      sharing its mu): a prompt alone at its mu outweighs each of five sharing another by 5x.
    - normalize: w is divided by its mean over the buckets present in the mini-batch, so that the
      weights move the balance between difficulties but not the overall loss scale.
    """
    per_token_weights = True  # Omega_mu: 1 / (tokens of the bucket), by default

    def __init__(self, cfg: SchemeConfig, *, G: int, max_len: int):
        super().__init__(cfg, G=G, max_len=max_len)
        d = cfg.daro
        for key, value, options in [("loss_scale", d.loss_scale, ("token_abs", "abs", "signed")),
                                    ("update", d.update, ("sgd", "adam", "ema", "static")),
                                    ("omega", d.omega, ("mini_batch", "step", "response"))]:
            if value not in options:
                raise ValueError(f"scheme.daro.{key} must be one of {'|'.join(options)}, got {value!r}")
        if not 0 < d.w_min <= d.w_init <= d.w_max:
            raise ValueError("scheme.daro needs 0 < w_min <= w_init <= w_max")
        mu = torch.arange(G + 1, dtype=torch.float64) / G
        if d.update == "static":
            self.w = 1.0 / (2 * mu * (1 - mu))                                   # index k = correct count
        else:
            self.w = torch.full((G + 1,), float(d.w_init), dtype=torch.float64)
        self.w[0] = self.w[G] = 0.0  # mu = 0 and mu = 1 carry no signal
        self.log_w = torch.nn.Parameter(self.w.clamp(min=1e-300).log())     # the "adam" update's variable
        self.adam = torch.optim.Adam([self.log_w], lr=d.lr) if d.update == "adam" else None

    def advantages(self, rewards):
        r = _check(rewards).double()
        return (r - r.mean(1, keepdim=True)).float()

    def weights(self, rewards, lengths, correct=None):
        _check(rewards, lengths)
        if rewards.shape[1] != self.G:
            raise ValueError(f"DARO was built for G={self.G}, got rewards with G={rewards.shape[1]}")
        d, k = self.cfg.daro, pass_counts(self.correct(rewards, correct))
        tokens = per_bucket(k, lengths.double().sum(1), self.G)
        w = self.w
        if d.normalize:
            present = (tokens > 0) & (w > 0)
            w = w / w[present].mean() if present.any() else w
        if d.omega == "response":
            responses = per_bucket(k, torch.ones(len(k)), self.G)
            per_response = (w / (responses * self.G).clamp(min=1.0))[k][:, None]
            return (per_response / lengths.double().clamp(min=1.0)).float()
        if d.omega == "step":
            if self.bucket_tokens is None:
                raise ValueError("scheme.daro.omega 'step' needs begin_step(...) with the step's batch first")
            tokens = self.bucket_tokens
        return (w / tokens.clamp(min=1.0))[k][:, None].expand_as(rewards).float().clone()

    def update(self, stats: StepStats):
        """One step of w from the step's per-response statistics, grouped here by bucket k (correct count):
        L_mu = (the bucket's surrogate sum, or its magnitude's for "token_abs", per epoch) / (its response
        tokens, trained or left out). Buckets absent from the step, and for "signed" those with L_mu <= 0, keep w."""
        super().update(stats)
        d = self.cfg.daro
        if d.update == "static":
            return
        present = self.bucket_tokens > 0
        present[0] = present[self.G] = False
        surrogate = stats.abs_surrogate if d.loss_scale == "token_abs" else stats.surrogate
        L = per_bucket(self.k, surrogate.sum(1), self.G) / stats.epochs / self.bucket_tokens.clamp(min=1.0)
        if d.loss_scale == "abs":
            L = L.abs()
        if d.loss_scale == "signed":
            present &= L > 0  # hold: w L - ln w has no minimum where L <= 0
        if d.update == "sgd":
            new = (self.w.clamp(min=1e-300).log() - d.lr * (self.w * L - 1.0)).exp()
        elif d.update == "adam":  # d/ds of sum over present buckets of [exp(s) L - s]
            self.log_w.grad = torch.where(present, self.w * L - 1.0, 0.0)
            self.adam.step()
            new = self.log_w.detach().exp()
        else:
            new = (1 - d.lr) * self.w + d.lr / (L.clamp(min=0.0) + d.eps)
        self.w = torch.where(present, new.clamp(d.w_min, d.w_max), self.w)
        with torch.no_grad():
            self.log_w.copy_(self.w.clamp(min=1e-300).log())

    def metrics(self):
        return {**super().metrics(), **{f"daro_w/{k}": float(self.w[k]) for k in range(1, self.G)}}

    def state_dict(self):
        return {"w": self.w.clone(), "adam": self.adam.state_dict() if self.adam else None}

    def load_state_dict(self, state):
        self.w = state["w"].clone().double()
        with torch.no_grad():
            self.log_w.copy_(self.w.clamp(min=1e-300).log())
        if self.adam and state.get("adam"):
            self.adam.load_state_dict(state["adam"])


class HADW(Scheme):
    """HA-DW (Yang et al. 2026, "Your Group-Relative Advantage Is Biased", arXiv 2601.08521):
    history-aware reweighting of another scheme's advantage (GRPO, DAPO, ...), once per batch.
    W_i, the update and the state of the base scheme pass through unchanged.

    y_t = the step's mean over every response sampled, before any filtering (the trainer passes both units to
          begin_step; without them, the mean over the batch given), and
    p_hat = the prompt's group mean, both in the units `signal` names:
          "reward" (default): of the reward, DAPO's overlong shaping included. The official code computes both
             from the reward manager's output (verl's token_level_rewards: p_hat the group's mean score, y_t
             the batch's mean score), so this is what produced the paper's numbers;
          "verdicts": of the verifier's verdicts, p_hat = k / G and y_t = correct / sampled (the paper's
             "accuracy"). The two agree for 0/1 rewards; with shaping, "verdicts" measures difficulty
             unmoved by length, while "reward" counts an overlong correct answer as a partial failure.
    belief anchor:  C_t^+ = (1 - eta_t) C_t^- + eta_t y_t,  C_{t+1}^- = C_t^+,  eta_t = clamp(eta sigma_t, 0, 1)
                    anchor = C_t^- (the PRIOR belief); C_1^- = c0, or y_1 when c0 is None.
    moving_average anchor (official code; the paper's App. F "hard" variant): anchor = mean of the
                    last k y_t, the current one included.
    diff_his = p_hat - anchor
    D_i = -sgn(A_i) sgn(diff_his),  M = |diff_his|,  Phi_i = lambda_scale * exp(D_i M),  A_i <- Phi_i A_i

    sigma_t: the paper's text takes the population std of the last m beliefs. Read literally, the
    belief never moves: its history starts constant (C_0), so sigma = 0, eta_t = 0 and C stays C_0
    forever. The default `sigma_of: accuracies` takes the std of the last m y_t
    (y_t included) instead; `sigma_of: beliefs` is the literal rule (the last m posteriors and C_0).
    """

    def __init__(self, base: Scheme, cfg: HADWConfig):
        super().__init__(base.cfg, G=base.G, max_len=base.max_len)
        if (cfg.anchor not in ("belief", "moving_average") or cfg.sigma_of not in ("accuracies", "beliefs")
                or cfg.signal not in ("reward", "verdicts")):
            raise ValueError(f"scheme.hadw: anchor must be belief|moving_average, sigma_of accuracies|beliefs and "
                             f"signal reward|verdicts, got {cfg.anchor!r}, {cfg.sigma_of!r}, {cfg.signal!r}")
        self.base, self.hadw = base, cfg
        self.per_token_weights = base.per_token_weights  # W_i is the base scheme's
        self.belief = None        # C_t^- for the next batch
        self.beliefs = []         # history of beliefs (C_0, C_1^+, ...)
        self.accuracies = []      # history of y_t (batch accuracies, or mean rewards: `signal`)
        self.last = {}            # what the last call used, for logging
        self.step_y = self.step_correct = None  # y_t and the verdicts of the current step, from begin_step

    def begin_step(self, rewards, lengths, correct=None, accuracy=None, reward_mean=None):
        self.step_y = reward_mean if self.hadw.signal == "reward" else accuracy
        self.step_correct = correct
        self.base.begin_step(rewards, lengths, correct, accuracy, reward_mean)  # the base keeps the step's buckets

    def advantages(self, rewards):
        return self.reweight(rewards, self.base.advantages(rewards))

    def weights(self, rewards, lengths, correct=None):
        return self.base.weights(rewards, lengths, correct)

    def update(self, stats):
        self.base.update(stats)

    def metrics(self):
        return {**self.base.metrics(), **self.last}

    def reweight(self, rewards, A):
        """Return Phi * A and advance the history by one batch."""
        c = self.hadw
        r = _check(rewards).double()
        if self.step_correct is not None and self.step_correct.shape != r.shape:
            raise ValueError(f"HA-DW: rewards {tuple(r.shape)} are not the batch of begin_step "
                             f"{tuple(self.step_correct.shape)}")
        units = self.correct(r, self.step_correct).double() if c.signal == "verdicts" else r
        y = float(units.mean()) if self.step_y is None else float(self.step_y)
        self.step_y = self.step_correct = None
        self.accuracies.append(y)
        if self.belief is None:
            self.belief = y if c.c0 is None else float(c.c0)
            self.beliefs.append(self.belief)
        if c.anchor == "belief":
            anchor = self.belief
            window = self.accuracies[-c.m:] if c.sigma_of == "accuracies" else self.beliefs[-c.m:]
            sigma = float(torch.tensor(window, dtype=torch.float64).std(correction=0)) if len(window) > 1 else 0.0
            eta_t = min(max(c.eta * sigma, 0.0), 1.0)
            self.belief = (1 - eta_t) * self.belief + eta_t * y
            self.beliefs.append(self.belief)
        else:
            anchor = sum(self.accuracies[-c.k:]) / len(self.accuracies[-c.k:])
            eta_t = None
        diff = units.mean(1, keepdim=True) - anchor
        phi = c.lambda_scale * torch.exp(-torch.sign(A.double()) * torch.sign(diff) * diff.abs())
        self.last = {"hadw_anchor": anchor, "hadw_belief": self.belief, "hadw_eta": eta_t, "hadw_batch_acc": y}
        return (phi * A.double()).float()

    def state_dict(self):
        return {"base": self.base.state_dict(), "belief": self.belief, "beliefs": list(self.beliefs),
                "accuracies": list(self.accuracies)}

    def load_state_dict(self, state):
        self.base.load_state_dict(state["base"])
        self.belief, self.beliefs, self.accuracies = state["belief"], list(state["beliefs"]), list(state["accuracies"])


def hadw_bias_probability(G, p, eps=0.0):
    """HA-DW Theorem 2: P(A - A_hat > eps | 1 <= k <= G-1) for binary rewards with success rate p,
    where A_hat = k / G is the group's empirical pass rate (float64)."""
    norm = 1.0 - (1.0 - p) ** G - p ** G
    k0 = math.floor(G * (p + eps)) + 1
    return sum(math.comb(G, k) * p ** k * (1 - p) ** (G - k) for k in range(k0, G)) / norm


SCHEMES = {"grpo": GRPO, "drgrpo": DrGRPO, "dapo": DAPO, "lipo": LIPO, "daro": DARO,
           "blind_hard": BlindHard}  # a positive control for sweeps, not a method


def make_scheme(cfg: SchemeConfig, *, G: int, max_len: int) -> Scheme:
    """The scheme named by cfg.name, with HA-DW on top when cfg.hadw.enabled."""
    if cfg.name not in SCHEMES:
        raise ValueError(f"unknown scheme.name {cfg.name!r}; choose one of {sorted(SCHEMES)}")
    scheme = SCHEMES[cfg.name](cfg, G=G, max_len=max_len)
    return HADW(scheme, cfg.hadw) if cfg.hadw.enabled else scheme


def effective_curve(scheme, G, length=16):
    """w(mu) for binary rewards, measured by running the scheme itself on one batch that holds one
    prompt for each k = 1..G-1 correct, all responses `length` tokens long.

    For binary rewards a prompt's contribution is sum_i W_i A_i S_i (S_i = response i's token sum of
    the base loss). With centred A and equal W inside the group, that is
    w(mu) * [mean_correct S - mean_incorrect S] with w(mu) = k * W_correct * A_correct, which is
    what is returned (per token sum; multiply by `length` for per-token-mean units).
    """
    k = torch.arange(1, G)
    rewards = (torch.arange(G)[None, :] < k[:, None]).float()     # row k-1: k correct of G
    lengths = torch.full_like(rewards, float(length))
    A, W = scheme(rewards, lengths)
    correct = rewards > 0.5
    return k.double() / G, ((W * A).double() * correct).sum(1)


def _main():
    ap = argparse.ArgumentParser(description="Print (and plot) every scheme's effective difficulty curve w(mu).")
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--plot", metavar="FILE.png", help="also draw the curves (needs matplotlib)")
    args = ap.parse_args()
    curves = {}
    configs = {name: SchemeConfig(name=name) for name in SCHEMES}
    configs["daro_fixed"] = SchemeConfig(name="daro", daro=DAROConfig(update="static"))
    for name, cfg in configs.items():
        mu, w = effective_curve(make_scheme(cfg, G=args.G, max_len=16), args.G)
        curves[name] = w / w.max()
    print(f"effective difficulty weight w(mu), G = {args.G}, binary rewards, equal lengths, each curve / its max")
    print("daro: at its initial weights w_mu = 1. daro_fixed: at the on-policy fixed point of the default\n"
          "update (loss_scale token_abs), w_mu = 1 / (2 mu (1 - mu)): every difficulty weighs the same")
    print("   mu  " + "".join(f"{n:>11}" for n in curves))
    for j, m in enumerate(mu.tolist()):
        print(f"{m:5.3f}  " + "".join(f"{float(c[j]):11.3f}" for c in curves.values()))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, c in curves.items():
            ax.plot(mu.numpy(), c.numpy(), marker="o", label=name)
        ax.set(xlabel="pass rate mu", ylabel="w(mu) / max", title=f"effective difficulty weight (G={args.G})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    _main()
