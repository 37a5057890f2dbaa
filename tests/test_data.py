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
