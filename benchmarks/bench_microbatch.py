"""Padding share of the micro-batches at the reference setting, before and after token-budget packing.

    python benchmarks/bench_microbatch.py [--seeds 5]

256 prompts x 8 responses on 8 ranks in 16 mini-batches (configs/*.yaml), so a rank's mini-batch holds
16 responses. Lengths are drawn the way RL math runs produce them: prompts 40-400 tokens (MATH-like,
log-uniform), responses log-normal (median 700 tokens, sigma 0.9, heavy right tail), cut at max_tokens
3072 where the truncation spike collects everything longer (about 8% here). A micro-batch computes
rows x its widest row; "real" counts the tokens that are not padding.

  runs of 8       micro_batch_size 8, one response per row, in the order responses come (the code before)
  packed          policy.pack_micro_batches with micro_batch_tokens 32,768 (= 8 x 4,096, so a pass never
                  computes more than 8 full-length rows could): responses packed into rows as wide as the
                  mini-batch's longest, first fit longest first, position ids restarting at each
Planning only: no model runs, so the figure is exact for these lengths and independent of the machine.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from policy import pack_micro_batches  # noqa: E402


def draw_lengths(rng, n_prompts, G, max_tokens):
    prompts = np.exp(rng.uniform(np.log(40), np.log(400), n_prompts)).astype(int)
    responses = np.minimum(rng.lognormal(np.log(700), 0.9, (n_prompts, G)).astype(int) + 1, max_tokens)
    return (prompts[:, None] + responses).reshape(-1), float((responses == max_tokens).mean())


def padding(seq_lens, mini_batches, G, max_rows, max_tokens):
    """real and computed tokens over every mini-batch of one rank's share."""
    real = computed = 0
    groups_per_mini = len(seq_lens) // G // mini_batches
    for j in range(mini_batches):
        index = list(range(j * groups_per_mini * G, (j + 1) * groups_per_mini * G))
        for rows in pack_micro_batches(index, seq_lens, max_rows, max_tokens):
            real += sum(seq_lens[i] for row in rows for i in row)
            computed += len(rows) * max(sum(seq_lens[i] for i in row) for row in rows)
    return real, computed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--prompts-per-rank", type=int, default=32)
    ap.add_argument("--mini-batches", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=3072)
    args = ap.parse_args()
    G = 8
    rows = {"runs of 8": (8, 0), "packed": (64, 8 * 4096)}
    totals = {name: [0, 0] for name in rows}
    truncated = []
    for seed in range(args.seeds):
        seq_lens, trunc = draw_lengths(np.random.default_rng(seed), args.prompts_per_rank, G, args.max_tokens)
        truncated.append(trunc)
        seq_lens = seq_lens.tolist()
        for name, (max_rows, max_tokens) in rows.items():
            real, computed = padding(seq_lens, args.mini_batches, G, max_rows, max_tokens)
            totals[name][0] += real
            totals[name][1] += computed
    print(f"{args.prompts_per_rank} prompts x {G} per rank, {args.mini_batches} mini-batches, {args.seeds} draws; "
          f"{100 * np.mean(truncated):.1f}% of responses truncated at {args.max_tokens}")
    print(f"{'plan':14} {'real / computed':>16} {'padding':>8} {'computed (M tokens)':>20}")
    for name, (real, computed) in totals.items():
        print(f"{name:14} {real / computed:16.3f} {100 * (1 - real / computed):7.1f}% {computed / 1e6:20.2f}")


if __name__ == "__main__":
    main()
