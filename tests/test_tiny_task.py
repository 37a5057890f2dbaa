"""The boxed task (tiny.py): rows, worked answers that verify.py scores, the warm start's accuracy in
its intended range (20-40% greedy), and RL through train.py raising validation accuracy on it."""
import json
import os
import subprocess
import sys

import pytest

import rollout
import tiny
import verify
from conftest import ROOT
from data import DataConfig, load_benchmark, load_rows


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
    """The warm-started model with the default settings (the ones configs/boxed.yaml uses), built once."""
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
    """40 GRPO steps of configs/boxed.yaml from the warm start (one torch thread, as sweep.py runs it)."""
    rows = load_benchmark(str(warm / "val.jsonl"))
    before = sum(greedy_accuracy(warm, rows)[0]) / len(rows)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "boxed.yaml"),
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
