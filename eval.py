"""Math benchmark evaluation: avg@n, unbiased pass@k, greedy accuracy, lengths, per-level breakdowns.

    python eval.py --model Qwen/Qwen2.5-Math-1.5B --benchmarks math500,aime24:16,amc23:16 --data-dir data

`name:n` in --benchmarks overrides --n for that benchmark (papers report AIME/AMC as avg@16 but
MATH500 greedy). train.py calls `evaluate(engine, benchmarks, ...)` with its own engine.
Writes <out>/results.json (every number and the settings) and <out>/records.jsonl (one line per sample).
"""
import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

import rollout
import verify
from data import REWARDS, load_benchmark, reward_function

# Fields that get their own accuracy breakdown when the data has them (OlympiadBench calls it subfield).
BREAKDOWN_FIELDS = ("level", "subject", "subfield")
HARD_LEVELS = (4, 5)  # MATH levels 4-5, which the HA-DW paper reports separately


# ---------------------------------------------------------------------------------------------
# Metrics

def pass_at_k(n, c, k):
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for c correct of n samples (Chen et al. 2021, arXiv 2107.03374).

    Product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), in float64, so no huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _accuracy(scores):
    """avg@n and pass@k (k = 1..n) of a [problems][n] matrix of scores in [0, 1]; correct means score >= 0.5."""
    n = len(scores[0])
    correct = [sum(s >= 0.5 for s in row) for row in scores]
    out = {"num_problems": len(scores), "n": n,
           "avg@n": sum(map(sum, scores)) / (len(scores) * n)}  # mean over all samples (equal n per problem)
    for k in range(1, n + 1):
        out[f"pass@{k}"] = _mean([pass_at_k(n, c, k) for c in correct])
    return out


def benchmark_metrics(rows, scores, lengths, *, greedy=False):
    """Every number of one benchmark from `scores[i][j]` / `lengths[i][j]` (problem i, sample j).

    Lengths are response tokens; mean lengths are over samples (not problems), split by correctness.
    """
    if len(rows) != len(scores) or len({len(s) for s in scores}) != 1:
        raise ValueError("scores must be a [problems][n] matrix with one row per benchmark row")
    out = _accuracy(scores)
    if greedy:
        out["greedy"] = out["avg@n"]
    flat = [(s, l) for srow, lrow in zip(scores, lengths) for s, l in zip(srow, lrow)]
    out["mean_length"] = _mean([l for _, l in flat])
    out["mean_length_correct"] = _mean([l for s, l in flat if s >= 0.5])
    out["mean_length_incorrect"] = _mean([l for s, l in flat if s < 0.5])
    for field in BREAKDOWN_FIELDS:
        groups = {}
        for row, srow in sorted(zip(rows, scores), key=lambda rs: str(rs[0].get(field))):
            if row.get(field) is not None:
                groups.setdefault(str(row[field]), []).append(srow)
        if field == "level" and any(str(h) in groups for h in HARD_LEVELS):
            hard = [srow for row, srow in zip(rows, scores) if str(row.get("level")) in map(str, HARD_LEVELS)]
            groups["-".join(map(str, HARD_LEVELS))] = hard
        if groups:
            out[f"by_{field}"] = {key: _accuracy(g) for key, g in groups.items()}
    return out


# ---------------------------------------------------------------------------------------------
# Evaluation

def evaluate(engine, benchmarks, *, n=1, temperature=0.0, top_p=1.0, max_tokens=1024,
             workers=verify.DEFAULT_WORKERS, limit=None, seed=0, batch_size=256, progress=True, score_fn=None):
    """Generate with `engine` (not created or closed here), score with verify.py, and summarise.

    benchmarks: {name: rows from load_benchmark}; n: samples per problem, an int or {name: n}.
    limit: evaluate only the first `limit` problems of each benchmark (train.py's periodic eval).
    score_fn(responses, golds, problems) -> scores replaces verify.score_batch (data.reward_function).
    Returns (results, records): results is JSON-serialisable; records has one dict per sample.
    """
    n_of = (lambda name: n.get(name, 1)) if isinstance(n, dict) else (lambda name: n)
    greedy = temperature == 0
    if greedy and any(n_of(name) > 1 for name in benchmarks):
        warnings.warn("temperature 0 with n > 1: greedy decoding repeats one response n times")
    subsets = {name: rows[:limit] if limit else rows for name, rows in benchmarks.items()}
    results = {"settings": {"n": {name: n_of(name) for name in subsets}, "temperature": temperature,
                            "top_p": top_p, "max_tokens": max_tokens, "limit": limit, "seed": seed},
               "benchmarks": {}}
    records = []
    bar = tqdm(total=sum(len(rows) * n_of(name) for name, rows in subsets.items()), unit="sample",
               desc="eval", disable=not progress or not sys.stderr.isatty())
    for name, rows in subsets.items():
        bn = n_of(name)
        samples = []  # generated in chunks so the bar moves; each chunk gets its own seed
        for start in range(0, len(rows), batch_size):
            chunk = [row["problem"] for row in rows[start:start + batch_size]]
            samples += engine.generate(chunk, bn, temperature=temperature, top_p=top_p,
                                       max_tokens=max_tokens, seed=seed + start, logprobs=False)
            bar.update(len(chunk) * bn)
        responses = [s.text for group in samples for s in group]
        golds = [row["answer"] for row in rows for _ in range(bn)]
        problems = [row["problem"] for row in rows for _ in range(bn)]  # "round to ..." matches by rounding
        if score_fn:
            flat_scores = score_fn(responses, golds, problems)
        else:
            flat_scores = verify.score_batch(responses, golds, workers=workers, problems=problems)
        scores = [flat_scores[i * bn:(i + 1) * bn] for i in range(len(rows))]
        lengths = [[s.length for s in group] for group in samples]
        results["benchmarks"][name] = benchmark_metrics(rows, scores, lengths, greedy=greedy)
        results["benchmarks"][name]["truncated"] = _mean([float(s.truncated) for group in samples for s in group])
        for row, group, srow in zip(rows, samples, scores):
            for j, (s, score) in enumerate(zip(group, srow)):
                records.append({"benchmark": name, "id": row["id"], "sample": j, "answer": row["answer"],
                                "extracted": verify.extract_answer(s.text), "score": float(score),
                                "length": s.length, "truncated": bool(s.truncated), "response": s.text})
    bar.close()
    results["macro"] = {"avg@n": _mean([m["avg@n"] for m in results["benchmarks"].values()])}
    if greedy:
        results["macro"]["greedy"] = results["macro"]["avg@n"]
    return results, records


