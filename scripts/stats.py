"""The statistics the scripts report, each once: Student's t (p-values and quantiles, in closed form), mean
intervals over independent units (seeds, problems), the paired comparison of two schemes over seeds (t-test,
exact sign-flip permutation p, minimum detectable difference), Holm's adjustment over a family of tests,
Wilson's score interval for an accuracy, and accuracies per level from eval.py's per-sample records.

All in float64 with the standard library (scipy is not a dependency). Reductions are plain sums over the
values given; None values (a seed without the metric) are left out where a docstring says so.
"""
import functools
import itertools
import math
from pathlib import Path

CONFIDENCE = 0.95  # two-sided, every interval here
POWER = 0.80  # of the minimum detectable difference


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with integer df >= 1, in closed form (Abramowitz & Stegun 26.7.3-4:
    with theta = atan(|t| / sqrt(df)), P(|T| < |t|) is a finite series in sin and cos theta)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"t_two_sided_p: df must be a positive integer, got {df!r}")
    df = int(df)
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2 / pi) [theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)], (df - 1) / 2 terms
        term, series = math.cos(theta), 0.0
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= c2 * (2 * j) / (2 * j + 1)
        inside = 2 / math.pi * (theta + math.sin(theta) * series)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df / 2 terms
        term, series = 1.0, 0.0
        for j in range(1, df // 2 + 1):
            series += term
            term *= c2 * (2 * j - 1) / (2 * j)
        inside = math.sin(theta) * series
    return min(1.0, max(0.0, 1.0 - inside))


def _bisect(cdf, q, hi):
    """x in [0, hi] with cdf(x) = q, cdf increasing; 200 halvings reach float64's resolution."""
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


@functools.lru_cache(maxsize=None)
def normal_quantile(q):
    """The standard normal's q-quantile (0.5 <= q < 1), by bisection on its CDF (math.erf)."""
    if not 0.5 <= q < 1:
        raise ValueError(f"normal_quantile: q must be in [0.5, 1), got {q!r}")
    return _bisect(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))), q, 40.0)


@functools.lru_cache(maxsize=None)  # the same few (q, df) are asked for at every step of a figure
def t_quantile(q, df):
    """Student's t q-quantile (0.5 <= q < 1) with df degrees of freedom (a positive integer; None: the normal
    limit), by bisection on the closed-form CDF 1 - t_two_sided_p / 2. t_quantile(0.975, 4) = 2.7764."""
    if df is None:
        return normal_quantile(q)
    if not 0.5 <= q < 1:
        raise ValueError(f"t_quantile: q must be in [0.5, 1), got {q!r}")
    hi = 1.0
    while 1 - t_two_sided_p(hi, df) / 2 < q:  # heavy tails at df 1: the 0.975 quantile is 12.7
        hi *= 2
    return _bisect(lambda x: 1 - t_two_sided_p(x, df) / 2, q, hi)


