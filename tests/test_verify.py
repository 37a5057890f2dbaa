"""Tests of verify.py and mathparse.py: extraction, equivalence by category, adversarial inputs, the data
files, and the worker pool. Expected verdicts are written by hand from the mathematics of each pair."""

import json
import math
import time

import pytest
from conftest import DATA_DIR, needs_data

import mathparse
import verify
from mathparse import is_equivalent
from verify import extract_answer, perturb_answer, score, score_batch

# ---- extraction: (response, expected final answer) -------------------------------------------
EXTRACT = [
    ("so the answer is \\boxed{42}.", "42"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)} done", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("thus \\boxed 7 is it", "7"),
    ("thus $\\boxed 7$.", "7"),
    ("The final answer is 12.", "12"),
    ("The final answer is $\\frac{3}{4}$. I hope", "\\frac{3}{4}"),
    ("Therefore the answer is 3.5.", "3.5"),
    ("so the answer is (C).", "(C)"),
    ("Answer: 17", "17"),
    ("We get 3 apples and then 5 more, 8 in all.", "8"),
    ("x = -2.5 is the only root", "-2.5"),
    ("it costs 1,000 dollars", "1,000"),
    ("no numbers here", None),
    ("\\boxed{}", None),
    ("the answer is 5 but \\boxed{" + "(" * 2000 + "5" + ")" * 2000 + "}", None),
    ("truncated \\boxed{5} then \\boxed{", "5"),
    ("The answer is \\boxed{9} and the final answer is 10", "9"),
]


@pytest.mark.parametrize("response,expected", EXTRACT)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


