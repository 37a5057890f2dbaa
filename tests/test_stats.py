"""scripts/stats.py against independent references: quantiles from a printed t table, Student's t CDF
integrated numerically, hand-computed intervals and p-values, a brute-force enumeration of sign flips
written another way (the distribution of an integer sum by convolution), and Wilson's interval found by
scanning the score test."""
import math
import random

import pytest

from scripts.stats import (fmt_p, holm, mean_ci, normal_quantile, paired_test, sign_flip_p, t_quantile,
                           t_two_sided_p, wilson)

# t_{0.975, df} and t_{0.80, df} as printed in a standard t table (3 decimals)
TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 30: 2.042}
TABLE_80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 9: 0.883, 30: 0.854}


def t_cdf(t, df, n=20000):
    """Reference: Student's t CDF at t >= 0, its pdf integrated with Simpson's rule (float64)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / n
    s = pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("df", sorted(TABLE_975))
def test_t_quantiles_match_a_printed_table(df):
    assert t_quantile(0.975, df) == pytest.approx(TABLE_975[df], abs=6e-4)
    if df in TABLE_80:
        assert t_quantile(0.80, df) == pytest.approx(TABLE_80[df], abs=6e-4)


def test_t_quantile_inverts_the_integrated_cdf():
    for df, q in [(1, 0.9), (3, 0.975), (7, 0.8), (12, 0.995)]:
        assert t_cdf(t_quantile(q, df), df) == pytest.approx(q, abs=1e-7)


def test_normal_quantile():
    assert normal_quantile(0.975) == pytest.approx(1.959964, abs=1e-6)  # printed tables: 1.960
    assert normal_quantile(0.8) == pytest.approx(0.841621, abs=1e-6)
    assert t_quantile(0.975, None) == normal_quantile(0.975)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962, abs=1e-3)  # t tends to the normal
    with pytest.raises(ValueError, match="q must be"):
        normal_quantile(1.0)


def test_t_test_p_value():
    # by hand: df 1 is Cauchy, P(|T| >= 1) = 1 - 2 atan(1) / pi = 0.5; df 2: P(|T| < t) = t / sqrt(2 + t^2)
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-15)
    assert t_two_sided_p(-math.sqrt(2), 2) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-15)
    assert t_two_sided_p(0.0, 7) == 1.0
    for df in (1, 2, 3, 4, 5, 8, 9, 29):
        for t in (0.4, 1.9, 3.3):
            assert t_two_sided_p(t, df) == pytest.approx(2 * (1 - t_cdf(t, df)), abs=1e-9), (df, t)
    with pytest.raises(ValueError, match="positive integer"):
        t_two_sided_p(1.0, 0)


def test_mean_ci_by_hand():
    m, h = mean_ci([1.0, 2.0, 3.0])  # s = 1
    assert m == 2.0 and h == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    m, h = mean_ci([0.5, None, 0.7])  # None (a seed without the value) is left out: n = 2, s = 0.1414
    assert m == pytest.approx(0.6) and h == pytest.approx(12.7062 * math.sqrt(0.02) / math.sqrt(2), abs=1e-4)
    assert mean_ci([0.4])[0] == 0.4 and math.isnan(mean_ci([0.4])[1])
    assert all(math.isnan(x) for x in mean_ci([]))


def sign_flip_reference(ints):
    """Reference for integer differences: the exact null distribution of the signed sum by convolution
    (each |d| enters as +|d| or -|d| with probability 1/2), then P(|S| >= |observed|)."""
    dist = {0: 1}
    for d in ints:
        nxt = {}
        for s, c in dist.items():
            for v in (s + d, s - d):
                nxt[v] = nxt.get(v, 0) + c
        dist = nxt
    obs = abs(sum(ints))
    return sum(c for s, c in dist.items() if abs(s) >= obs) / 2 ** len(ints)


def test_sign_flip_p():
    # by hand: 1, 2, 3 -> the 8 signed sums are +-6, +-4, +-2, +-0; |sum| >= 6 in 2 of 8
    assert sign_flip_p([1, 2, 3]) == 0.25
    assert sign_flip_p([0.1] * 5) == 2 / 32 and sign_flip_p([-0.3] * 4) == 2 / 16
    assert sign_flip_p([0.0, 0.0]) == 1.0 and math.isnan(sign_flip_p([]))
    rng = random.Random(0)
    for _ in range(30):
        ints = [rng.randint(-6, 6) for _ in range(rng.randint(1, 9))]
        assert sign_flip_p(ints) == pytest.approx(sign_flip_reference(ints)), ints
    # float differences that are equal in exact arithmetic tie with the observed sum
    assert sign_flip_p([0.31 - 0.30, 0.21 - 0.20, 0.01]) == 2 / 8
    with pytest.raises(ValueError, match="stops at 20"):
        sign_flip_p([1.0] * 21)


def test_paired_test_by_hand():
    d = paired_test([0.01, 0.03, 0.02, 0.04, 0.0])
    s = math.sqrt(0.001 / 4)  # squared deviations from the mean 0.02 sum to 0.001
    assert d["mean"] == pytest.approx(0.02) and d["n"] == 5
    assert d["mdd"] == pytest.approx((2.7764 + 0.9410) * s / math.sqrt(5), rel=1e-4)  # 0.0263
    assert d["p"] == d["p_t"] == pytest.approx(t_two_sided_p(0.02 / (s / math.sqrt(5)), 4))
    assert d["p_exact"] == pytest.approx(sign_flip_reference([1, 3, 2, 4, 0]))  # the same test on a scale of 0.01
    one = paired_test([0.1])
    assert math.isnan(one["mdd"]) and math.isnan(one["p"]) and math.isnan(one["ci95"])
    assert paired_test([0.0, 0.0])["p"] == 1.0


def test_a_zero_spread_difference_gets_an_exact_p_never_0():
    """Five seeds that all differ by one problem (0.01): the t statistic does not exist (s = 0); the
    reported p is the sign-flip test's exact 2 / 2^5, not 0."""
    diffs = [0.31 - 0.30, 0.11 - 0.10, 0.51 - 0.50, 0.01, 0.21 - 0.20]  # equal up to float rounding
    d = paired_test(diffs)
    assert d["mean"] == pytest.approx(0.01) and d["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(d["p_t"]) and d["p"] == d["p_exact"] == 1 / 16
    assert fmt_p(d["p"]) == "0.062" and fmt_p(4e-5) == "4.0e-05" and fmt_p(math.nan) == "n/a"


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> running max 0.06
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan})
    assert {k: v for k, v in adjusted.items() if k != "e"} == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06,
                                                                             "d": 0.02})
    assert math.isnan(adjusted["e"]) and holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}  # monotone, capped


def wilson_by_scan(k, n, z=1.959964, steps=200000):
    """Reference: the Wilson interval as the set of p on a fine grid that the score test accepts."""
    grid = [i / steps for i in range(steps + 1)]
    ok = [p for p in grid if abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n)]
    return min(ok), max(ok)


def test_wilson():
    # by hand, 8 of 100: center (0.08 + z^2/200) / (1 + z^2/100) = 0.09554, half 0.05445 -> 0.0411 to 0.1500
    assert wilson(8, 100) == pytest.approx((0.0411, 0.1500), abs=1e-4)
    assert wilson(0, 50) == pytest.approx((0.0, 1.959964 ** 2 / (50 + 1.959964 ** 2)))  # 0 to 7.1%
    for k, n in [(0, 30), (3, 30), (30, 30), (17, 50), (8, 100)]:
        assert wilson(k, n) == pytest.approx(wilson_by_scan(k, n), abs=2e-5), (k, n)
    lo, hi = wilson(2.5, 8)  # avg@4 over 8 problems: a fractional count is allowed
    assert 0 < lo < 2.5 / 8 < hi < 1
    with pytest.raises(ValueError, match="successes <= n"):
        wilson(5, 4)
