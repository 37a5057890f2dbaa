"""The demo's statistics (smol_learn.py, from scripts/stats.py): accuracy per level with a 95% interval over
problems (t and Wilson), the paired gain, and the macro average's interval, against values computed by hand.
The demo itself is not run here (10 minutes); `make smol-learn` is its check."""
import math

import pytest

from scripts import smol_learn


def records(level, scores_by_problem):
    return [{"benchmark": f"runs/arith/level{level}.jsonl", "id": pid, "sample": j, "score": s}
            for pid, scores in scores_by_problem.items() for j, s in enumerate(scores)]


BEFORE = records(1, {"a": [1, 1, 0, 0], "b": [1, 1, 1, 1], "c": [0, 0, 0, 0]}) + records(2, {"d": [1, 1], "e": [0, 0]})
AFTER = records(1, {"a": [1, 1, 1, 1], "b": [1, 1, 1, 1], "c": [1, 0, 1, 0]}) + records(2, {"d": [1, 1], "e": [1, 0]})


def test_level_accuracy_is_a_t_interval_over_problems():
    acc = smol_learn.level_accuracy(BEFORE)
    # level 1: problem means 0.5, 1, 0 -> mean 0.5, s = 0.5, t_{0.975, 2} = 4.303
    assert acc["level1"]["accuracy"] == pytest.approx(0.5)
    assert acc["level1"]["ci95"] == pytest.approx(4.303 * 0.5 / math.sqrt(3), rel=1e-4)
    assert (acc["level1"]["problems"], acc["level1"]["n"]) == (3, 4)
    # Wilson, problems as the unit: 1.5 of 3 -> centre 1/2, half-width z sqrt(1/12 + z^2/36) / (1 + z^2/3)
    z = 1.959964
    half = z * math.sqrt(1 / 12 + z * z / 36) / (1 + z * z / 3)
    assert acc["level1"]["wilson"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-6)
    # level 2: problem means 1, 0 -> mean 0.5, s = sqrt(0.5), t_{0.975, 1} = 12.706
    assert acc["level2"]["ci95"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)


def test_paired_gain_and_macro():
    gain = smol_learn.paired_gain(BEFORE, AFTER)
    # level 1 differences 0.5, 0, 0.5: mean 1/3, s = sqrt(1/12)
    assert gain["level1"]["gain"] == pytest.approx(1 / 3)
    assert gain["level1"]["ci95"] == pytest.approx(4.303 * math.sqrt(1 / 12) / math.sqrt(3), rel=1e-4)
    assert gain["level2"]["gain"] == pytest.approx(0.25)
    # macro of level 1 (0.5 over 3 problems) and level 2 (0.5 over 2): each level's standard error is its Wilson
    # interval's half-width / z; at p = 1/2 that is sqrt(1/(4n) + z^2/(4n^2)) / (1 + z^2/n)
    m = smol_learn.macro(smol_learn.level_accuracy(BEFORE))
    z = 1.959964
    se = lambda n: math.sqrt(1 / (4 * n) + z * z / (4 * n * n)) / (1 + z * z / n)  # noqa: E731
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["ci95"] == pytest.approx(z * math.sqrt(se(3) ** 2 + se(2) ** 2) / 2)
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


def test_main_wires_the_parts_and_summarises_greedy_and_gsm8k(tmp_path, monkeypatch):
    """main() with each part faked by a writer of the files that part writes: the greedy evaluation asks the
    same problems as the T = 1 one with n = 1 at temperature 0, and the summary holds both and GSM8K."""
    import json
    from pathlib import Path
    calls = []

    keeps = []

    def fake_run(cmd, log, keep=None):
        calls.append(cmd)
        keeps.append(keep)
        if keep is not None:
            return
        if "eval.py" in cmd:
            out, n = Path(cmd[cmd.index("--out") + 1]), int(cmd[cmd.index("--n") + 1])
            after = "after" in out.name
            benches = cmd[cmd.index("--benchmarks") + 1].split(",")
            out.mkdir(parents=True)
            rows = [{"benchmark": b, "id": f"p{i}", "sample": j, "score": float(after and i < 2)}
                    for b in benches for i in range(4) for j in range(n)]  # after: 2 of 4 problems right
            (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif "train.py" in cmd:
            out = Path(next(a for a in cmd if a.startswith("out_dir=")).split("=", 1)[1])
            (out / "checkpoints" / "step_000002" / "model").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / "latest").write_text("step_000002\n")
            rows = [{"step": 1, "reward_mean": 0.1}, {"step": 2, "reward_mean": 0.5, "val/level1": 0.5}]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(smol_learn, "run", fake_run)
    monkeypatch.setattr(smol_learn.common, "matmul_gflops", lambda: 0.0)
    gsm8k = tmp_path / "gsm8k.jsonl"
    argv = ["--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--heldout", str(tmp_path / "arith"),
            "--greedy", "--gsm8k", str(gsm8k), "--gsm8k-limit", "3", "--seed", "1", "rollout.instruction=Add."]
    smol_learn.main(argv)

    evals = {Path(c[c.index("--out") + 1]).name: c for c in calls if "eval.py" in c}
    assert set(evals) == {"eval_before", "greedy_before", "gsm8k_before", "eval_after", "greedy_after", "gsm8k_after"}
    opt = lambda part, flag: evals[part][evals[part].index(flag) + 1]  # noqa: E731
    assert (opt("greedy_before", "--n"), opt("greedy_before", "--temperature")) == ("1", "0")
    assert (opt("eval_before", "--n"), opt("eval_before", "--temperature")) == ("4", "1.0")
    for flag in ("--benchmarks", "--limit", "--max-tokens", "--seed"):
        assert opt("greedy_before", flag) == opt("eval_before", flag) == opt("greedy_after", flag)
    assert opt("gsm8k_after", "--benchmarks") == str(gsm8k) and opt("gsm8k_after", "--limit") == "3"
    assert opt("eval_after", "--model").endswith("step_000002/model")
    assert all(opt(part, "--instruction") == "Add." for part in evals)  # asked as the run was trained
    assert "rollout.instruction=Add." in next(c for c in calls if "train.py" in c)

    summary = json.loads((tmp_path / "docs" / "seed_1" / "summary.json").read_text())
    assert summary["command"] == "python -m scripts.smol_learn " + " ".join(argv)
    g = summary["greedy"]
    assert g["before"]["level3"]["n"] == 1 and g["before"]["level3"]["problems"] == 4
    assert (g["macro"]["before"]["accuracy"], g["macro"]["after"]["accuracy"]) == (0.0, 0.5)
    assert summary["gsm8k"]["gain"]["gain"] == pytest.approx(0.5)
    assert summary["macro"]["after"]["accuracy"] == pytest.approx(0.5) and summary["steps"] == 2

    # --resume: every evaluation names its finished records as kept, and train.py gets --resume
    calls.clear(), keeps.clear()
    smol_learn.main(argv + ["--resume"])
    kept = {Path(c[c.index("--out") + 1]).name: k for c, k in zip(calls, keeps) if "eval.py" in c}
    assert all(k == tmp_path / "runs" / "seed_1" / part / "records.jsonl" for part, k in kept.items()) and len(kept) == 6
    assert "--resume" in next(c for c in calls if "train.py" in c)