# ---- equivalent pairs (answer, gold), by category ----------------------------------------------
EQUAL = [
    # fractions
    ("\\frac{1}{2}", "\\dfrac{1}{2}"), ("\\tfrac12", "\\frac{1}{2}"), ("\\frac12", "0.5"),
    ("1/2", "\\frac{1}{2}"), ("\\frac{2}{4}", "\\frac12"), ("\\frac 59", "\\frac{5}{9}"),
    ("\\frac9{19}", "9/19"), ("-\\frac{3}{8}", "\\frac{-3}{8}"), ("\\frac{-3}{-8}", "\\frac38"),
    ("1\\frac{4}{5}", "\\frac{9}{5}"), ("137.5", "137 \\frac{1}{2}"), ("\\frac{14}{3}", "14/3"),
    # LaTeX wrappers and spacing
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), ("$7$", "7"), ("\\(7\\)", "7"),
    ("\\displaystyle \\frac{1}{4}", "\\frac14"), ("3\\,\\sqrt{5}", "3 \\sqrt{5}"), ("  12 ", "12"),
    ("12.", "12"), ("\\text{Evelyn}", "Evelyn"), ("\\text{east}", "\\text{East}"),
    ("\\textbf{even}", "\\text{even}"),
    # units, degrees, percent, dollars, thousands separators
    ("864", "864 \\mbox{ inches}^2"), ("15", "15\\mbox{ cm}^2"), ("5.4", "5.4 \\text{ cents}"),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}"), ("90", "90^\\circ"), ("90^{\\circ}", "90^\\circ"),
    ("90°", "90"), ("90 degrees", "90^\\circ"), ("25\\%", "25"), ("25%", "25"), ("25\\%", "0.25"),
    ("\\$32,348", "\\$32,\\!348"), ("32348", "\\$32,\\!348"), ("\\$18.90", "18.90"), ("18.9", "\\$18.90"),
    ("10080", "10,\\!080"), ("11111111100", "11,\\! 111,\\! 111,\\! 100"), ("1{,}000", "1000"),
    ("1,000,000", "1000000"), ("58500", "58,500"),
    # leading zeros, decimals and fractions
    ("007", "7"), ("0.50", "0.5"), (".35625", "0.35625"), ("0.35625", ".35625"), ("\\frac{57}{160}", ".35625"),
    ("6.72\\times10^{-5}", ".0000672"), ("+2", "2"), ("2", "+2"), ("-0", "0"), ("5.0", "5"),
    # a gold in scientific notation states its significant figures: the answer rounds to it
    # (issue 15 moved the plain-decimal pairs 1/3~0.333, 0.3333~0.333, 0.0062~0.006, 1.62~1.6 and
    # sqrt2/2~0.707 to ROUNDED_ONLY below: a plain decimal gold is exact unless rounding is asked for)
    ("4.52e33", "4.5e33"), ("4.5\\times10^{33}", "4.5e33"),
    ("4.5 \\cdot 10^{33}", "4.5e33"), ("45\\times10^{32}", "4.5e33"),
    ("0.10", "0.1"), ("-0.875", "-\\frac{7}{8}"), ("-1/3", "-1./3"),
    ("-1.5", "-3./2"), ("2.7778\\times 10^{-6}", "2.7778e-6"), ("0.000001", "1e-6"),
    # roots and pi
    ("2\\sqrt{3}", "\\sqrt{12}"), ("\\sqrt{12}", "2\\sqrt3"), ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"), ("11\\sqrt{2}", "11\\sqrt2"), ("\\sqrt[3]{8}", "2"),
    ("8^{1/3}", "2"), ("\\sqrt{50}", "5\\sqrt{2}"), ("sqrt(51)", "\\sqrt{51}"), ("\\pi", "π"),
    ("2\\pi", "\\pi \\cdot 2"), ("\\frac{\\pi}{2}", "\\pi/2"), ("18+2\\pi", "2\\pi+18"),
    ("\\frac{20000}{\\pi}", "20000/\\pi"), ("\\pi r^2", "r^2\\pi"),
    # complex numbers
    ("6-5i", "6 - 5i"), ("-5i+6", "6 - 5i"), ("\\frac{4A}{3+3i}e^{it}", "\\frac{4 A}{3+3 i} e^{i t}"),
    ("1+\\sqrt{3}i", "1+\\sqrt{3} i"), ("(2+2i)^{-1}e^{2it}", "\\frac{e^{2 i t}}{(2+2 i)}"),
    # equations
    ("x=5", "5"), ("5", "x=5"), ("x = 5", "x=5"), ("y=2x+3", "y = 2x + 3"), ("y = 3 + 2x", "y=2x+3"),
    ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"), ("10x-14y+22z+8=0", "5x - 7y + 11z + 4 = 0"),
    ("2x+3", "y = 2x + 3"), ("k=\\frac{1}{2}", "0.5"),
    # intervals
    ("(3,4]", "(3,4]"), ("(3, 4]", "\\left(3,4\\right]"), ("[-2,7]", "x \\in [-2,7]"),
    ("(2,\\infty)", "(2, \\infty)"), ("(-\\infty,0]", "(-\\infty, 0]"),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)"),
    ("(\\frac{3}{5},\\frac{8}{3}]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]"),
    ("[\\pi^2/8, 5\\pi^2/4]", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]"),
    # tuples (order matters)
    ("(6,31,-1)", "(6, 31, -1)"), ("(1.5, -13)", "\\left( \\frac{3}{2}, -13 \\right)"),
    ("15,-29", "(15,-29)"), ("(-\\sqrt{3},\\sqrt{3})", "(-\\sqrt{3}, \\sqrt{3})"),
    # sets and unordered lists
    ("1,-2", "-2,1"), ("7, 5, 3", "3, 5, 7"), ("\\{3,1,2\\}", "1,2,3"),
    ("1+\\sqrt{19}, 1-\\sqrt{19}", "1 \\pm \\sqrt{19}"), ("1 \\pm \\sqrt{19}", "1-\\sqrt{19},1+\\sqrt{19}"),
    ("-2, 1+\\sqrt5, 1-\\sqrt5", "\\{1\\pm\\sqrt{5},-2\\}"), ("3-2\\sqrt{2}, 3+2\\sqrt2", "3 \\pm 2 \\sqrt{2}"),
    ("2 \\text{ and } 3", "2, 3"), ("x=1, x=2", "1, 2"),
    # matrices and vectors
    ("\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
     "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"),
    ("(-2,-14,-7)", "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}"),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "(0.2, -3.6)"),
    # symbolic expressions
    ("p-q", "p - q"), ("-q+p", "p - q"), ("(x+1)^2", "x^2+2x+1"), ("ab+5b+2a+10", "(a+5)(b+2)"),
    ("\\frac{1}{\\tan x}", "\\cot x"), ("\\sin^2 x+\\cos^2 x", "1"), ("2(k+1)", "2k+2"),
    ("\\frac{9a+11}{20}", "\\frac{11+9a}{20}"), ("x^3+3x-6", "x^3+3x-6"),
    ("-x+x^2-x^3+x^4-x^5+1", "-(x^5 - x^4 + x^3 - x^2 + x - 1)"),
    ("\\cosh(at)", "\\frac{1}{2}(\\exp{a*t} + \\exp{-a*t})"), ("\\frac{e^t}{3}", "e^{t} / 3"),
    ("\\frac{\\sqrt{2}}{4}\\cos(t-\\pi/4)", "\\frac{\\cos (2 t)+\\sin (2 t)}{4}".replace("2 t", "t")),
    ("\\ln 2+\\frac{i\\pi}{3}", "\\ln 2 + i\\pi / 3"), ("\\log_2 8", "3"), ("\\binom{5}{2}", "10"),
    ("5!", "120"), ("\\arcsin(10/13)", "np.arcsin(10/13)"), ("\\sin^{-1}(10/13)", "np.arcsin(10/13)"),
    ("\\frac{\\omega_d}{(s+\\sigma)^2+\\omega_d^2}", "\\frac{\\omega_{d}}{(s+\\sigma)^{2}+\\omega_{d}^{2}}"),
    ("x^{-2}c-\\frac{\\cos(2x)}{2x^2}", "c x^{-2}-\\frac{\\cos (2 x)}{2 x^{2}}"),
    # multiple choice and words
    ("C", "\\text{(C)}"), ("(C)", "\\text{(C)}"), ("\\text{(E)}", "E"), ("B.", "\\text{(B)}"),
    ("Navin", "\\text{Navin}"), ("\\text{ellipse}", "ellipse"),
    # bases stay strings
    ("52_8", "52_8"), ("4210_5", "4210_{5}"),
]

