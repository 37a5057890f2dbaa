"""Held out means unseen (issue 43): no training draw of the arith task holds a held-out problem in another
form (3 + 5 for a held-out 5 + 3, a + c - b for a - b + c, the same story with other names). Checked with a
canonical form read back from the question's text here, independent of tiny.arith_form (which works on the
generator's own operands), on the training draws of every config in configs/experiments/ that trains on the
arith task.

Before the change (training skipped exact held-out strings only) the overlap check failed on every draw:
24 of level 1's 30 held-out problems had their swapped form in training (about a third of level-1 rows)."""
import functools
import hashlib
import random
import re
from collections import Counter

import pytest

import tiny
from config import load_config
from conftest import ROOT
from data import load_rows

# the configs whose training draw is the arith task, and the seeds their runs used (sweeps: 0-4)
ARITH_CONFIGS = ("smol_learn", "smol_levels", "smol_hard", "smol_compare")
SEEDS = range(5)
# sha256 of the five held-out files (level1.jsonl .. level5.jsonl, in order) as written before the change:
# the held-out problems stay the same, so the committed before-and-after figures stay comparable
HELDOUT_SHA256 = "08fc290fa1a309ca14f8931961a0459ed7784d9726cc53c7a5b9725055f0d9dd"


@functools.lru_cache(maxsize=None)  # the same question recurs (level 1 has 100)
def text_form(problem):
    """A question's canonical form read from its text: the multiset of its signed terms, a term being
    (sign, its factors sorted). "What is 12 * 7 - 5?" -> {(+1, (7, 12)): 1, (-1, (5,)): 1}. A word problem's
    terms: the start count, +x per "buys x more", -x per "gives x to", +k*m per "gets k boxes with m"."""
    m = re.fullmatch(r"What is (\d+(?: [-+*] \d+)*)\?", problem)
    terms = []
    if m:
        tokens = m.group(1).split(" ")
        sign, factors = 1, [int(tokens[0])]
        for op, x in zip(tokens[1::2], tokens[2::2]):
            if op == "*":
                factors.append(int(x))
                continue
            terms.append((sign, tuple(sorted(factors))))
            sign, factors = (1 if op == "+" else -1), [int(x)]
        terms.append((sign, tuple(sorted(factors))))
    else:
        start = re.match(r"[A-Z][a-z]+ has (\d+) [a-z]+ and ", problem)
        assert start, f"neither an expression nor a story: {problem!r}"
        terms.append((1, (int(start.group(1)),)))
        steps = r"buys (\d+) more|gives (\d+) to|gets (\d+) boxes with (\d+) "
        for buy, give, k, each in re.findall(steps, problem):
            terms.append((1, (int(buy),)) if buy else (-1, (int(give),)) if give
                         else (1, tuple(sorted((int(k), int(each))))))
    return frozenset(Counter(terms).items())


def heldout_text_forms():
    return {text_form(r["problem"]): lv for lv in tiny.ARITH_LEVELS for r in tiny.arith_heldout_rows(lv)}


def old_rule_rows(n, seed, levels):
    """The training draw as it was before: the same seed stream, skipping exact held-out questions only."""
    held = {r["problem"] for lv in tiny.ARITH_LEVELS for r in tiny.arith_heldout_rows(lv)}
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        level = rng.choice(levels)
        problem, answer = tiny.arith_problem(level, rng)[:2]
        if problem not in held:
            rows.append({"problem": problem, "answer": str(answer), "level": level})
    return rows


def config_draws():
    """{(data.train, seed): the 100_000 training rows train.py walks} for every arith config and seed."""
    draws = {}
    for name in ARITH_CONFIGS:
        cfg = load_config(ROOT / "configs/experiments" / f"{name}.yaml")
        assert cfg.data.train.partition(":")[0] == "arith", f"{name}.yaml no longer trains on arith"
        for seed in sorted({cfg.seed, *SEEDS}):
            if (cfg.data.train, seed) not in draws:
                draws[cfg.data.train, seed] = load_rows(cfg.data, seed)
    return draws


def test_no_form_of_a_heldout_problem_is_trained():
    held = heldout_text_forms()
    overlaps = []
    for (train, seed), rows in config_draws().items():
        hits = Counter()
        for r in rows:
            if text_form(r["problem"]) in held:
                hits[r["level"], held[text_form(r["problem"])]] += 1
        if hits:
            overlaps.append(f"data.train={train} seed {seed}: {dict(sorted(hits.items()))}")
    assert not overlaps, ("training rows that are a held-out problem in another form, by (training level, "
                          "held-out level):\n" + "\n".join(overlaps))


def test_heldout_problems_are_unchanged(tmp_path):
    paths = tiny.write_arith_heldout(tmp_path)
    assert hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest() == HELDOUT_SHA256


