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