# ---- different pairs (answer, gold) ------------------------------------------------------------
NOT_EQUAL = [
    ("\\frac{1}{3}", "\\frac{1}{2}"), ("0.3333", "\\frac13"), ("0.333", "\\frac{1}{3}"), ("3.14", "\\pi"),
    ("3.14159265358979", "\\pi"), ("1.4142", "\\sqrt2"), ("0.54", "0.5978"), ("0.6", "0.5978"),
    ("4.6e33", "4.5e33"), ("4.5e32", "4.5e33"), ("0.14", "0.10"), ("5.1", "5"), ("2\\sqrt{3}", "3\\sqrt{2}"),
    ("(1,2]", "(1,2)"), ("[1,2)", "(1,2)"), ("(2,1)", "(1,2)"), ("(1,2,3)", "(1,2)"), ("[-2,7]", "(-2,7)"),
    ("(-\\infty,0)", "(-\\infty, 0]"), ("(2,\\infty)", "(-\\infty,2)"), ("1, 2", "[1,2]"),
    ("\\{1,2\\}", "\\{1,2,3\\}"), ("1,2,2", "1,2"), ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}"),
    ("\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}"),
    ("x^2+2x+2", "(x+1)^2"), ("p+q", "p - q"), ("\\tan x", "\\cot x"), ("2k+1", "2k+2"),
    ("y=2x+4", "y = 2x + 3"), ("5x-7y+11z-4=0", "5x - 7y + 11z + 4 = 0"), ("x=6", "5"), ("x^2=5", "5"),
    ("6+5i", "6 - 5i"), ("6-5", "6 - 5i"), ("52_8", "42"), ("42", "52_8"), ("52_8", "52_9"),
    ("\\text{west}", "\\text{east}"), ("B", "\\text{(C)}"), ("\\text{(A)}", "\\text{(C)}"),
    ("50", "0.5"), ("0.5\\%", "50"), ("90", "\\frac{\\pi}{2}"), ("-7", "7"), ("70", "7"),
    ("", "7"), ("x", "y"), ("\\frac{1}{0}", "1"), ("e^{t}", "e^{-t}"), ("\\sin t", "\\cos t"),
    ("1.5", "1.50001"), ("\\text{A6}_{11}", "\\text{A5}_{11}"), ("5 \\text{ cm}", "6 \\text{ cm}"),
    ("1000", "1,001"), ("\\infty", "-\\infty"), ("2\\pi", "\\pi"),
]


# ---- decimal gold and a problem that asks for rounding: equal only then (decimal policy, rule 2) ---
ROUNDED_ONLY = [("\\frac13", "0.333"), ("0.3333", "0.333"), ("0.0062", "0.006"), ("1.62", "1.6"),
                ("\\frac{\\sqrt2}{2}", "0.707")]
ROUNDING_PROBLEM = "Express your answer as a decimal rounded to the stated precision."


@pytest.mark.parametrize("answer,gold", ROUNDED_ONLY)
def test_rounded_gold_matches_only_when_rounding_is_asked(answer, gold):
    assert is_equivalent(answer, gold, problem=ROUNDING_PROBLEM)
    assert score(f"so \\boxed{{{answer}}}.", gold, problem=ROUNDING_PROBLEM) == 1.0
    assert not is_equivalent(answer, gold)
    assert score(f"so \\boxed{{{answer}}}.", gold) == 0.0


@pytest.mark.parametrize("answer,gold", EQUAL)
def test_equal(answer, gold):
    assert is_equivalent(answer, gold)
    assert score(f"We find that the result is \\boxed{{{answer}}}.", gold) == 1.0


@pytest.mark.parametrize("answer,gold", NOT_EQUAL)
def test_not_equal(answer, gold):
    assert not is_equivalent(answer, gold)
    assert score(f"We find that the result is \\boxed{{{answer}}}.", gold) == 0.0


