"""How different the weighting schemes are on batches like a run's, before paying for the runs.

    python -m scripts.scheme_diagnostics --G 8 --P 64 --levels 0.05 0.2 0.4 0.6 0.8 \\
        --len-correct 60 --len-incorrect 90 --len-sd 0.4 --max-len 160

A batch: each prompt's pass rate drawn from --levels (or --beta A B), G verdicts from it, each response's
length drawn by its verdict (lognormal with mean --len-correct or --len-incorrect and relative spread
--len-sd); a response that reaches --max-len is truncated and scored wrong, as a cut-off answer is.
Every scheme runs through weights.py itself, on the same batches in the same order, one step per batch:
begin_step, advantages and weights on the whole batch (one mini-batch), then update with the statistics
of an on-policy pass (ratio 1: response i's surrogate sum is -|o_i| A_i). So HA-DW's anchor follows the
batches, and the learned DARO variants first learn for --warmup batches (their on-policy fixed point)
before --batches batches are measured. Per scheme, averaged over the measured batches:

- cos tok: the cosine of the per-token coefficients c = W_i A_i (one entry per response token) with
  GRPO's: the update's direction if every token's gradient were orthogonal to every other token's;
- cos resp: the same over the per-response sums |o_i| W_i A_i: the direction if all tokens of a response
  shared one gradient. A real model sits between the two. With AdamW and gradient clipping only the
  direction matters, and cosines ignore scale;
- k=1 .. k=G-1: bucket k's share of sum over tokens of |c| (a gradient-norm proxy), k correct of G.

A constant clip ratio of 1 means clipping, DAPO's clip-higher and GSPO's sequence ratio never act here:
gspo is grpo on these numbers, and the dapo row has no overlong shaping.
"""
import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from weights import SCHEMES, DAROConfig, HADWConfig, SchemeConfig, StepStats, make_scheme, pass_counts  # noqa: E402

# the rows: every scheme of weights.py, and the variants the comparison runs
VARIANTS = {name: SchemeConfig(name=name) for name in SCHEMES}
VARIANTS.update({
    "daro_signed": SchemeConfig(name="daro", daro=DAROConfig(loss_scale="signed")),
    "daro_static": SchemeConfig(name="daro", daro=DAROConfig(update="static")),
    "grpo_hadw": SchemeConfig(name="grpo", hadw=HADWConfig(enabled=True)),
    "dapo_hadw": SchemeConfig(name="dapo", hadw=HADWConfig(enabled=True)),
})


@dataclass
class Batch:
    rewards: torch.Tensor   # [P, G] float32, 1 for a correct verdict
    lengths: torch.Tensor   # [P, G] float32 response tokens
    correct: torch.Tensor   # [P, G] bool


def sample_batch(gen, args) -> Batch:
    """One batch as the module docstring describes (float64 draws, float32 out)."""
    if args.beta:
        mu = torch.distributions.Beta(*args.beta).sample((args.P, 1))  # global RNG: seeded in main
    else:
        levels = torch.tensor(args.levels, dtype=torch.float64)
        mu = levels[torch.randint(len(levels), (args.P, 1), generator=gen)]
    correct = torch.rand(args.P, args.G, generator=gen, dtype=torch.float64) < mu
    mean = torch.where(correct, float(args.len_correct), float(args.len_incorrect))
    sigma = math.sqrt(math.log1p(args.len_sd ** 2))  # lognormal with mean `mean` and std len_sd * mean
    noise = torch.randn(args.P, args.G, generator=gen, dtype=torch.float64)
    lengths = (mean * torch.exp(sigma * noise - sigma ** 2 / 2)).round().clamp(1, args.max_len)
    correct &= lengths < args.max_len  # truncated: no final answer
    return Batch(rewards=correct.float(), lengths=lengths.float(), correct=correct)


def step(scheme, batch: Batch):
    """One training step's worth of the scheme on `batch`: (A, W) [P, G] float64; the state advances."""
    scheme.begin_step(batch.rewards, batch.lengths, batch.correct, accuracy=float(batch.correct.double().mean()),
                      reward_mean=float(batch.rewards.double().mean()))
    A = scheme.advantages(batch.rewards).double()
    W = scheme.weights(batch.rewards, batch.lengths, batch.correct).double()
    L = batch.lengths.double()
    scheme.update(StepStats(surrogate=-L * A, abs_surrogate=L * A.abs(), W=W, epochs=1, optimizer_steps=1))
    return A, W


