"""sweep.py: a run's summary numbers, scheme parsing, the base config read through its `inherit:` chain, a
killed sweep resuming and publishing its archive, the paired comparisons and their Holm family; plot.py's
seed bands. The statistics themselves (t quantiles, p-values, Holm, Wilson) are tested in test_stats.py."""
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from scripts.plot import draw_band, plot_main, run_label, seed_group
import tiny
from scripts.stats import t_two_sided_p
from scripts.sweep import parse_schemes, prepare, summarize_run


def test_summarize_run():
    # a shaped reward above the verdicts' accuracy: the threshold and final_accuracy read the verdicts
    records = [{"step": s, "reward_mean": s / 10 + 0.3, "score_mean": s / 10, "len_correct": 10.0 + s,
                "len_incorrect": None if s == 10 else 20.0} for s in range(1, 11)]
    records.insert(4, {"step": 4, "val/runs/a.jsonl": 0.1})
    records += [{"step": 10, "val/runs/a.jsonl": 0.3, "val/runs/b.jsonl": 0.5}]
    s = summarize_run(records, threshold=0.5, window=3)
    # trailing 3-step mean accuracies: step 5 -> 0.4, step 6 -> 0.5 (first to reach 0.5)
    assert s["steps_to_threshold"] == 6
    assert s["final_accuracy"] == pytest.approx(0.9)  # (0.8 + 0.9 + 1.0) / 3
    assert s["final_reward"] == pytest.approx(1.2)
    assert s["len_correct"] == pytest.approx(19.0) and s["len_incorrect"] == 20.0  # None left out
    assert s["val_acc"] == pytest.approx(0.4)  # the last evaluation, mean over its benchmarks
    assert (s["val_a"], s["val_b"]) == (0.3, 0.5)  # and each benchmark, by file stem
    assert summarize_run(records, threshold=2.0, window=3)["steps_to_threshold"] is None
    # dynamic sampling: score_mean covers the kept groups (k in 1..G-1), gen/accuracy every sampled response
    filtered = [{"step": s, "reward_mean": 0.5, "score_mean": 0.5, "gen/accuracy": s / 20} for s in range(1, 11)]
    s = summarize_run(filtered, threshold=0.39, window=3)
    assert s["final_accuracy"] == pytest.approx(0.45)  # (0.40 + 0.45 + 0.50) / 3, not 0.5
    assert s["steps_to_threshold"] == 9  # trailing means: step 8 -> 0.35, step 9 -> 0.40 (score_mean: step 3)


def test_parse_schemes():
    assert parse_schemes([["grpo"], ["hadw", "scheme.hadw.enabled=true"], ["x", "configs/daro.yaml"]]) == \
        {"grpo": ["scheme.name=grpo"], "hadw": ["scheme.hadw.enabled=true"], "x": ["configs/daro.yaml"]}
    for bad, message in [([["nosuch"]], "not one of"), ([["grpo"], ["grpo"]], "twice"),
                         ([["a", "lr"]], "neither"), ([["a=b"]], "label")]:
        with pytest.raises(SystemExit, match=message):
            parse_schemes(bad)


def test_prepare_reads_the_base_config_through_its_inherit_chain(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tiny, "warm_start_model", lambda path: built.append(path) or path)
    (tmp_path / "task.yaml").write_text(f"data:\n  train: boxed\nmodel:\n  path: {tmp_path / 'ws'}\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: task.yaml\nsteps: 3\n")
    prepare(str(child), [])  # data.train and model.path come from task.yaml
    prepare(str(child), ["model.path=elsewhere"])
    prepare(str(child), ["data.train=synthetic"])  # no warm start to build
    assert built == [str(tmp_path / "ws"), "elsewhere"]
    child.write_text("inherit: task.yaml\nstepz: 3\n")
    with pytest.raises(SystemExit, match=f"sweep: config error: {child}: unknown config key 'stepz'"):
        prepare(str(child), [])