# ---- adversarial model output: scored 0, each within a time bound -----------------------------
TOWER = "2^{" * 40 + "2" + "}" * 40
ADVERSARIAL = [
    "\\boxed{" + TOWER + "}",
    "\\boxed{2^{2^{2^{2^{100}}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{(x+1)^{100000}}",
    "\\boxed{x^{99999999999999999999}}",
    "\\boxed{100000!}",
    "\\boxed{(10^{1000})!}",
    "\\boxed{1e999999999}",
    "\\boxed{" + "{" * 100_000 + "5" + "}" * 100_000 + "}",
    "\\boxed{" + "{" * 200_000,
    "{" * 200_000,
    "\\boxed{" + "(" * 5_000 + "5" + ")" * 5_000 + "}",
    "\\boxed{" + "\\frac{1}{" * 3_000 + "5" + "}" * 3_000 + "}",
    "\\boxed{" + "1+" * 50_000 + "1}",
    "\\boxed{" + "9" * 100_000 + "}",
    "\\boxed{" * 50_000,
    "the answer is " + "x" * 300_000,
    "1" * 500_000,
    "\\boxed{" + ",".join(["1"] * 10_000) + "}",
    "\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2}}}}}}}}}^{1000000}}",
    "\\boxed{\\begin{pmatrix}" + " & ".join(["1"] * 5000) + "\\end{pmatrix}}",
    "x" * 2_000_000,
    "\\boxed{1}" + " " * 200_000 + "x\\boxed{2}",  # a long gap between boxes (regex backtracking)
    "\\boxed{1}" + ", and " * 100_000 + "\\boxed{2}",
    "\\boxed{1} and " * 50_000 + "\\boxed{2}",
    "The final answer is **" + "*" * 300_000,
    "\\boxed{2^{i!}}",
    "\\boxed{" + "x>" * 400 + "1}",
]


def test_adversarial_inputs_score_zero_quickly():
    for response in ADVERSARIAL:
        start = time.perf_counter()
        assert score(response, "5") == 0.0
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"{elapsed:.2f}s on {response[:60]!r}"


def test_adversarial_inputs_in_the_pool():
    start = time.perf_counter()
    scores = score_batch(ADVERSARIAL + ["\\boxed{5}"], ["5"] * (len(ADVERSARIAL) + 1), workers=2, timeout=5.0)
    assert scores == [0.0] * len(ADVERSARIAL) + [1.0]
    assert time.perf_counter() - start < 30.0


def test_bounded_but_legal_sizes_still_work():
    assert is_equivalent("2^{100}", "1267650600228229401496703205376")
    assert is_equivalent("10!", "3628800")
    assert not is_equivalent("2^{100}", "1267650600228229401496703205377")


# ---- the benchmark data: every gold answers itself, a perturbed gold does not ------------------
def _golds(name):
    with open(DATA_DIR / name) as f:
        return [json.loads(line)["answer"] for line in f]


@needs_data
@pytest.mark.parametrize("name", ["math500.jsonl", "minerva.jsonl", "math_train.jsonl", "olympiadbench.jsonl"])
def test_data_golds_score_themselves(name):
    golds = _golds(name)
    right = [f"Working it out ... so the answer is \\boxed{{{g}}}." for g in golds]
    wrong = [f"Working it out ... so the answer is \\boxed{{{perturb_answer(g)}}}." for g in golds]
    assert [g for g, r in zip(golds, right) if score(r, g) != 1.0] == []
    assert [g for g, w in zip(golds, wrong) if score(w, g) != 0.0] == []


def test_perturb_answer_changes_the_answer():
    assert perturb_answer("\\frac{14}{3}") == "\\frac{24}{3}"
    assert perturb_answer("\\text{(C)}") == "\\text{(D)}"
    assert perturb_answer("p - q") == "p - x"
    assert perturb_answer("\\pi") == "\\pi+1"


# ---- score / score_batch interface ------------------------------------------------------------
def test_empty_gold_is_an_error():
    with pytest.raises(ValueError, match="item 1"):
        score_batch(["\\boxed{1}", "\\boxed{2}"], ["1", ""], workers=0)
    with pytest.raises(ValueError, match="item 0"):
        score_batch(["\\boxed{1}"], [None], workers=0)
    with pytest.raises(ValueError):
        score("\\boxed{1}", "  ")
    with pytest.raises(ValueError):
        score_batch(["a"], ["1", "2"], workers=0)


def _mixed_batch():
    golds = ["7", "\\frac{1}{2}", "(1,2)", "\\sqrt{12}", "x=5", "4.5e33", "\\text{(C)}", "3"] * 6
    answers = ["7", "0.5", "(1,2)", "2\\sqrt3", "5", "4.52\\times10^{33}", "C", "4"] * 6
    expected = [1.0] * 7 + [0.0]
    return [f"so \\boxed{{{a}}}" for a in answers], golds, expected * 6


def test_score_batch_in_process_and_pool_agree_and_pool_is_reused():
    responses, golds, expected = _mixed_batch()
    assert score_batch(responses, golds, workers=0) == expected
    assert score_batch(responses, golds, workers=2) == expected
    pids = [w.proc.pid for w in verify._POOL.workers]
    assert score_batch(responses[::-1], golds[::-1], workers=2) == expected[::-1]
    assert [w.proc.pid for w in verify._POOL.workers] == pids  # same processes, no respawn
    assert score_batch([], [], workers=2) == []