def cosines(c, ref, lengths):
    """(cos tok, cos resp) of the per-response coefficients c and ref [P, G] with response lengths:
    c repeated over each response's tokens, and |o_i| c summed per response (float64)."""
    L = lengths.double()

    def cos(x, y, weight):
        return float((weight * x * y).sum() / ((weight * x * x).sum() * (weight * y * y).sum()).sqrt())
    return cos(c, ref, L), cos(L * c, L * ref, torch.ones_like(L))


def bucket_shares(c, lengths, correct, G):
    """Share of sum_t |c_t| held by each bucket k = 0..G (k correct of G) [G + 1] float64."""
    k = pass_counts(correct)
    mass = (lengths.double() * c.abs()).sum(1)
    per = torch.zeros(G + 1, dtype=torch.float64).index_add_(0, k, mass)
    return per / per.sum().clamp(min=1e-300)


def diagnose(variants, warmup, measured, *, G, max_len):
    """{name: {"cos_token", "cos_response", "share" [G + 1]}}, means over the measured batches; every
    scheme sees the warm-up batches first (stateful ones learn on them). GRPO is the reference."""
    schemes = {name: make_scheme(cfg, G=G, max_len=max_len)
               for name, cfg in {"grpo": SchemeConfig(name="grpo"), **variants}.items()}
    for batch in warmup:
        for scheme in schemes.values():
            step(scheme, batch)
    out = {name: {"cos_token": 0.0, "cos_response": 0.0, "share": torch.zeros(G + 1, dtype=torch.float64)}
           for name in schemes}
    for batch in measured:
        coefficient = {}
        for name, scheme in schemes.items():
            A, W = step(scheme, batch)
            coefficient[name] = W * A
        for name, c in coefficient.items():
            tok, resp = cosines(c, coefficient["grpo"], batch.lengths)
            out[name]["cos_token"] += tok / len(measured)
            out[name]["cos_response"] += resp / len(measured)
            out[name]["share"] += bucket_shares(c, batch.lengths, batch.correct, G) / len(measured)
    return out


def describe(batches, G):
    """One paragraph on what the batches hold: accuracy, groups per k, lengths, truncation."""
    correct = torch.cat([b.correct for b in batches])
    lengths = torch.cat([b.lengths for b in batches])
    k = pass_counts(correct)
    groups = torch.bincount(k, minlength=G + 1).double() / len(k)
    return (f"accuracy {float(correct.double().mean()):.3f}; groups by correct count k = 0..{G}: "
            + " ".join(f"{float(g):.2f}" for g in groups)
            + f"\nmean length correct {float(lengths[correct].mean()):.1f}, "
            f"incorrect {float(lengths[~correct].mean()):.1f}")


def format_table(result, G):
    head = f"{'scheme':<12} {'cos tok':>7} {'cos resp':>8}  " + " ".join(f"{f'k={k}':>6}" for k in range(1, G))
    lines = [head, "-" * len(head)]
    for name, r in result.items():
        lines.append(f"{name:<12} {r['cos_token']:7.3f} {r['cos_response']:8.3f}  "
                     + " ".join(f"{float(s):6.3f}" for s in r["share"][1:G]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--P", type=int, default=64, help="prompts per batch")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.05, 0.2, 0.4, 0.6, 0.8],
                    help="pass rates, one drawn per prompt")
    ap.add_argument("--beta", type=float, nargs=2, metavar=("A", "B"), help="pass rates ~ Beta(A, B) instead")
    ap.add_argument("--len-correct", type=float, default=60.0)
    ap.add_argument("--len-incorrect", type=float, default=90.0)
    ap.add_argument("--len-sd", type=float, default=0.4, help="std of a length as a fraction of its mean")
    ap.add_argument("--max-len", type=int, default=160, help="rollout.max_tokens: longer responses are cut")
    ap.add_argument("--warmup", type=int, default=100, help="batches the stateful schemes learn on first")
    ap.add_argument("--batches", type=int, default=20, help="batches measured")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.G < 4:
        raise SystemExit("scheme_diagnostics: --G must be >= 4 (blind_hard's buckets)")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    batches = [sample_batch(gen, args) for _ in range(args.warmup + args.batches)]
    result = diagnose(VARIANTS, batches[:args.warmup], batches[args.warmup:], G=args.G, max_len=args.max_len)
    print(describe(batches[args.warmup:], args.G))
    print(f"\nper scheme, means over {args.batches} batches of {args.P} x {args.G} (after {args.warmup} warm-up "
          f"batches): cosine with GRPO's per-token / per-response coefficients; share of sum |W A| per bucket k")
    print(format_table(result, args.G))
    return result


if __name__ == "__main__":
    main()