def test_seed_bands(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    seeds = [[{"step": s, "reward_mean": 0.1 * s + 0.01 * k} for s in range(1, 6)] for k in range(3)]
    fig, ax = plt.subplots()
    line = draw_band(ax, seeds, "reward_mean", "grpo")
    # at each step the values are x, x + 0.01, x + 0.02: mean x + 0.01, s = 0.01, half-width t_{0.975,2} 0.01 / sqrt(3)
    assert np.allclose(line.get_ydata(), [0.1 * s + 0.01 for s in range(1, 6)])
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(0.51 + 4.3027 * 0.01 / math.sqrt(3), abs=1e-6)
    plt.close(fig)
    assert run_label(tmp_path / "grpo" / "seed3" / "metrics.jsonl") == "grpo/seed3"
    assert seed_group("grpo/seed3") == "grpo" and seed_group("daro_seed10") == "daro" and seed_group("x") == "x"
    dirs = []
    for scheme in ("grpo", "daro"):
        for k, recs in enumerate(seeds):
            d = tmp_path / scheme / f"seed{k}"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            dirs.append(str(d))
    written = plot_main(dirs + ["--bands", "--out", str(tmp_path / "plots")])
    assert "reward.png" in {p.name for p in written}


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    """Two tiny runs: kill the sweep (SIGKILL) once the second run has a checkpoint; the next sweep skips
    the first run, resumes the second from its checkpoint, and writes the table and figures."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "scripts.sweep", str(ROOT / "configs/experiments/tiny.yaml"), "--out", str(out),
           "--seeds", "0", "--scheme", "grpo", "--scheme", "daro", "--window", "2", "--threshold", "0.1",
           "--set", "steps=8", "prompts_per_step=4", "rollout.engine=hf", "save_every=1", "eval.limit=20"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[2/2] daro seed 0: running"):
                break
        ckpt = out / "daro" / "seed0" / "checkpoints" / "latest"
        deadline = time.time() + 300
        while not ckpt.is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert ckpt.is_file(), "".join(lines)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert any(line.startswith("[1/2] grpo seed 0: done in") for line in lines), "".join(lines)
    time.sleep(1)  # the run dies with the sweep (PR_SET_PDEATHSIG)
    assert not (out / "daro" / "seed0" / "done.json").is_file()

    pub = tmp_path / "published"
    again = subprocess.run(cmd + ["--publish", str(pub), "--heldout", "30"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "[1/2] grpo seed 0: done before, skipped" in again.stdout
    assert "[2/2] daro seed 0: resuming" in again.stdout
    steps = [json.loads(line)["step"] for line in (out / "daro" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 9))
    table = json.loads((out / "table.json").read_text())["table"]
    assert list(table) == ["grpo", "daro"] and table["daro"]["val_acc"]["n"] == 1
    assert "| grpo | 1 |" in (out / "table.md").read_text()
    assert {"reward_mean.png", "val_synthetic.png", "summary.png"} <= {p.name for p in (out / "figures").iterdir()}
    # per run: whether the weightings could act; tiny.yaml is on-policy (one mini-batch, one epoch): ratio 1
    runs = json.loads((out / "table.json").read_text())["runs"]
    acting = runs["daro"]["0"]["acting"]
    assert acting["clip_frac"] == 0.0 and sum(acting["k_frac"].values()) == pytest.approx(1.0)
    assert "| daro | 0.0000 |" in (out / "table.md").read_text()
    # --publish: the table, the figures and one archive of what the runs recorded, without checkpoints
    from scripts.results import check, read_archive
    assert {p.name for p in pub.iterdir()} == {"table.md", "table.json", "figures", "records.tar.xz"}
    assert "summary.png" in {p.name for p in (pub / "figures").iterdir()}  # no README yet: every figure
    published = read_archive(pub)
    assert {"published.json", "grpo/seed0/metrics.jsonl", "daro/seed0/done.json"} <= set(published)
    assert not any("checkpoints" in name for name in published)
    assert json.loads(published["published.json"])["command"].startswith("python -m scripts.sweep ")
    assert published["daro/seed0/metrics.jsonl"] == (out / "daro" / "seed0" / "metrics.jsonl").read_bytes()
    assert check("tiny", pub) == []  # the archive regenerates the published tables, byte for byte
    (pub / "table.md").write_text((pub / "table.md").read_text().replace("| grpo | 1 |", "| grpo | 2 |"))
    assert "table.md differs" in " ".join(check("tiny", pub))
    # --heldout: eval.py on each run's last checkpoint, greedy, the first 30 held-out problems; the column is
    # the mean of the verdicts eval.py wrote per problem, and the scheme is compared with the baseline on it
    for label in ("grpo", "daro"):
        held = out / label / "seed0" / "heldout"
        settings = json.loads((held / "results.json").read_text())["settings"]
        assert settings["model"].endswith("checkpoints/step_000008/model") and settings["temperature"] == 0.0
        verdicts = [json.loads(line)["score"] for line in (held / "records.jsonl").read_text().splitlines()]
        assert len(verdicts) == 30
        assert table[label]["heldout_acc"]["values"] == [pytest.approx(sum(verdicts) / 30)]
        assert f"{label}/seed0/heldout/results.json" in published
        assert published[f"{label}/seed0/heldout/records.jsonl"] == (held / "records.jsonl").read_bytes()
    paired = json.loads((out / "table.json").read_text())["paired"]["daro - grpo"]["heldout_synthetic"]
    gap = table["daro"]["heldout_acc"]["mean"] - table["grpo"]["heldout_acc"]["mean"]
    assert paired["values"] == [pytest.approx(gap)]
    assert "held-out synthetic" in (out / "table.md").read_text()


def test_publish_archives_finished_runs_only(tmp_path):
    from scripts.results import read_archive
    from scripts.sweep import publish
    out = tmp_path / "sweep"
    for run, finished in (("grpo/seed0", True), ("grpo/seed1", False)):  # seed 1 was killed mid-run
        d = out / run
        (d / "heldout").mkdir(parents=True)
        (d / "checkpoints").mkdir()
        (d / "metrics.jsonl").write_text('{"step": 1}\n')
        (d / "heldout" / "results.json").write_text("{}")
        (d / "heldout" / "records.jsonl").write_text('{"id": 0, "score": 1.0}\n')
        (d / "checkpoints" / "latest").write_text("step_000001")
        if finished:
            (d / "done.json").write_text("{}")
    (out / "figures").mkdir()
    for name in ("table.md", "table.json", "figures/summary.png", "figures/reward_mean.png"):
        (out / name).write_text("x")
    base = tmp_path / "base_model_greedy.json"
    base.write_text("{}")
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "README.md").write_text("![reward](figures/reward_mean.png)\n")  # the README shows one figure
    (pub / "figures").mkdir()
    (pub / "figures" / "old.png").write_text("stale")
    assert publish(out, pub, "python -m scripts.sweep x", {"base_eval.json": base}) == 2 + 1 + 6
    assert {str(p.relative_to(pub)) for p in pub.rglob("*") if p.is_file()} == {
        "README.md", "table.md", "table.json", "figures/reward_mean.png", "records.tar.xz"}
    assert set(read_archive(pub)) == {"published.json", "base_eval.json", "grpo/seed0/done.json",
                                      "grpo/seed0/metrics.jsonl", "grpo/seed0/heldout/results.json",
                                      "grpo/seed0/heldout/records.jsonl"}


def test_paired_differences():
    from scripts.sweep import paired_differences
    summaries = {"a": [{"final_accuracy": 0.2, "val_acc": 0.3, "val_level1": 0.5},
                       {"final_accuracy": 0.4, "val_acc": 0.5, "val_level1": 0.7}],
                 "b": [{"final_accuracy": 0.25, "val_acc": 0.3, "val_level1": 0.6},
                       {"final_accuracy": 0.5, "val_acc": None, "val_level1": 0.9},
                       {"final_accuracy": 0.9, "val_acc": 0.9, "val_level1": 0.9}]}
    seeds_of = {"a": [0, 1], "b": [0, 1, 2]}
    d = paired_differences(summaries, seeds_of, [("b", "a")])["b - a"]
    # seeds 0 and 1 in common: accuracy differences 0.05 and 0.1 (seed 2 has no baseline); val: only seed 0
    assert d["final_accuracy"]["mean"] == pytest.approx(0.075) and d["final_accuracy"]["n"] == 2
    assert d["final_accuracy"]["ci95"] == pytest.approx(12.706 * math.sqrt(0.00125) / math.sqrt(2), rel=1e-4)
    assert d["val_acc"]["n"] == 1 and d["val_acc"]["mean"] == pytest.approx(0.0)
    assert d["val_level1"]["mean"] == pytest.approx(0.15) and d["val_level1"]["n"] == 2  # per level too
    # one comparison, one family over its metrics: final_accuracy (differences 0.05, 0.1: t = 3) and val_level1
    # (0.1, 0.2: t = 3) have a p, val_acc (one seed) none; Holm doubles the smaller p, the running max the other
    assert d["final_accuracy"]["p"] == pytest.approx(t_two_sided_p(3.0, 1))
    assert d["final_accuracy"]["p_holm"] == d["val_level1"]["p_holm"] == pytest.approx(2 * t_two_sided_p(3.0, 1))
    assert math.isnan(d["val_acc"]["p_holm"])
    # a second pair (a against b, any two schemes): its differences are the first's negated, and Holm takes
    # both into the family
    both = paired_differences(summaries, seeds_of, [("b", "a"), ("a", "b")])
    assert both["a - b"]["val_level1"]["values"] == pytest.approx([-0.1, -0.2])
    p = t_two_sided_p(3.0, 1)
    holm_p = [both[name]["final_accuracy"]["p_holm"] for name in ("b - a", "a - b")]
    # every pair x every compared metric: final_accuracy's two p-values and val_level1's two: 4 tests, all p
    assert holm_p == pytest.approx([min(1, 4 * p)] * 2)
    # --family final_accuracy: the family holds only its 2 tests; val_level1 gets no Holm
    fam = paired_differences(summaries, seeds_of, [("b", "a"), ("a", "b")], family=["final_accuracy"])
    assert fam["b - a"]["final_accuracy"]["p_holm"] == pytest.approx(min(1, 2 * p))
    assert math.isnan(fam["b - a"]["val_level1"]["p_holm"])
    with pytest.raises(SystemExit, match="--family heldout_acc: not a compared metric"):
        paired_differences(summaries, seeds_of, [("b", "a")], family=["heldout_acc"])


def test_a_one_problem_difference_in_every_seed_is_not_p_0():
    """Five seeds where b beats a by exactly one problem in 100 (0.01): no spread, so no t-test; the table
    reports the exact sign-flip p 2 / 2^5 and Holm from it, never 0."""
    from scripts.sweep import format_paired, paired_differences
    a = [{"final_accuracy": x, "val_acc": 0.3} for x in (0.30, 0.10, 0.50, 0.00, 0.20)]
    b = [{"final_accuracy": x + 0.01, "val_acc": 0.3} for x in (0.30, 0.10, 0.50, 0.00, 0.20)]
    d = paired_differences({"a": a, "b": b}, {"a": list(range(5)), "b": list(range(5))}, [("b", "a")])["b - a"]
    assert d["final_accuracy"]["p"] == 1 / 16 and math.isnan(d["final_accuracy"]["p_t"])
    assert d["val_acc"]["p"] == 1.0  # every difference 0
    assert d["final_accuracy"]["p_holm"] == pytest.approx(2 / 16)  # the smaller of 2 tests, doubled
    text = format_paired({"b - a": d})
    assert "t-test p n/a, sign-flip p 0.062; Holm 0.125" in text and "p 0.000" not in text


def test_pair_names_must_be_schemes(tmp_path):
    from scripts.sweep import main
    with pytest.raises(SystemExit, match="--pair: 'gspo' is not a --scheme label"):
        main([str(ROOT / "configs/experiments/tiny.yaml"), "--out", str(tmp_path), "--scheme", "grpo",
              "--scheme", "grpo_hadw", "scheme.hadw.enabled=true", "--pair", "grpo_hadw", "gspo", "--report-only"])
    with pytest.raises(SystemExit, match="--pair: 'grpo' compared with itself"):
        main([str(ROOT / "configs/experiments/tiny.yaml"), "--out", str(tmp_path), "--scheme", "grpo", "--pair", "grpo", "grpo",
              "--report-only"])


def test_heldout_command_evaluates_the_last_checkpoint_as_the_run_sampled(tmp_path):
    from scripts.sweep import heldout_command, heldout_summary
    run = tmp_path / "run"
    base = str(ROOT / "configs/experiments/smol_compare.yaml")
    assert heldout_command(base, [], run, 0) is None and heldout_summary(run) == {}  # no checkpoint: nothing
    (run / "checkpoints" / "step_000020" / "model").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_000020\n")
    cmd = heldout_command(base, ["scheme.name=daro", "rollout.max_tokens=64", "rollout.instruction=Add."], run, 0)
    args = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[1].endswith("eval.py") and args["--model"] == str((run / "checkpoints/step_000020/model").resolve())
    assert args["--benchmarks"] == ",".join(f"runs/arith/level{k}.jsonl" for k in range(1, 6))
    assert (args["--n"], args["--temperature"], args["--limit"], args["--max-tokens"]) == ("1", "0", "0", "64")
    assert args["--instruction"] == "Add."  # the run's own prompt
    assert (args["--template"], args["--dtype"], args["--reward"], args["--engine"]) == ("chat", "float32", "math",
                                                                                         "vllm")
    (run / "heldout").mkdir()
    (run / "heldout" / "results.json").write_text(json.dumps(
        {"benchmarks": {"runs/arith/level1.jsonl": {"avg@n": 0.9, "num_problems": 30},
                        "runs/arith/level2.jsonl": {"avg@n": 0.4, "num_problems": 100}}}))
    assert heldout_summary(run) == {"heldout_acc": pytest.approx(0.65), "heldout_level1": 0.9, "heldout_level2": 0.4,
                                    "n_problems": {"heldout_level1": 30, "heldout_level2": 100}}


def test_per_problem_line_is_a_wilson_interval_over_problems():
    from scripts.sweep import format_per_problem, metric_columns
    runs = [{"heldout_acc": 0.5, "heldout_level2": acc, "n_problems": {"heldout_level2": 100}} for acc in (0.07, 0.09)]
    text = format_per_problem({"grpo": runs}, metric_columns({"grpo": runs}))
    # mean 0.08 over 100 problems: Wilson 0.041 to 0.150 (by hand in test_stats.py)
    assert "| grpo | 0.080 [0.041, 0.150] (2 seeds x 100 problems) |" in text