def test_stuck_item_is_scored_zero_and_its_worker_replaced():
    # An item that needs sympy makes its worker import sympy (~0.3 s or more); with a 0.02 s limit
    # it is killed from outside and scored 0, and a fresh worker takes over the rest.
    responses, golds, expected = _mixed_batch()
    slow = ("so \\boxed{\\frac{1}{\\sqrt{3}}}", "\\frac{\\sqrt{3}}{3}")
    pool = verify.VerifierPool(workers=1)
    try:
        first = pool.workers[0].proc
        scores = pool.score([slow[0]] + responses[:8], [slow[1]] + golds[:8], timeout=0.02)
        assert scores[0] == 0.0 and len(scores) == 9
        assert pool.stats["timeouts"] >= 1
        assert first.poll() is not None  # killed
        second = pool.workers[0].proc
        assert second.pid != first.pid and second.poll() is None
        # with a generous limit the same item is right, and the rest of the batch too
        assert pool.score([slow[0]] + responses, [slow[1]] + golds, timeout=30.0) == [1.0] + expected
    finally:
        pool.close()
    assert pool.workers == [] and second.poll() is not None  # close() leaves no process behind


# ==== issue 15 ====================================================================================
# ---- 1. a time bound on every call of score(), in-process -------------------------------------------
# Pairs that sympy cannot settle quickly (without a limit each runs far past any timeout), the
# issue's 2^{i!} against 2\sqrt{2}, and a true trigonometric identity against 5 of about the length of
# the (which it does not quote). Each call must return within its timeout plus scheduling slack.
TRIG_IDENTITY = ("(\\sin x+\\cos x)^{40}-(1+\\sin(2x))^{20}+\\sin(x)^{6}\\cos(x)^{6}"  # 87 characters, = 5
                 "-\\frac{\\sin(2x)^{6}}{64}+5")
SLOW = [
    ("\\boxed{2^{i!}}", "2\\sqrt{2}"),
    (f"\\boxed{{{TRIG_IDENTITY}}}", "5"),
    ("\\boxed{(\\sin x+\\cos x)^{40}}", "(1+\\sin(2x))^{20}"),
    ("\\boxed{\\sin(x)^{60}\\cos(x)^{60}}", "\\frac{\\sin(2x)^{60}}{2^{60}}"),
    ("\\boxed{(\\sin x+\\cos x)^{40}+1}", "(1+\\sin(2x))^{20}+1"),
    ("\\boxed{\\sin(x)^{50}\\cos(x)^{50}}", "\\frac{\\sin(2x)^{50}}{2^{50}}"),
    ("\\boxed{(\\cos x-\\sin x)^{40}}", "(1-\\sin(2x))^{20}"),
    ("\\boxed{2^{i!}+1}", "1+2\\sqrt{2}"),
    ("\\boxed{(i!)!}", "5"),
]
LIMIT = 1.0
# score() is interrupted 0.25 s before LIMIT to unwind; SLACK covers scheduling on this shared 2-core machine.
# Twice in about 30 runs of this file at load 8-10 a call here returned late (by 0.27 s and 1.7 s; cause not
# found, not seen again in 16 instrumented runs), so a late call is timed once more before the test fails:
# a missing time bound is late every time.
SLACK = 0.35


def _seconds(response, gold, limit):
    start = time.perf_counter()
    assert score(response, gold, timeout=limit) == 0.0
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def sympy_loaded():
    mathparse.load_sympy()  # the one import per process is the only step the alarm waits for


@pytest.mark.parametrize("response,gold", SLOW)
def test_slow_pairs_stop_at_the_timeout_in_process(response, gold, sympy_loaded):
    elapsed = _seconds(response, gold, LIMIT)
    if elapsed >= LIMIT + SLACK:
        elapsed = _seconds(response, gold, LIMIT)
    assert elapsed < LIMIT + SLACK, f"{elapsed:.2f}s on {response!r}"


def test_adversarial_inputs_under_a_short_timeout(sympy_loaded):
    for response in ADVERSARIAL:
        start = time.perf_counter()
        assert score(response, "5", timeout=LIMIT) == 0.0
        assert time.perf_counter() - start < LIMIT + SLACK, response[:60]


def test_score_batch_in_process_keeps_the_time_limit(sympy_loaded):
    responses = [r for r, _ in SLOW[:3]] + ["\\boxed{5}"]
    golds = [g for _, g in SLOW[:3]] + ["5"]
    start = time.perf_counter()
    assert score_batch(responses, golds, workers=0, timeout=LIMIT) == [0.0, 0.0, 0.0, 1.0]
    assert time.perf_counter() - start < 3 * (LIMIT + SLACK)


def test_a_true_identity_that_sympy_proves_in_time_still_scores_one(sympy_loaded):
    identity = "\\tan(x)\\tan(\\frac{\\pi}{3}-x)\\tan(\\frac{\\pi}{3}+x)/\\tan(3x)+4"  # tan 3x / tan 3x + 4
    assert score(f"\\boxed{{{identity}}}", "5", timeout=10.0) == 1.0
    assert score(f"\\boxed{{{identity}}}", "6", timeout=10.0) == 0.0


