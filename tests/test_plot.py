"""scripts/plot.py: the figures drawn from metrics.jsonl; metrics.run_summary: the run summary line."""
import json

import pytest

from metrics import run_summary
from scripts.plot import plot_main


def test_run_summary_averages_first_and_last_window(tmp_path):
    rows = [{"step": s, "reward_mean": s / 10} for s in range(1, 11)]
    rows.insert(5, {"step": 5, "val/synthetic": 0.25})
    rows.append({"step": 10, "val/synthetic": 0.5})
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # first 3 steps: (0.1 + 0.2 + 0.3) / 3 = 0.2; last 3: (0.8 + 0.9 + 1.0) / 3 = 0.9; the latest eval wins
    assert run_summary(path, window=3) == \
        "summary: reward 0.200 (first 3 steps) -> 0.900 (last 3 steps); val/synthetic 0.500"


def test_run_summary_never_compares_a_window_with_itself(tmp_path):
    """A run shorter than two windows: first and last halves (20 steps at window 50 -> 10 and 10), not the same
    20 steps twice; one step: no comparison at all."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "reward_mean": s / 20}) + "\n" for s in range(1, 21)))
    # first 10: (1 + ... + 10) / 200 = 0.275; last 10: (11 + ... + 20) / 200 = 0.775
    assert run_summary(path) == "summary: reward 0.275 (first 10 steps) -> 0.775 (last 10 steps)"
    path.write_text(json.dumps({"step": 1, "reward_mean": 0.5}) + "\n")
    assert run_summary(path) == "summary: reward 0.500 (1 step)"


def test_plot_draws_the_figures_the_metrics_support(tmp_path):
    def write_run(name, daro):
        rows = []
        for s in range(1, 31):
            r = {"step": s, "reward_mean": s / 30, "entropy": 1 - s / 60, "len_mean": 3.0, "len_correct": 2.0,
                 "len_incorrect": 4.0, "bucket_scale/1": 0.1, "bucket_scale/7": 0.2, "score_by_level/1": 0.5,
                 "groups_by_level/1": 8}
            if daro:
                r.update({"daro_w/1": 1.0 + s / 100, "daro_w/7": 1.0 - s / 100})
            rows.append(r)
        rows.append({"step": 30, "val/synthetic": 0.4})
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    grpo, daro = write_run("grpo", daro=False), write_run("daro", daro=True)
    written = plot_main([grpo, "--out", str(tmp_path / "a")])
    assert sorted(p.name for p in written) == ["dynamics.png", "groups_per_level.png", "lengths.png",
                                                "loss_per_difficulty.png", "pass_rate_per_level.png",
                                                "reward.png"]  # no DARO weights to draw
    written = plot_main([grpo, daro, "--out", str(tmp_path / "b")])  # two runs on one figure
    assert "weights_per_difficulty.png" in {p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in written)
    with pytest.raises(SystemExit, match="no metrics file"):
        plot_main([str(tmp_path / "missing")])


def test_sweep_figures_give_each_scheme_its_own_line(tmp_path, monkeypatch):
    # 12 schemes: matplotlib's 10-color cycle alone would draw the 11th and 12th like the 1st and 2nd
    from scripts import plot
    from scripts import sweep
    drawn = {}

    def fake_band(ax, members, key, label, smooth=1, **kw):
        drawn.setdefault(key, []).append((kw["color"], kw["ls"]))
        return ax.plot([1, 2], [0.1, 0.2], label=label)[0]

    monkeypatch.setattr(plot, "draw_band", fake_band)
    runs = {f"s{i}": [[{"step": 1, "reward_mean": 0.1, "train_accuracy": 0.1}]] for i in range(12)}
    sweep.draw_figures(runs, tmp_path, threshold=0.3, smooth=1)
    assert drawn and all(len(set(styles)) == 12 for styles in drawn.values())
    assert len({(s["color"], s["ls"]) for s in map(plot.line_style, range(30))}) == 30
