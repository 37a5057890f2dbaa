"""scripts/common.py: a child command's log, exit status and death with its parent; the eval.py command line
run for real and read back from what eval.py recorded; provenance against git and the installed packages."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import common

ROOT = Path(__file__).resolve().parents[1]


def test_run_logs_the_command_and_its_output_and_returns_its_status(tmp_path):
    log = tmp_path / "child.log"
    code = "import os, sys; print('cwd', os.getcwd()); sys.exit(3)"
    rc, wall = common.run([sys.executable, "-c", code], log)
    assert rc == 3 and wall >= 0
    text = log.read_text()
    assert text.startswith(f"\n$ {sys.executable} -c {code}\n") and f"cwd {ROOT}\n" in text  # from the root
    common.run([sys.executable, "-c", "print('second')"], log)  # appended
    assert log.read_text().startswith(text) and log.read_text().endswith("second\n")
    common.run([sys.executable, "-c", "print('third')"], log, append=False)  # rewritten
    assert "second" not in log.read_text() and log.read_text().endswith("third\n")
    with pytest.raises(subprocess.CalledProcessError):
        common.run([sys.executable, "-c", "raise SystemExit(2)"], log, check=True)
    assert common.run([sys.executable, "-c", "import os; raise SystemExit(os.environ['X'] != 'y')"],
                      env={**os.environ, "X": "y"})[0] == 0


def test_a_child_dies_with_its_parent(tmp_path):
    """A parent that runs a long child through common.run is killed (SIGKILL, no clean-up): the child goes too."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    parent = subprocess.Popen([sys.executable, "-c", f"from scripts import common; "
                               f"common.run([{sys.executable!r}, '-c', {child!r}])"], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        pid = int(pid_file.read_text())
        os.kill(pid, 0)  # alive
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


def test_eval_command_is_what_eval_py_ran(tmp_path, tiny_model):
    """The command runs eval.py for real (the tiny model, 3 held-out rows): the settings eval.py recorded are
    the ones asked; an option left None is left to eval.py's default (--seed: 0)."""
    out = tmp_path / "eval"
    bench = Path(tiny_model) / "synthetic.jsonl"
    cmd = common.eval_command(tiny_model, [bench], out, n=2, temperature=1.0, max_tokens=1, limit=3,
                              template="plain", engine="hf", dtype="float32", reward="first_char")
    assert cmd[:2] == [sys.executable, "eval.py"] and "--seed" not in cmd and "--instruction" not in cmd
    rc, _ = common.run(cmd, tmp_path / "eval.log")
    assert rc == 0, (tmp_path / "eval.log").read_text()[-3000:]
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert (settings["model"], settings["engine"], settings["template"], settings["dtype"]) == (
        str(tiny_model), "hf", "plain", "float32")
    assert (settings["temperature"], settings["max_tokens"], settings["benchmarks"]) == (1.0, 1, [str(bench)])
    assert (settings["limit"], settings["seed"], settings["n"]) == (3, 0, {str(bench): 2})
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 2 and {r["sample"] for r in records} == {0, 1}


def test_provenance_names_the_commit_and_the_versions():
    import torch
    import transformers
    p = common.provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "HEAD", "--quiet"], cwd=ROOT).returncode != 0
    assert p["commit"] == head[:12] + ("+dirty" if dirty else "")
    assert p["versions"]["torch"] == torch.__version__ and p["versions"]["transformers"] == transformers.__version__
    assert p["versions"]["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert len(p["load_average_1_5_15"]) == 3 and p["machine"]["cores"] == os.cpu_count() and p["matmul_gflops"] > 0
    assert p["date"].endswith(" UTC")