def test_the_alarm_is_disarmed_and_the_callers_timer_restored(sympy_loaded):
    import signal
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.perf_counter()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        start = time.perf_counter()
        assert score(*SLOW[2], timeout=LIMIT) == 0.0
        remaining, elapsed = signal.getitimer(signal.ITIMER_REAL)[0], time.perf_counter() - start
        assert 0.0 < remaining <= 2.0 - elapsed + 0.01  # the caller's timer runs on, less the time spent
        assert signal.getsignal(signal.SIGALRM) is not verify._on_alarm
        while not fired and time.perf_counter() - start < 5.0:
            time.sleep(0.01)
        assert fired and 1.9 < fired[0] - start < 2.6  # the caller's handler fired on its own schedule
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert score("\\boxed{5}", "5", timeout=LIMIT) == 1.0
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0.0  # nothing left armed after score()


def test_the_timeout_is_not_swallowed_by_except_exception():
    def stubborn():
        while True:
            try:
                time.sleep(0.01)
                raise ValueError("library code that retries on any Exception")
            except Exception:
                pass
    start = time.perf_counter()
    with pytest.raises(verify._Timeout):
        verify._call_with_time_limit(0.2, stubborn)
    assert time.perf_counter() - start < 0.2 + SLACK


def test_score_outside_the_main_thread_runs_in_a_worker_under_the_limit():
    import threading
    out = []
    # the first call starts the worker process (slow under load); the second is timed
    jobs = [("so \\boxed{2\\sqrt3}", "\\sqrt{12}"), SLOW[2], ("so \\boxed{7}", "7")]

    def run():
        for response, gold in jobs:
            start = time.perf_counter()
            out.append((score(response, gold, timeout=LIMIT), time.perf_counter() - start))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert [s for s, _ in out] == [1.0, 0.0, 1.0]
    assert out[1][1] < LIMIT + SLACK, out
    assert verify._THREAD_POOL is not None and verify._THREAD_POOL.stats["timeouts"] >= 1


def test_timeout_none_is_unbounded_and_still_scores():
    assert score("\\boxed{\\frac{1}{\\sqrt{3}}}", "\\frac{\\sqrt{3}}{3}", timeout=None) == 1.0


