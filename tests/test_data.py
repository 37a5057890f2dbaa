"""data.py: JSON Lines rows (missing answers reported and skipped, bad lines named) and the prompt stream."""
import pytest

from data import DataConfig, PromptStream, load_rows


def test_data_rows_without_answer_are_reported_and_skipped(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "question": "1+1", "sol": "2"}\n{"id": "b", "question": "2+2"}\n'
                    '{"id": "c", "question": "3+3", "sol": ""}\n\n{"id": "d", "question": "4+4", "sol": 8}\n')
    with pytest.warns(UserWarning) as caught:
        rows = load_rows(DataConfig(train=str(path), problem_key="question", answer_key="sol"), seed=0)
    assert [r["id"] for r in rows] == ["a", "d"] and rows[1]["answer"] == "8" and rows[1]["problem"] == "4+4"
    assert sorted(str(w.message).split("row ")[1].split(" ")[0] for w in caught) == ["b", "c"]
    path.write_text('{"question": "1+1", "sol": "2"}\n{not json\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        load_rows(DataConfig(train=str(path), problem_key="question", answer_key="sol"), seed=0)


def test_prompt_stream_resume():
    rows = [{"id": i} for i in range(7)]
    a = PromptStream(rows, seed=3, shuffle=True)
    first = a.take(5)
    b = PromptStream(rows, seed=3, shuffle=True)
    b.load_state_dict(a.state_dict())
    assert [r["id"] for r in a.take(9)] == [r["id"] for r in b.take(9)]
    epoch = PromptStream(rows, seed=3, shuffle=True).take(7)
    assert sorted(r["id"] for r in epoch) == list(range(7)) and [r["id"] for r in epoch[:5]] == [r["id"] for r in first]


def test_level_curriculum_draws_levels_by_learnability_and_resumes():
    """P(L) ~ p (1 - p) with p = (c + 1) / (n + 2) from counts decayed by `memory`, worked by hand; the draws
    follow P; a curriculum restored from the state dict draws the same rows."""
    import numpy as np
    from data import LevelCurriculum
    rows = [{"id": f"{lv}-{i}", "level": lv} for lv in (1, 2, 3) for i in range(5)]
    cur = LevelCurriculum(rows, seed=4, shuffle=True, memory=0.5)
    assert cur.levels == [1, 2, 3] and np.allclose(cur.probabilities(), [1 / 3] * 3)  # no counts: p = 1/2 each
    cur.observe([[0, 16], [8, 16], [16, 16]])  # p = 1/18, 9/18, 17/18 -> weights 17, 81, 17 (/ 324)
    assert np.allclose(cur.probabilities(), [17 / 115, 81 / 115, 17 / 115])
    cur.observe([[0, 0], [0, 0], [4, 4]])  # counts halve: (0, 8), (4, 8), (12, 12) -> p = 1/10, 5/10, 13/14
    w = np.array([1 / 10 * 9 / 10, 1 / 4, 13 / 14 * 1 / 14])
    assert np.allclose(cur.probabilities(), w / w.sum())
    drawn = [r["level"] for _ in range(2000) for r in cur.take(8)]
    share = np.bincount(drawn, minlength=4)[1:] / len(drawn)
    assert np.abs(share - w / w.sum()).max() < 0.015  # 16000 draws: standard error < 0.004
    twin = LevelCurriculum(rows, seed=4, shuffle=True, memory=0.5)
    twin.load_state_dict(cur.state_dict())
    assert [r["id"] for _ in range(5) for r in cur.take(8)] == [r["id"] for _ in range(5) for r in twin.take(8)]
    with pytest.raises(ValueError, match="needs a `level` on every row"):
        LevelCurriculum(rows + [{"id": "x"}], seed=0, shuffle=True, memory=0.5)


def test_data_config_rejects_an_unknown_level_sampling():
    from config import ConfigError, check_config, load_config
    with pytest.raises(ConfigError, match="'data.level_sampling' must be rows or learnability"):
        check_config(load_config(None, ["data.level_sampling=uniform"]))
    with pytest.raises(ConfigError, match="'data.level_memory' must be in"):
        check_config(load_config(None, ["data.level_memory=1.0"]))