def format_table(results):
    """A plain-text table: one line per benchmark, its level/subject groups indented below, then the macro average."""
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    W = 36
    lines = [f"{'benchmark':<{W}} {'problems':>8} {'n':>3} {'avg@n':>6} {'pass@n':>6} "
             f"{'len ok':>7} {'len bad':>7} {'trunc':>6}"]
    for name, m in results["benchmarks"].items():
        pass_n = m["pass@" + str(m["n"])]
        lines.append(f"{name:<{W}} {m['num_problems']:>8} {m['n']:>3} {fmt(100 * m['avg@n']):>6} "
                     f"{fmt(100 * pass_n):>6} {fmt(m['mean_length_correct']):>7} "
                     f"{fmt(m['mean_length_incorrect']):>7} {fmt(100 * m['truncated']):>6}")
        for field in BREAKDOWN_FIELDS:
            for key, g in m.get(f"by_{field}", {}).items():
                label, pass_n = f"  {field} {key}"[:W], g["pass@" + str(g["n"])]
                lines.append(f"{label:<{W}} {g['num_problems']:>8} {g['n']:>3} {fmt(100 * g['avg@n']):>6} "
                             f"{fmt(100 * pass_n):>6}")
    lines.append(f"{'macro average':<{W}} {'':>8} {'':>3} {fmt(100 * results['macro']['avg@n']):>6}")
    lines.append("accuracies in %, lengths in tokens (len ok / len bad: correct / incorrect samples), "
                 "trunc: % cut at max_tokens"
                 + ("; temperature 0, so avg@n is greedy accuracy" if "greedy" in results["macro"] else ""))
    return "\n".join(lines)


def parse_benchmarks(spec, default_n):
    """'math500,aime24:16' -> {'math500': default_n, 'aime24': 16}."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, count = item.rpartition(":")
        if not (sep and count.isdigit() and int(count) > 0):
            name, count = item, default_n
        out[name] = int(count)
    if not out:
        raise ValueError("--benchmarks is empty")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local path or hub name")
    p.add_argument("--benchmarks", default="math500,aime24,aime25,amc23,minerva,olympiadbench",
                   help="comma-separated names or .jsonl paths; name:n sets n for one benchmark")
    p.add_argument("--data-dir", default=os.environ.get("RLVR_DATA_DIR", "data"))
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=3072)
    p.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    p.add_argument("--template", choices=rollout.TEMPLATES, default="qwen_math")
    p.add_argument("--instruction", default=rollout.INSTRUCTION,
                   help="appended to each question by the qwen_math and chat templates")
    p.add_argument("--dtype", choices=rollout.DTYPES, default="auto",
                   help="auto: the checkpoint's dtype; float32 on a CPU without native bfloat16")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=verify.DEFAULT_WORKERS, help="verifier processes (0: in-process)")
    p.add_argument("--reward", choices=REWARDS, default="math", help="how a response is scored (data.REWARDS)")
    p.add_argument("--out", default=None, help="output folder (default runs/eval/<model name>)")
    args = p.parse_args(argv)

    try:  # bad names and missing files stop here, in one line, before a model is loaded
        ns = parse_benchmarks(args.benchmarks, args.n)
        benchmarks = {name: load_benchmark(name, args.data_dir) for name in ns}
    except (OSError, ValueError) as e:
        sys.exit(f"eval: {e}")
    score_fn = None if args.reward == "math" else reward_function(args.reward)
    cfg = rollout.RolloutConfig(engine=args.engine, template=args.template, instruction=args.instruction,
                                temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                                seed=args.seed, dtype=args.dtype)
    engine = rollout.make_engine(cfg, args.model, seed=args.seed)
    try:
        results, records = evaluate(engine, benchmarks, n=ns, temperature=args.temperature, top_p=args.top_p,
                                    max_tokens=args.max_tokens, workers=args.workers, limit=args.limit, seed=args.seed,
                                    score_fn=score_fn)
    finally:
        engine.close()
    results["settings"].update(model=args.model, engine=args.engine, template=args.template,
                               instruction=args.instruction, dtype=engine.dtype,
                               benchmarks=list(ns), data_dir=str(args.data_dir))
    out = Path(args.out or Path("runs/eval") / Path(args.model.rstrip("/")).name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "records.jsonl.tmp", "w") as f:  # renamed when whole: a file there is a finished evaluation
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(out / "records.jsonl.tmp", out / "records.jsonl")
    print(format_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'records.jsonl'}")
    return results


if __name__ == "__main__":
    main()