def test_level1_by_hand():
    """Level 1 is all 100 sums a + b of digits: training draws exactly those whose pair, in either order,
    is not held out. Before, training drew the 70 non-held-out strings: 24 of the 30 held-out problems
    had their swapped form among them (the other 6: two doubles like 4 + 4, two pairs held out both ways)."""
    held = [tuple(map(int, re.findall(r"\d", r["problem"]))) for r in tiny.arith_heldout_rows(1)]
    allowed = {f"What is {a} + {b}?" for a in range(10) for b in range(10)
               if (a, b) not in held and (b, a) not in held}
    train = {r["problem"] for r in tiny.arith_rows(5000, seed=0, levels=(1,))}
    assert train == allowed and len(allowed) == 46
    swapped_in_old_pool = [(a, b) for a, b in held if (b, a) not in held]
    assert len(held) == 30 and len(swapped_in_old_pool) == 24
    assert sum(a == b for a, b in held) == 2 and len({frozenset(p) for p in held}) == 28


def test_arith_form_agrees_with_the_text():
    """tiny.arith_form (from the generator's operands) groups problems exactly as text_form does, over the
    held-out problems and a draw of every level; and by hand on the forms the generator produces."""
    draws = [d for lv in tiny.ARITH_LEVELS for d in tiny.arith_heldout_draws(lv)]
    rng = random.Random(5)
    draws += [tiny.arith_problem(lv, rng) for lv in tiny.ARITH_LEVELS for _ in range(3000)]
    pairs = {(tiny.arith_form(terms), text_form(problem)) for problem, _, terms in draws}
    assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs)  # a one-to-one map
    form = tiny.arith_form
    assert form([(1, (5,)), (1, (3,))]) == form([(1, (3,)), (1, (5,))]) == ((((3,), (5,))), ())
    assert form([(1, (50,)), (1, (20,)), (-1, (30,))]) == form([(1, (50,)), (-1, (30,)), (1, (20,))])
    assert form([(1, (50,)), (-1, (20,))]) != form([(1, (20,)), (-1, (50,))])  # 50 - 20 is not 20 - 50
    assert form([(1, (7,)), (1, (2, 5))]) == form([(1, (7,)), (1, (5, 2))])  # 2 boxes of 5, 5 boxes of 2
    assert form([(1, (7,)), (1, (2, 5))]) != form([(1, (7,)), (1, (10,))])  # boxes are not a purchase of 10
    a = "Tom has 5 apples and buys 3 more. Then he gives 2 to Anna. How many apples does Tom have now?"
    b = "Mia has 5 cards and gives 2 to Leo. Then she buys 3 more. How many cards does Mia have now?"
    assert text_form(a) == text_form(b) != text_form(a.replace("buys 3", "buys 4"))
    for bad in ([], [(0, (3,))], [(1, ())]):
        with pytest.raises(ValueError, match="arith terms"):
            form(bad)


def test_only_other_forms_are_removed_and_how_many():
    """The new draw is the old one with the rows whose form is held out taken out, in the same order; and
    how many training problems that removes per level (printed: how much the committed figures may move).
    Pools counted exactly where small (levels 1, 2, 4, by enumeration); levels 3 and 5 by their draws."""
    held = heldout_text_forms()
    held_text = {r["problem"] for lv in tiny.ARITH_LEVELS for r in tiny.arith_heldout_rows(lv)}
    pools = {1: [f"What is {a} + {b}?" for a in range(10) for b in range(10)],
             2: [f"What is {a} + {b}?" for a in range(10, 100) for b in range(10, 100)]
             + [f"What is {a} - {b}?" for a in range(10, 100) for b in range(10, a + 1)],
             4: [f"What is {a} * {b}?" for a in range(11, 100) for b in range(3, 10)]}
    for lv, pool in pools.items():
        before = [p for p in pool if p not in held_text]
        after = [p for p in before if text_form(p) not in held]
        print(f"level {lv}: {len(pool)} problems, {len(before)} trainable before, {len(before) - len(after)} "
              f"removed, {len(after)} remain")
    for train in ("arith", "arith:1-2", "arith:2"):
        levels = tiny.parse_levels(train.partition(":")[2])
        old = old_rule_rows(100_000, 0, levels)
        kept = [r for r in old if text_form(r["problem"]) not in held]
        new = tiny.arith_rows(len(kept), 0, levels)
        assert [{k: r[k] for k in ("problem", "answer", "level")} for r in new] == kept
        for lv in levels:
            rows = [r["problem"] for r in old if r["level"] == lv]
            gone = [p for p in rows if text_form(p) in held]
            print(f"data.train={train} seed 0, level {lv}: of {len(rows)} rows drawn before, {len(gone)} "
                  f"({100 * len(gone) / len(rows):.1f}%, {len(set(gone))} distinct problems) removed")
