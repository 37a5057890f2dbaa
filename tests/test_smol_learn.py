"""The demo's statistics (smol_learn.py): accuracy per level with a 95% interval over problems, the paired
gain, and the macro average's interval, against values computed by hand. The demo itself is not run here
(10 minutes); `make smol-learn` is its check."""
import math

import pytest

import smol_learn


def records(level, scores_by_problem):
    return [{"benchmark": f"runs/arith/level{level}.jsonl", "id": pid, "sample": j, "score": s}
            for pid, scores in scores_by_problem.items() for j, s in enumerate(scores)]


BEFORE = records(1, {"a": [1, 1, 0, 0], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0]}) + records(2, {"d": [1, 1], "e": [0, 0]})
AFTER = records(1, {"a": [1, 1, 1, 1], "b": [1, 1, 1, 1], "c": [1, 0, 1, 0]}) + records(2, {"d": [1, 1], "e": [1, 0]})


def test_level_accuracy_is_a_t_interval_over_problems():
    acc = smol_learn.level_accuracy(BEFORE)
    # level 1: problem means 0.5, 1, 0 -> mean 0.5, s = 0.5, t_{0.975, 2} = 4.303
    assert acc["level1"]["accuracy"] == pytest.approx(0.5)
    assert acc["level1"]["ci95"] == pytest.approx(4.303 * 0.5 / math.sqrt(3))
    assert (acc["level1"]["problems"], acc["level1"]["n"]) == (3, 4)
    # level 2: problem means 1, 0 -> mean 0.5, s = sqrt(0.5), t_{0.975, 1} = 12.706
    assert acc["level2"]["ci95"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))


def test_paired_gain_and_macro():
    gain = smol_learn.paired_gain(BEFORE, AFTER)
    # level 1 differences 0.5, 0, 0.5: mean 1/3, s = sqrt(1/12)
    assert gain["level1"]["gain"] == pytest.approx(1 / 3)
    assert gain["level1"]["ci95"] == pytest.approx(4.303 * math.sqrt(1 / 12) / math.sqrt(3))
    assert gain["level2"]["gain"] == pytest.approx(0.25)
    # macro of level 1 (mean 0.5, standard error 0.5 / sqrt 3) and level 2 (mean 0.5, standard error 0.5)
    m = smol_learn.macro(smol_learn.level_accuracy(BEFORE))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["ci95"] == pytest.approx(1.96 * math.sqrt(0.25 / 3 + 0.25) / 2)
    with pytest.raises(ValueError, match="same problems"):
        smol_learn.paired_gain(BEFORE, AFTER[:-2])


def test_resume_keeps_a_finished_part_and_runs_a_missing_one(tmp_path):
    import sys
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    done = tmp_path / "eval_before" / "records.jsonl"
    done.parent.mkdir()
    done.write_text("{}\n")
    parts = []
    smol_learn.run(failing, parts, keep=done)  # kept: not run, so it cannot fail
    assert parts[0]["kept"].startswith(str(done)) and "wall_s" not in parts[0]
    with pytest.raises(SystemExit, match="failed with exit code 3"):
        smol_learn.run(failing, parts, keep=tmp_path / "eval_after" / "records.jsonl")
