"""Pairs per second of verify.score on a 2,000-pair corpus, in one process and with the pool.

Corpus (as in issue 4): the first 1,000 answers of math500.jsonl + math_train.jsonl, each once as a
right response "... so the answer is \\boxed{gold}." and once with perturb_answer(gold).
Every pair is scored from scratch (verify.py keeps no cache across pairs). Prints a table of
medians over --repeats runs, and checks the verdicts (1.0 for right, 0.0 for perturbed).

    python benchmarks/bench_verify.py [--data ../shared/data] [--repeats 5] [--workers 2]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import verify  # noqa: E402


def build_corpus(data_dir):
    golds = []
    for name in ("math500.jsonl", "math_train.jsonl"):
        with open(Path(data_dir) / name) as f:
            golds += [json.loads(line)["answer"] for line in f]
    golds = golds[:1000]
    responses, expected, pair_golds = [], [], []
    for gold in golds:
        for answer, verdict in ((gold, 1.0), (verify.perturb_answer(gold), 0.0)):
            responses.append(f"Working through the algebra step by step, so the answer is \\boxed{{{answer}}}.")
            pair_golds.append(gold)
            expected.append(verdict)
    return responses, pair_golds, expected


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    responses, golds, expected = build_corpus(args.data)
    n = len(responses)

    # one untimed pass: imports sympy where some pair needs it, like a warm training process
    verify.score_batch(responses, golds, workers=0)

    rows = []
    for label, run in (
        ("single process (workers=0)", lambda: verify.score_batch(responses, golds, workers=0)),
        (f"pool (workers={args.workers})", lambda: verify.score_batch(responses, golds, workers=args.workers)),
    ):
        times, scores = [], None
        run()  # starts the pool once; later calls reuse it
        for _ in range(args.repeats):
            start = time.perf_counter()
            scores = run()
            times.append(time.perf_counter() - start)
        wrong = sum(s != e for s, e in zip(scores, expected))
        rows.append((label, n / statistics.median(times), n / min(times), wrong))
    verify._close_pool()

    print(f"{n} pairs ({expected.count(1.0)} right, {expected.count(0.0)} perturbed), "
          f"median of {args.repeats} runs")
    print(f"{'mode':<30} {'pairs/s (median)':>17} {'pairs/s (best)':>15} {'wrong verdicts':>15}")
    for label, median, best, wrong in rows:
        print(f"{label:<30} {median:>17.0f} {best:>15.0f} {wrong:>15d}")


if __name__ == "__main__":
    main()
