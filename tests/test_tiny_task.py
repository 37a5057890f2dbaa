"""The tasks of tiny.py. The leveled arithmetic task: each level is what it claims (answers recomputed
by mathparse.py's parser), training rows never equal a held-out row (nor another form of one:
test_heldout.py), rows are deterministic per seed. The
boxed task: rows, worked answers that verify.py scores, the warm start's accuracy in its intended range
(20-40% greedy), and RL through train.py raising validation accuracy on it."""
import json
import os
import re
import subprocess
import sys

import pytest

import eval as ev
import rollout
import tiny
import mathparse
import verify
from conftest import ROOT, recompute_answer
from data import DataConfig, load_benchmark, load_rows


# ---------------------------------------------------------------------------------------------
# The leveled arithmetic task

def check_arith_row(row):
    """The row's level is what ARITH_LEVELS says, and its answer is right, computed a second way:
    mathparse.py's expression parser evaluates the question's arithmetic (exact rationals)."""
    level, answer = row["level"], int(row["answer"])
    if level == 5:
        assert recompute_answer(row["problem"]) == (answer, 2), row
        return
    expr = re.fullmatch(r"What is (.+)\?", row["problem"]).group(1)
    operands, ops = [int(x) for x in re.findall(r"\d+", expr)], re.findall(r"[-+*]", expr)
    digits = [len(str(x)) for x in operands]
    if level == 1:
        assert digits == [1, 1] and ops == ["+"], row
    elif level == 2:
        assert digits == [2, 2] and ops in (["+"], ["-"]) and answer >= 0, row
    elif level == 3:
        assert digits == [2, 2, 2] and set(ops) <= {"+", "-"} and len(ops) == 2, row
        running = operands[0] - operands[1] if ops[0] == "-" else operands[0] + operands[1]
        assert running >= 0 and answer >= 0, row
    else:
        assert level == 4 and digits == [2, 1] and ops == ["*"] and 3 <= operands[1] <= 9, row
    assert mathparse.is_equivalent(expr, str(answer)) and not mathparse.is_equivalent(expr, str(answer + 1)), row


def test_arith_levels_are_what_they_claim():
    rows = tiny.arith_rows(3000, seed=11)
    assert {r["level"] for r in rows} == set(tiny.ARITH_LEVELS)
    for r in rows + [h for lv in tiny.ARITH_LEVELS for h in tiny.arith_heldout_rows(lv)]:
        check_arith_row(r)
    assert {r["level"] for r in tiny.arith_rows(500, seed=11, levels=(1, 2))} == {1, 2}
    # parsing of data.train's level list, and the errors that name the problem
    assert tiny.parse_levels("1-3") == (1, 2, 3) and tiny.parse_levels("5,1,2") == (1, 2, 5)
    assert tiny.parse_levels("") == tuple(tiny.ARITH_LEVELS)
    with pytest.raises(ValueError, match="no level"):
        tiny.parse_levels("2-9")
    with pytest.raises(ValueError, match="1-3 or 1,2,5"):
        tiny.parse_levels("easy")
    with pytest.raises(ValueError, match="unknown arith level"):
        tiny.arith_heldout_rows(0)


def test_arith_train_and_heldout_never_overlap():
    heldout = {lv: tiny.arith_heldout_rows(lv) for lv in tiny.ARITH_LEVELS}
    for lv, rows in heldout.items():
        assert len(rows) == tiny.ARITH_HELDOUT_ROWS[lv] == len({r["problem"] for r in rows})
        assert all(r["level"] == lv for r in rows)
    held = {r["problem"] for rows in heldout.values() for r in rows}
    train = tiny.arith_rows(20_000, seed=0)
    assert not held & {r["problem"] for r in train}
    # level 1 has 10 x 10 problems: training sees exactly the 46 that are neither held out nor a held-out
    # problem swapped (so the generator does draw held-out problems, and they are the ones skipped)
    all_level1 = {f"What is {a} + {b}?" for a in range(10) for b in range(10)}
    swapped = {re.sub(r"(\d) \+ (\d)", r"\2 + \1", r["problem"]) for r in heldout[1]}
    assert {r["problem"] for r in train if r["level"] == 1} == all_level1 - held - swapped
    assert len(all_level1 - held - swapped) == 46


def test_arith_rows_are_deterministic_and_load_by_name(tmp_path):
    rows = tiny.arith_rows(2000, seed=3)
    assert rows == tiny.arith_rows(2000, seed=3) and rows != tiny.arith_rows(2000, seed=4)
    assert len({r["id"] for r in rows}) == 2000
    assert load_rows(DataConfig(train="arith"), seed=3)[:2000] == rows
    assert load_rows(DataConfig(train="arith:1-2"), seed=3)[:500] == tiny.arith_rows(500, seed=3, levels=(1, 2))
    # the held-out files: one per level, read back by path with their level, broken down by eval.py
    paths = tiny.write_arith_heldout(tmp_path / "a")
    assert [p.name for p in paths] == [f"level{lv}.jsonl" for lv in tiny.ARITH_LEVELS]
    tiny.write_arith_heldout(tmp_path / "b")
    for p in paths:
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes()
    both = load_benchmark(str(paths[0])) + load_benchmark(str(paths[1]))
    assert both == tiny.arith_heldout_rows(1) + tiny.arith_heldout_rows(2)
    scores = [[1.0] if r["level"] == 1 else [0.0] for r in both]
    metrics = ev.benchmark_metrics(both, scores, [[5]] * len(both))
    assert metrics["by_level"]["1"]["avg@n"] == 1.0 and metrics["by_level"]["2"]["avg@n"] == 0.0


