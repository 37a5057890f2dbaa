"""metrics.Progress off a terminal: a line every `every` steps and at the last, not a redrawn bar."""
from metrics import Progress


def test_progress_prints_lines_when_stderr_is_not_a_terminal(capsys):
    progress = Progress(start=2, total=12, every=4)  # pytest captures stderr: not a TTY
    for step in range(2, 12):
        progress.update({"reward_mean": step / 100, "len_mean": 3.0})
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" reward")[0] for line in lines] == ["step 6/12", "step 10/12", "step 12/12"]
    assert lines[-1].startswith("step 12/12 reward 0.110 len 3.0 (") and "\r" not in "".join(lines)
    silent = Progress(start=0, total=3, enabled=False)  # ranks other than 0
    for _ in range(3):
        silent.update({})
    assert capsys.readouterr().err == ""



def test_batch_metrics_over_ranks_equal_one_process_holding_every_group(monkeypatch):
    """Two ranks with uneven levels and answer counts: the step's statistics must be those of one process
    holding all groups (a level's pass rate over that level's groups, a correct answer's mean length over all
    correct answers), not the ranks' means averaged by their group counts."""
    import torch

    import metrics
    from rollout import Sample

    def part(levels, scores, lengths):
        rows = [{"level": lv} for lv in levels]
        groups = [[Sample([1], [1] * n, "", n, n >= 9, None) for n in g] for g in lengths]
        s = torch.tensor(scores, dtype=torch.float32)
        return rows, groups, s, s + 0.5
    rank0 = part([1, 3, 1, 1], [[1, 0], [1, 0], [1, 1], [1, 1]], [[2, 4], [6, 9], [3, 3], [2, 2]])
    rank1 = part([3, 3, 3, 2], [[0, 0], [0, 0], [0, 1], [0, 0]], [[9, 9], [5, 7], [8, 4], [9, 1]])
    everything = tuple(a + b if isinstance(a, list) else torch.cat([a, b]) for a, b in zip(rank0, rank1))

    sent = []  # rank 0's call sends its part; rank 1's call then receives both ranks' parts
    monkeypatch.setattr(metrics, "all_gather", lambda x: sent.append(x) or [x])
    one_process = metrics.step_metrics(2, *everything)
    sent.clear()
    metrics.step_metrics(2, *rank0)
    monkeypatch.setattr(metrics, "all_gather", lambda x: [sent[0], x])
    two_ranks = metrics.step_metrics(2, *rank1)

    assert one_process["groups"] == 8 and one_process["score_by_level/3"] == 2 / 8
    assert abs(one_process["len_correct"] - (2 + 6 + 3 + 3 + 2 + 2 + 4) / 7) < 1e-6
    assert one_process["groups_by_level/3"] == 4 and one_process["truncated_frac"] == 4 / 16
    assert two_ranks.keys() == one_process.keys()
    for key, value in one_process.items():
        assert abs(two_ranks[key] - value) < 1e-6, (key, two_ranks[key], value)


def test_a_step_that_trains_no_token_logs_no_per_token_mean():
    """Per-token means (entropy, clip shares, ratio) over the trained tokens: with none trained (every group
    without signal, skip_zero_advantage), the step has no value for them, not 0.0; with tokens, the sum over
    tokens (3 + 1) / 8 tokens."""
    from types import SimpleNamespace

    import torch

    import metrics
    cfg = SimpleNamespace(ppo_epochs=1, mini_batches=1)
    update = SimpleNamespace(loss=0.0, grad_norms=[0.0])
    responses = {"tokens": torch.zeros(4, dtype=torch.float64), "pg_loss": torch.zeros(4, dtype=torch.float64),
                 "ratio_max": torch.zeros(4, dtype=torch.float64), "ratio_min": torch.zeros(4, dtype=torch.float64),
                 "trained": torch.zeros(4), "entropy": torch.zeros(4, dtype=torch.float64),
                 "clip_low": torch.zeros(4, dtype=torch.float64)}
    none = metrics.update_metrics(cfg, update, responses, [[]], 1e-5)
    assert "entropy" not in none and "clip_low" not in none and none["skipped_frac"] == 1.0
    responses.update(tokens=torch.tensor([5.0, 3.0, 0, 0], dtype=torch.float64), trained=torch.tensor([1.0, 1, 0, 0]),
                     entropy=torch.tensor([3.0, 1.0, 0, 0], dtype=torch.float64))
    some = metrics.update_metrics(cfg, update, responses, [[]], 1e-5)
    assert some["entropy"] == 4 / 8 and some["skipped_frac"] == 0.5