# ---- 2. answer extraction: markdown, dollars, several boxes -----------------------------------------
EXTRACT_15 = [
    ("**Final Answer:** 42", "42"),
    ("The final answer is **42**.", "42"),
    ("Answer: **17**", "17"),
    ("Thus, the answer is $\\$3$.", "3"),
    ("**Final Answer**: 7", "7"),
    ("**Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("The answer is: **(C)**", "(C)"),
    ("The final answer is $\\$1,\\!000$.", "1,\\!000"),
    ("\\boxed{3} and \\boxed{4}", "3, 4"),
    ("The roots are $\\boxed{1}$, $\\boxed{2}$, and $\\boxed{3}$.", "1, 2, 3"),
    ("So \\boxed{2} \\text{ and } \\boxed{3}", "2, 3"),
    ("$x = \\boxed{2}$ or $x = \\boxed{3}$", "2, 3"),
    ("x = \\boxed{2}, y = \\boxed{-1}", "2, -1"),
    ("either \\boxed{5} or \\boxed{6}", None),
    ("$\\boxed{5}$ or $\\boxed{6}$.", None),
    ("We try \\boxed{7}. Then the answer is \\boxed{8}.", "8"),
    ("**Final Answer**: The final answer is $\\boxed{12}$", "12"),
    ("\\boxed{\\boxed{5}}", "5"),
]


@pytest.mark.parametrize("response,expected", EXTRACT_15)
def test_extract_answer_formats_models_write(response, expected):
    assert extract_answer(response) == expected


SCORE_15 = [
    ("**Final Answer:** 42", "42", 1.0), ("The final answer is **42**.", "42", 1.0), ("Answer: **17**", "17", 1.0),
    ("Thus, the answer is $\\$3$.", "3", 1.0), ("Thus, the answer is $\\$3$.", "\\$3", 1.0),
    ("\\boxed{3} and \\boxed{4}", "3, 4", 1.0), ("\\boxed{3} and \\boxed{4}", "4", 0.0),
    ("either \\boxed{5} or \\boxed{6}", "6", 0.0), ("either \\boxed{5} or \\boxed{6}", "5", 0.0),
    ("$x = \\boxed{2}$ or $x = \\boxed{3}$", "2, 3", 1.0), ("x = \\boxed{2}, y = \\boxed{-1}", "(2,-1)", 1.0),
    ("x = \\boxed{2}, y = \\boxed{-1}", "(-1,2)", 0.0), ("first \\boxed{1}, then \\boxed{2}", "1, 2", 0.0),
    ("The answer is: **(C)**", "\\text{(C)}", 1.0), ("**Answer:** $\\frac{1}{2}$", "0.5", 1.0),
]


@pytest.mark.parametrize("response,gold,expected", SCORE_15)
def test_score_with_formats_models_write(response, gold, expected):
    assert score(response, gold) == expected


# ---- 3. decimal policy ----------------------------------------------------------------------------------
ROUND = "Give your answer to the nearest hundredth."
DECIMALS = [
    # rule 1: a plain decimal gold is exact unless the problem asks for rounding
    ("0.45", "0.5", None, False), ("0.54", "0.5", None, False), ("2.46", "2.5", None, False),
    ("4.254", "4.25", None, False), ("\\pi", "3.14", None, False), ("0.543", "0.54", None, False),
    ("\\frac{17}{4}", "4.25", None, True), ("4.250", "4.25", None, True), ("\\frac12", "0.5", None, True),
    # rule 2: a rounded gold matches an answer that rounds to it (half away from zero)
    ("0.543", "0.54", ROUND, True), ("4.254", "4.25", ROUND, True), ("\\pi", "3.14", ROUND, True),
    ("-0.545", "-0.55", ROUND, True), ("0.55", "0.54", ROUND, False), ("0.5", "0.54", ROUND, False),
    ("3.1", "3.14", ROUND, False), ("2.64\\times10^{4}", "2.6\\times10^{4}", None, True),
    ("2.66\\times10^{4}", "2.6\\times 10^4", None, False),
    # rule 3: a long decimal (>= 6 significant digits) matches a rational gold on every digit it gives
    ("0.333333333", "\\frac{1}{3}", None, True), ("0.333333", "\\frac13", None, True),
    ("0.33333", "\\frac13", None, False), ("0.666667", "\\frac23", None, True),
    ("0.666666", "\\frac23", None, True), ("0.666668", "\\frac23", None, False),
    ("0.1428571", "\\frac{1}{7}", None, True), ("-0.333333", "-\\frac13", None, True),
    ("3.14159265", "\\pi", None, False), ("1.4142136", "\\sqrt2", None, False),
    ("2.0000001", "2", None, False), ("0.5000001", "0.5", None, False),
]


@pytest.mark.parametrize("answer,gold,problem,expected", DECIMALS)
def test_decimal_policy(answer, gold, problem, expected):
    assert is_equivalent(answer, gold, problem) is expected
    assert score(f"so \\boxed{{{answer}}}", gold, problem=problem) == float(expected)


@pytest.mark.parametrize("problem,asked", [
    ("Express your answer as a decimal to the nearest hundredth.", True),
    ("Give your answer in degrees to 3 significant figures.", True),
    ("Round your answer to two decimal places.", True), ("Estimate the mass of the Sun.", True),
    ("How many apples are left?", False), ("Write 3/20 as a decimal.", False), (None, False),
    ("In how many ways can 7 people sit around a round table?", False),
    ("Find the distance between the point and the nearest vertex.", False),
    ("In every round, player A erases two numbers.", False), ("Round 2.47 to the nearest tenth.", True)])
def test_rounding_asked(problem, asked):
    assert mathparse.rounding_asked(problem) is asked


def test_problems_reach_the_pool():
    responses, golds = ["so \\boxed{0.543}"] * 2, ["0.54"] * 2
    assert score_batch(responses, golds, workers=2, problems=[ROUND, None]) == [1.0, 0.0]
    assert score_batch(responses, golds, workers=0, problems=[ROUND, None]) == [1.0, 0.0]


# ---- 4. big powers, binomials and factorials are compared exactly ------------------------------------
SIZES = [
    ("2^{1010}/2", "2^{1009}", True), ("2^{2022}\\cdot 2-1", "2^{2023}-1", True),
    ("3\\cdot 3^{1000}", "3^{1001}", True),
    ("\\binom{2024}{2}", str(math.comb(2024, 2)), True), ("170!", str(math.factorial(170)), True),
    ("\\frac{2^{2024}}{4}", "2^{2022}", True), ("4^{1000}", "2^{2000}", True),
    ("\\binom{100}{50}", str(math.comb(100, 50)), True), ("\\binom{10^6}{2}", str(math.comb(10**6, 2)), True),
    ("2^{3000}", str(2**3000), True), ("\\frac{1000!}{999!}", "1000", True), ("(2^{1000})^2", "2^{2000}", True),
    ("2^{1010}/2", "2^{1010}", False), ("2^{2023}-1", "2^{2023}+1", False),
    ("\\binom{2024}{2}", str(math.comb(2024, 2) + 1), False), ("170!", str(math.factorial(170) + 1), False),
    ("3^{1001}", "3^{1000}", False), ("2^{3000}", str(2**3000 - 1), False),
]


@pytest.mark.parametrize("answer,gold,expected", SIZES)
def test_big_numbers_exactly(answer, gold, expected):
    assert is_equivalent(answer, gold) is expected


@pytest.mark.parametrize("answer,gold", [
    ("2^{2^{2^{2^{2}}}}", "2^{65536}"), ("10^{10^{10}}", "10^{10^{10}}+0"), ("(10^{6})!", "(10^{6})!+0"),
    ("\\binom{10^{9}}{10^{5}}", "\\binom{10^{9}}{10^{5}}+0"), ("3^{3^{3^{3}}}", "3^{3^{27}}+0")])
def test_towers_are_refused_quickly(answer, gold):
    start = time.perf_counter()
    assert not is_equivalent(answer, gold)
    assert time.perf_counter() - start < 1.0


# ---- 5. notation ------------------------------------------------------------------------------------------
NOTATION = [
    ("\\lceil n/2\\rceil+1", "1+\\lceil n/2\\rceil", True),
    ("\\left\\lfloor \\frac{n}{2}\\right\\rfloor", "\\lfloor n/2\\rfloor", True),
    ("\\lceil n/2\\rceil", "\\lfloor n/2\\rfloor", False),
    ("2x", "f(x)=2x", True), ("f(x)=2x", "2x", True), ("g(t) = t^2+1", "1+t^2", True), ("2x", "f(x)=3x", False),
    ("\\emptyset", "\\varnothing", True), ("\\{\\}", "\\emptyset", True), ("∅", "\\varnothing", True),
    ("\\emptyset", "\\{0\\}", False),
    ("k\\ge 3", "[3,\\infty)", True), ("x>2", "(2,\\infty)", True), ("x \\leq -1", "(-\\infty,-1]", True),
    ("-2<x\\le 5", "(-2,5]", True), ("3\\le k", "[3, \\infty)", True), ("x\\ge 3", "(3,\\infty)", False),
    ("x<3", "(-\\infty,3]", False),
    ("0.\\overline{3}", "\\frac13", True), ("0.1\\overline{6}", "\\frac16", True),
    ("1.\\overline{27}", "\\frac{14}{11}", True), ("0.\\overline{3}", "0.3", False),
    ("x²", "x^2", True), ("x³+1", "1+x^3", True), ("x²", "x^3", False), ("2x²-1", "2x^2-1", True),
    ("5\\text{ km}", "5 \\text{ km}", True), ("5 \\text{ meters}", "5\\text{ m}", True),
    ("12 \\text{ inches}", "12\\text{ in}", True), ("5\\text{ km}", "5\\text{ m}", False),
    ("3 \\text{ cm}^2", "3\\text{ cm}", False), ("5\\text{ km}", "5", True),
    ("5000\\%", "50", False), ("50\\%", "50", True), ("150\\%", "1.5", True),
]


@pytest.mark.parametrize("answer,gold,expected", NOTATION)
def test_notation(answer, gold, expected):
    assert is_equivalent(answer, gold) is expected


# ---- the exact identity test at rational points (no sympy) -----------------------------------------
IDENTITY = [
    ("-5i+6", "6-5i", True), ("\\pi \\cdot 288", "288\\pi", True), ("(20000)/(\\pi)", "\\frac{20000}{\\pi}", True),
    ("(x+1)^2", "x^2+2x+1", True), ("\\frac{x^2-1}{x-1}", "x+1", True), ("ab+5b+2a+10", "(a+5)(b+2)", True),
    ("2\\pi", "\\pi", False), ("(x+1)^2", "x^2+2x+2", False), ("\\pi r^2", "r^2\\pi", True),
    ("2\\pi r", "\\pi r", False),
    ("x^{20}-1", "(x^{10}-1)(x^{10}+1)", True), ("e^2+1", "1+e\\cdot e", True),
    ("\\sqrt{117}", "3\\sqrt{13}", True), ("1+\\sqrt{12}", "1+2\\sqrt{3}", True), ("\\sqrt{8}", "3\\sqrt2", False),
    ("\\sqrt{\\frac{1}{3}}", "\\frac{\\sqrt3}{3}", True), ("(3\\sqrt{3})/(4)", "\\frac{3\\sqrt{3}}{4}", True),
]


@pytest.mark.parametrize("answer,gold,expected", IDENTITY)
def test_rational_functions_of_symbols_and_constants_need_no_sympy(answer, gold, expected, monkeypatch):
    def no_sympy(*args, **kwargs):
        raise AssertionError("reached sympy")
    monkeypatch.setattr(mathparse, "_sympy_zero", no_sympy)
    assert is_equivalent(answer, gold) is expected


@pytest.mark.parametrize("answer,gold,expected", [
    ("i^2", "-1", True), ("\\frac{1}{i}", "-i", True), ("(1+i)^2", "2i", True), ("6+5i", "6-5i", False),
    ("\\sqrt{2}\\sqrt{3}", "\\sqrt6", True), ("\\frac{1}{\\sqrt3}", "\\frac{\\sqrt3}{3}", True)])
def test_i_and_roots_are_not_free_symbols(answer, gold, expected):  # i^2 = -1: a "different" goes to sympy
    assert is_equivalent(answer, gold) is expected