def test_boxed_rows_and_worked_answers():
    rows = tiny.boxed_rows(500, seed=3)
    assert rows == tiny.boxed_rows(500, seed=3) and rows != tiny.boxed_rows(500, seed=4)
    assert {r["level"] for r in rows} == set(range(tiny.BOXED_MIN_TERMS, tiny.BOXED_MAX_TERMS + 1))
    for r in rows:
        terms = r["problem"].rstrip("=").split("+")
        assert len(terms) == r["level"] and all(len(t) == 1 for t in terms)
        assert int(r["answer"]) == sum(int(t) for t in terms)
    # by hand: running sums, then the box
    assert tiny.boxed_solution([3, 5, 8]) == "3+5=8,8+8=16,\\boxed{16}"
    assert tiny.boxed_solution([9, 9]) == "9+9=18,\\boxed{18}"
    assert load_rows(DataConfig(train="boxed"), seed=3)[:500] == rows


def test_worked_answers_score_through_verify_and_grow_with_difficulty():
    rows = tiny.boxed_rows(300, seed=5)
    answers = [tiny.boxed_solution([int(t) for t in r["problem"].rstrip("=").split("+")]) for r in rows]
    assert verify.score_batch(answers, [r["answer"] for r in rows], workers=0) == [1.0] * len(rows)
    wrong = [a.replace("{", "{1") for a in answers]  # a leading 1 in every box: never the sum (< 55)
    assert verify.score_batch(wrong, [r["answer"] for r in rows], workers=0) == [0.0] * len(rows)
    assert verify.score("3+5=8,8+8=16,\\boxed{16", "16") == 0.0  # an unclosed box is no answer
    mean_len = {lv: sum(len(a) for a, r in zip(answers, rows) if r["level"] == lv) /
                sum(r["level"] == lv for r in rows) for lv in range(2, 7)}
    assert all(mean_len[lv + 1] - mean_len[lv] >= 6 for lv in range(2, 6))  # each operand adds "s+d=t,"


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The warm-started model with the default settings (the ones configs/experiments/boxed.yaml uses), built once."""
    return tiny.warm_start_model(tmp_path_factory.mktemp("boxed") / "model", log=None)


def greedy_accuracy(model_dir, rows):
    cfg = rollout.RolloutConfig(engine="hf", template="plain", temperature=0.0, max_tokens=64, hf_batch_size=256)
    engine = rollout.make_engine(cfg, str(model_dir), seed=0)
    samples = [g[0] for g in engine.generate([r["problem"] for r in rows], 1, temperature=0.0)]
    engine.close()
    return verify.score_batch([s.text for s in samples], [r["answer"] for r in rows], workers=0), samples


def test_warm_start_is_imperfect_on_purpose(warm):
    stamp = json.loads((warm / "warm_start.json").read_text())
    assert stamp["key"] == tiny.WarmStart().key()
    built = (warm / "model.safetensors").stat().st_mtime_ns
    assert tiny.warm_start_model(warm, log=None) == warm  # same settings: reused, not rebuilt
    assert (warm / "model.safetensors").stat().st_mtime_ns == built
    rows = load_benchmark(str(warm / "val.jsonl"))
    assert len(rows) == 200
    scores, samples = greedy_accuracy(warm, rows)
    acc = sum(scores) / len(scores)
    by_level = {lv: [s for s, r in zip(scores, rows) if r["level"] == lv] for lv in range(2, 7)}
    length = {lv: sum(x.length for x, r in zip(samples, rows) if r["level"] == lv) / len(by_level[lv])
              for lv in range(2, 7)}
    print(f"warm start: greedy accuracy {acc:.3f}; by level "
          f"{ {lv: round(sum(v) / len(v), 2) for lv, v in by_level.items()} }; mean length {length}")
    assert 0.20 <= acc <= 0.40  # the intended range (measured here: 0.265)
    assert sum(by_level[2]) / len(by_level[2]) > sum(by_level[6]) / len(by_level[6]) + 0.3  # difficulty spreads
    assert all(length[lv + 1] > length[lv] for lv in range(2, 6))  # length follows difficulty
    assert sum("\\boxed{" in s.text for s in samples) >= 0.8 * len(samples)  # the format is mostly learnt


def test_rl_raises_validation_accuracy(warm, tmp_path):
    """40 GRPO steps of configs/experiments/boxed.yaml from the warm start (one torch thread, as sweep.py runs it)."""
    rows = load_benchmark(str(warm / "val.jsonl"))
    before = sum(greedy_accuracy(warm, rows)[0]) / len(rows)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/experiments/boxed.yaml"),
           f"model.path={warm}", f"eval.benchmarks=[{warm / 'val.jsonl'}]", "eval.limit=0", "eval.every=40",
           "steps=40", "save_every=0", f"out_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    after = next(v for r in records for k, v in r.items() if k.startswith("val/"))
    rewards = [r["reward_mean"] for r in records if "reward_mean" in r]
    print(f"val greedy accuracy {before:.3f} -> {after:.3f}; reward {sum(rewards[:10]) / 10:.3f} (first 10 steps) "
          f"-> {sum(rewards[-10:]) / 10:.3f} (last 10)")
    assert after >= before + 0.03
    assert sum(rewards[-10:]) > sum(rewards[:10])
