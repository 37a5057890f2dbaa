"""Pairs per second of verify.score on a corpus that looks like model output, in one process and with the pool.

Corpus: the first 1,000 answers of math500.jsonl + math_train.jsonl (--problems). Each gold gets one right
and one wrong response. A response is the problem's reference solution with its boxes removed (real
reasoning text of realistic length) followed by a final line in one of the formats models write
("\\boxed{...}", "**Final Answer:** ...", "The final answer is $...$.", "Answer: ..."). Right answers are
rewritten into another equivalent form where a rewrite applies (all symbolic golds, half of the others;
about 40% of right answers end up rewritten), as models write them: 1,000 -> 1{,}000,
\\frac{3}{4} -> 3/4, 0.75 or \\frac{6}{8}, "x = 5", 2\\sqrt{3} -> \\sqrt{12},
\\frac{\\sqrt{3}}{3} -> \\frac{3}{3\\sqrt{3}},
sums in another order, factors in another order, 288\\pi -> \\pi \\cdot 288,
\\left( \\right) and spaces. Wrong answers are verify.perturb_answer of the (rewritten) right answer.
The script counts the pairs that need symbolic work (the exact identity test at rational points, or sympy)
and prints their shares.

Figures: single process from a cold start (a fresh process: nothing imported, so the first pass pays
for the sympy import where some pair needs it), single process warm (median over --repeats), the pool's
first call (its workers start) and the pool warm (median). Each pair is scored from scratch
(verify.py keeps no cache across pairs). Prints the load average it ran under.

    python benchmarks/bench_verify.py [--data data] [--repeats 5] [--workers 2] [--problems 1000]
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mathparse  # noqa: E402
import verify  # noqa: E402

FORMATS = ["So the answer is $\\boxed{{{}}}$.", "**Final Answer:** ${}$", "The final answer is ${}$.",
           "Therefore, the final answer is: $\\boxed{{{}}}$", "Answer: {}", "\\[\\boxed{{{}}}\\]"]


def _split_sum(s):
    """Top-level terms of a sum with their signs, or None (no top-level +/-)."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if depth == 0 and ch in "+-" and i > start and s[i - 1] not in "^_{(":
            terms.append(s[start:i])
            start = i
    terms.append(s[start:])
    return terms if len(terms) > 1 else None


def rewrite(gold, rng):
    """An equivalent form of gold as a model might write it (gold itself where no rewrite applies)."""
    g = gold.strip()
    if re.search(r",\\!|\{,\}|\\text", g):
        return g  # thousands separators inside expressions, words: models keep those as they are
    if re.fullmatch(r"-?\d+", g):
        n = int(g)
        if abs(n) >= 1000:
            return rng.choice([f"{n:,}", f"{n:,}".replace(",", "{,}"), f"{n:,}".replace(",", ",\\!")])
        return rng.choice([f"x = {n}", f"{n}.0", f"\\text{{{n}}}", f"{n}"])
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", g)
    if m:
        sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
        forms = [f"{sign}{p}/{q}", f"{sign}\\frac{{{2 * p}}}{{{2 * q}}}", f"\\frac{{{sign}{p}}}{{{q}}}"]
        value = Fraction(p, q)
        if (10 ** 6 * value).denominator == 1:  # a terminating decimal
            forms.append(sign + str(float(value)))
        return rng.choice(forms)
    m = re.search(r"(?<![\d^{])(\d+)\s*\\sqrt\{?(\d+)\}?", g)
    if m and "\\begin" not in g:  # 2\sqrt{3} -> \sqrt{12} wherever it stands: sympy confirms it
        return g[: m.start()] + f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}" + g[m.end() :]
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d*)\s*\\sqrt\{(\d+)\}\}\{(\d+)\}", g)
    if m and rng.random() < 0.5:  # \frac{3\sqrt{3}}{4} -> \frac{9}{4\sqrt{3}}, not rationalised: sympy confirms it
        k, a, b = int(m.group(2) or 1), int(m.group(3)), int(m.group(4))
        return f"{m.group(1)}\\frac{{{k * a}}}{{{b}\\sqrt{{{a}}}}}"
    m = re.fullmatch(r"(-?)\\[dt]?frac\{", g[: g.find("{") + 1]) if "frac{" in g else None
    if m:  # \frac{3\sqrt{3}}{4} -> (3\sqrt{3})/(4), \frac{x+1}{2} -> (x+1)/(2)
        top = verify._brace_content(g, m.end() - 1)
        rest = g[m.end() + len(top or "") + 1 :]
        bottom = verify._brace_content(rest, 0) if rest.startswith("{") else None
        if top is not None and bottom is not None and len(bottom) + 2 == len(rest):
            return f"{m.group(1)}({top})/({bottom})"
    m = re.fullmatch(r"(\d+)\s*\\pi", g)
    if m:  # 288\pi -> \pi \cdot 288
        return f"\\pi \\cdot {m.group(1)}"
    lhs, eq, rhs = g.partition("=")
    terms = _split_sum(rhs.strip()) if eq and re.fullmatch(r"\s*[a-z]\s*", lhs) else None
    if terms:  # y = 2x + 3 -> y = 3 + 2x
        first = terms[0] if terms[0][0] in "+-" else "+" + terms[0]
        return lhs + "= " + "".join(terms[1:] + [first]).lstrip("+")
    factors = re.fullmatch(r"(\d*)\s*(\([^()]+\))\s*(\([^()]+\))", g)
    if factors:  # 9(2-x)(2+x) -> (2+x)(2-x)9
        return factors.group(3) + factors.group(2) + factors.group(1)
    terms = _split_sum(g)
    if terms and re.search(r"[a-z]", g) and not re.search(r"[,=&]|\\begin", g):
        first = terms[0] if terms[0][0] in "+-" else "+" + terms[0]
        return "".join(terms[1:] + [first]).lstrip("+")  # the sum in another order
    if g.startswith("(") and g.endswith(")") and "," in g:
        return "\\left( " + g[1:-1].replace(",", ", ") + " \\right)"
    m = re.fullmatch(r"\\text\{\(?([A-E])\)?\}", g)
    if m:
        return m.group(1)
    return g