def mean_ci(values, confidence=CONFIDENCE):
    """(mean, half-width of the two-sided t-interval) of independent units' values (seeds, or problems):
    t_{(1+c)/2, n-1} * s / sqrt(n), s the unbiased standard deviation. None values are left out; one value
    has no interval (half-width nan); none gives (nan, nan)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, t_quantile((1 + confidence) / 2, len(xs) - 1) * s / math.sqrt(len(xs))


def sign_flip_p(diffs):
    """The exact two-sided p-value of the sign-flip permutation test of a paired mean difference: the share of
    the 2^n ways to flip the signs of the differences whose |sum| is at least the observed one (Fisher's
    randomisation test; under the null each difference is as likely negative as positive). Distribution-free;
    its smallest value is 2 / 2^n (n = 5 seeds: 0.0625), reached when every difference has the same sign and
    no flip gives a larger |sum|. Enumerates, so n <= 20; nan for no differences."""
    xs = [float(d) for d in diffs]
    if not xs:
        return math.nan
    if len(xs) > 20:
        raise ValueError(f"sign_flip_p: {len(xs)} differences: the exact enumeration stops at 20")
    observed = abs(sum(xs))
    tol = 1e-9 * max(1.0, sum(abs(x) for x in xs))  # sums of floats in another order: ties stay ties
    hits = sum(abs(sum(s * x for s, x in zip(signs, xs))) >= observed - tol
               for signs in itertools.product((1, -1), repeat=len(xs)))
    return hits / 2 ** len(xs)


def paired_test(diffs):
    """The paired comparison of two schemes over seeds, from the per-seed differences: the mean and the
    half-width of its 95% t-interval (mean_ci), the minimum detectable difference at two-sided alpha 0.05 and
    power 0.8, MDD = (t_{0.975, n-1} + t_{0.80, n-1}) s / sqrt(n) (s the unbiased std of the differences: the
    smallest true difference these seeds find 4 times in 5), and two-sided p-values: "p_t", the paired
    t-test's; "p_exact", the exact sign-flip permutation test's (sign_flip_p); and "p", the one reported: the
    t-test's, or, when the differences have no spread (the t statistic does not exist), the exact one (1 when
    every difference is 0, 2 / 2^n when all are equal and not 0: never 0). nan below two seeds."""
    m, h = mean_ci(diffs)
    n = len(diffs)
    out = {"mean": m, "ci95": h, "n": n, "values": list(diffs), "p": math.nan, "p_t": math.nan,
           "p_exact": math.nan, "mdd": math.nan}
    if n >= 2:
        s = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
        out["mdd"] = (t_quantile((1 + CONFIDENCE) / 2, n - 1) + t_quantile(POWER, n - 1)) * s / math.sqrt(n)
        out["p_exact"] = sign_flip_p(diffs)
        if s > 1e-12 * max(1.0, abs(m)):
            out["p_t"] = t_two_sided_p(m / (s / math.sqrt(n)), n - 1)
        out["p"] = out["p_t"] if out["p_t"] == out["p_t"] else out["p_exact"]
    return out


def holm(pvalues):
    """Holm's step-down adjustment of {label: p} as one family: the j-th smallest of the m p-values becomes
    max over i <= j of min(1, (m - i + 1) p_(i)); the family-wise error rate is at most 5% over the labels
    whose adjusted p is < 0.05. nan p-values are left out of the family (and stay nan)."""
    ranked = sorted((p, label) for label, p in pvalues.items() if p == p)
    out, running = {label: math.nan for label in pvalues}, 0.0
    for j, (p, label) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - j) * p))
        out[label] = running
    return out


def wilson(successes, n, confidence=CONFIDENCE):
    """Wilson's score interval (lo, hi) for a proportion, `successes` of `n` (Wilson 1927): the p whose score
    test |p_hat - p| <= z sqrt(p (1 - p) / n) accepts. Unlike p_hat +- z sqrt(p_hat (1 - p_hat) / n), it has
    width at 0 of n (0 to z^2 / (n + z^2): 0-7.1% at n = 50) and stays inside [0, 1]. `successes` may be a
    fraction: an accuracy averaged over n samples of each of `n` problems (avg@n) counts each problem as one
    unit scoring its mean; since a score in [0, 1] with mean p has variance at most p (1 - p), the interval is
    then conservative."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n and n > 0, got {successes!r} of {n!r}")
    z = normal_quantile((1 + confidence) / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def fmt_p(p):
    """A p-value as text: 3 decimals, two significant digits below 0.001 (never "0.000"), "n/a" for nan."""
    if p != p:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


# ---- accuracies from eval.py's per-sample records (records.jsonl: benchmark, id, sample, score) ----

def per_problem(records):
    """{(benchmark file stem, problem id): [scores of its samples]} from eval.py's records.jsonl rows."""
    out = {}
    for r in records:
        out.setdefault((Path(r["benchmark"]).stem, r["id"]), []).append(float(r["score"]))
    return out


def level_accuracy(records):
    """{benchmark stem (a level): {"accuracy", "ci95", "wilson", "problems", "n"}} from eval.py's records. A
    problem's accuracy is the mean score of its n samples; "accuracy" the mean over problems; "wilson" Wilson's
    95% interval with problems as the unit (never zero-width); "ci95" the half-width of the t-interval over
    problems (zero where every problem scored alike). Samples of one problem are not counted as independent."""
    levels = {}
    for (bench, _), scores in per_problem(records).items():
        levels.setdefault(bench, []).append(scores)
    out = {}
    for bench, problems in levels.items():
        means = [sum(s) / len(s) for s in problems]
        mean, half = mean_ci(means)
        out[bench] = {"accuracy": mean, "ci95": half, "wilson": list(wilson(sum(means), len(means))),
                      "problems": len(means), "n": len(problems[0])}
    return out


def paired_gain(before, after):
    """{benchmark stem: {"gain", "ci95"}}: the mean over problems of (after - before) per problem and the
    half-width of its 95% t-interval over problems (the same problems asked before and after; zero where every
    problem moved alike, e.g. all 0 before and after)."""
    b, a = per_problem(before), per_problem(after)
    b, a = ({k: sum(v) / len(v) for k, v in d.items()} for d in (b, a))
    if set(a) != set(b):
        raise ValueError("the evaluations before and after did not ask the same problems")
    diffs = {}
    for (level, pid), acc in a.items():
        diffs.setdefault(level, []).append(acc - b[(level, pid)])
    return {level: dict(zip(("gain", "ci95"), mean_ci(d))) for level, d in diffs.items()}


def macro(levels):
    """The mean accuracy over levels ({level: {"accuracy", "problems"}}) and the half-width of its 95% interval:
    the levels are independent samples, so the variances of their means add; each level's standard error is
    its Wilson interval's width / (2 z), which a level where every problem scored 0 still has."""
    z = normal_quantile((1 + CONFIDENCE) / 2)
    se2 = 0.0
    for v in levels.values():
        lo, hi = wilson(v["accuracy"] * v["problems"], v["problems"])
        se2 += ((hi - lo) / (2 * z)) ** 2
    return {"accuracy": sum(v["accuracy"] for v in levels.values()) / len(levels),
            "ci95": z * math.sqrt(se2) / len(levels)}