def build_corpus(data_dir, problems, seed=0):
    rng = random.Random(seed)
    rows = []
    for name in ("math500.jsonl", "math_train.jsonl"):
        with open(Path(data_dir) / name) as f:
            rows += [json.loads(line) for line in f]
    rows = rows[:problems]
    responses, golds, expected, rewritten = [], [], [], 0
    for row in rows:
        gold = row["answer"]
        reasoning = re.sub(r"\\boxed\s*", "", row.get("solution", ""))  # the reference's own box would decide
        symbolic = re.search(r"[a-z]|\\sqrt|\\pi", gold.replace("\\frac", "")) is not None
        right = rewrite(gold, rng) if symbolic or rng.random() < 0.5 else gold  # symbolic forms vary most
        rewritten += right != gold
        for answer, verdict in ((right, 1.0), (verify.perturb_answer(right), 0.0)):
            responses.append(reasoning + "\n\n" + rng.choice(FORMATS).format(answer))
            golds.append(gold)
            expected.append(verdict)
    return responses, golds, expected, rewritten


def count_symbolic_pairs(responses, golds):
    """(pairs decided by the exact identity test at rational points, pairs that reach sympy): counted
    by wrapping the two mathparse.py functions, in an untimed pass."""
    counts = {"_exact_identity": 0, "_sympy_zero": 0}
    originals = {name: getattr(mathparse, name) for name in counts}

    def counting(name):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return wrapper

    identity, reached = 0, 0
    try:
        for name in counts:
            setattr(mathparse, name, counting(name))
        for r, g in zip(responses, golds):
            before = dict(counts)
            verify.score(r, g)
            reached += counts["_sympy_zero"] > before["_sympy_zero"]
            reached_identity = counts["_exact_identity"] > before["_exact_identity"]
            identity += reached_identity and counts["_sympy_zero"] == before["_sympy_zero"]
    finally:
        for name, fn in originals.items():
            setattr(mathparse, name, fn)
    return identity, reached


def cold_child(args):
    """Run in a fresh process: one timed single-process pass, nothing imported beforehand."""
    responses, golds, expected, _ = build_corpus(args.data, args.problems)
    sympy_before = "sympy" in sys.modules
    start = time.perf_counter()
    scores = verify.score_batch(responses, golds, workers=0)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "wrong": sum(s != e for s, e in zip(scores, expected)),
                      "sympy_before": sympy_before, "sympy_after": "sympy" in sys.modules}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data"), help="math500.jsonl and math_train.jsonl (make data)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        return cold_child(args)
    load_before = os.getloadavg()

    child = subprocess.run([sys.executable, __file__, "--cold-child", "--data", args.data,
                            "--problems", str(args.problems)], capture_output=True, text=True, check=True)
    cold = json.loads(child.stdout.strip().splitlines()[-1])

    responses, golds, expected, rewritten = build_corpus(args.data, args.problems)
    n = len(responses)
    rows = [("single process, cold start", n / cold["seconds"], None, cold["wrong"])]
    for label, workers in (("single process, warm", 0), (f"pool (workers={args.workers})", args.workers)):
        start = time.perf_counter()
        scores = verify.score_batch(responses, golds, workers=workers)  # imports sympy / starts the pool
        if workers:
            rows.append((f"pool, first call (starts {workers} workers)", n / (time.perf_counter() - start), None,
                         sum(s != e for s, e in zip(scores, expected))))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            scores = verify.score_batch(responses, golds, workers=workers)
            times.append(time.perf_counter() - start)
        wrong = sum(s != e for s, e in zip(scores, expected))
        rows.append((label, n / statistics.median(times), n / min(times), wrong))
    verify._close_pool()
    identity, reached = count_symbolic_pairs(responses, golds)
    load_after = os.getloadavg()

    print(f"{n} pairs ({expected.count(1.0)} right, {rewritten} of them rewritten into another form; "
          f"{expected.count(0.0)} wrong); mean response {sum(map(len, responses)) // n} chars")
    print(f"symbolic work: {identity} pairs ({100 * identity / n:.1f}%) settled by the exact identity test at "
          f"rational points, {reached} ({100 * reached / n:.1f}%) reach sympy")
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'mode':<42} {'pairs/s (median)':>17} {'pairs/s (best)':>15} {'wrong verdicts':>15}")
    for label, median, best, wrong in rows:
        best = f"{best:>15.0f}" if best else f"{'(one run)':>15}"
        print(f"{label:<42} {median:>17.0f} {best} {wrong:>15d}")


if __name__ == "__main__":
    main()
