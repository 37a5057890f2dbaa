"""README.md stays true: every command line it shows (code blocks and inline `python ...`, `make ...`,
`torchrun ...`) is run or checked, so no stale command survives. A command that runs on a CPU within a minute
runs (weights.py's table and figure, tiny.py's held-out rows into a temporary folder, --print-config); a
train.py command prints its merged config (the config file and every override are read as the run would read
them); any other command's entry point answers --help and every yaml file it names exists; a make target
dry-runs (`make -n`) and its recipe's commands are checked the same way. Its links point at files and headings
that exist, and it stays under 3000 words."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(python|make|torchrun)\b")
PLACEHOLDER = re.compile(r"^([A-Z]+|\.\.\.|\[.*)$")  # `python train.py --config C`, `--scheme ...`


def readme_commands(text):
    """Command lines of a markdown text: from indented or fenced code blocks (continuation lines joined,
    trailing `# comments` dropped) and from inline code spans. In order, without repeats."""
    found, block = [], []
    lines = text.splitlines()
    fenced = False
    for i, line in enumerate(lines + [""]):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            block.append(line.strip())
            continue
        joined = " \n".join(block).replace("\\ \n", " ").split(" \n")
        block = []
        for cmd in joined:
            cmd = re.sub(r"\s+#.*$", "", cmd).strip()
            if COMMAND.match(cmd):
                found.append(" ".join(cmd.split()))
        for span in re.findall(r"`([^`]+)`", line):
            if COMMAND.match(span):
                found.append(span.strip())
    return list(dict.fromkeys(found))


def test_readme_commands_parses_blocks_comments_and_spans():
    text = ("Run `python weights.py --G 8` or `pytest`.\n\n"
            "    python train.py --config a.yaml \\\n        x=1          # a comment\n"
            "    # two nodes: python train.py\n    class A: pass\n\n"
            "```\nOMP_NUM_THREADS=1 python eval.py --n 2\n```\n")
    assert readme_commands(text) == ["python weights.py --G 8", "python train.py --config a.yaml x=1",
                                     "OMP_NUM_THREADS=1 python eval.py --n 2"]


def split_command(cmd):
    """(environment assignments, launcher, entry point argv, the rest) of one command line: the entry point is
    [python, script] or [python, -m, module]; torchrun's own options are dropped."""
    words = shlex.split(cmd)
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    launcher = words.pop(0)
    if launcher == "make":
        return env, launcher, [], words
    if launcher == "torchrun":
        while words[0].startswith("--"):
            words = words[2:] if "=" not in words[0] else words[1:]
    elif words[0] == "-m":
        return env, launcher, [sys.executable, "-m", words[1]], words[2:]
    return env, launcher, [sys.executable, words[0]], words[1:]


def check_command(cmd, tmp_path, pending):
    """Run or check one README command line (see the module docstring); returns what was done, for the report.
    --print-config and --help checks are queued in `pending` ({(target, argv): (what to find, cmd)}) and run
    together by run_pending, in one process (each check imports torch otherwise)."""
    env, launcher, entry, args = split_command(cmd)
    if launcher == "make":
        dry = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"{cmd}: make -n failed: {dry.stderr}"
        recipe = [line for line in dry.stdout.splitlines() if COMMAND.match(line) and " pip " not in line]
        for line in recipe:
            check_command(line, tmp_path, pending)
        return f"make -n, {len(recipe)} recipe lines"
    name = entry[-1]
    if name == "pytest":  # the test suite itself: the files it names exist
        missing = [a for a in args if a.startswith("tests/") and not (ROOT / a.split("::")[0]).exists()]
        assert not missing, f"{cmd}: no {missing}"
        return "paths"
    if entry[1] == "-m" and PLACEHOLDER.match(name.rpartition(".")[2]):  # `python -m scripts.NAME`: the package
        assert (ROOT / name.rpartition(".")[0].replace(".", "/") / "__init__.py").is_file(), f"{cmd}: no package"
        return "package"
    assert (ROOT / name).is_file() or (ROOT / (name.replace(".", "/") + ".py")).is_file(), f"{cmd}: no {name}"
    missing = [a for a in args if a.endswith((".yaml", ".yml")) and not (ROOT / a).is_file()]
    assert not missing, f"{cmd}: no {missing}"
    pattern = any(PLACEHOLDER.match(a) for a in args)
    if name == "weights.py" and not pattern:  # the scheme curves: a second; the figure into tmp_path
        done = subprocess.run([*entry[:1], str(ROOT / name), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{cmd}: {done.stderr[-2000:]}"
        assert "--plot" not in args or (tmp_path / args[args.index("--plot") + 1]).is_file()
        return "ran"
    if name == "tiny.py" and args[:1] in (["synthetic"], ["arith"]) and not pattern:  # seconds; into tmp_path
        out = tmp_path / args[0]
        done = subprocess.run([*entry, *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and any(out.iterdir()), f"{cmd}: {done.stderr[-2000:]}"
        return "ran into a temporary folder"
    if name == "train.py" and not pattern:  # the config and overrides as the run reads them
        argv = [a for a in args if a not in ("--resume", "--print-config")] + ["--print-config"]
        pending.setdefault((name, tuple(argv)), ("scheme:", cmd))
        return "--print-config"
    pending.setdefault((name, ("--help",)), ("usage", cmd))
    return "--help"


# Runs each (target, argv) as `python target argv` (a .py file) or `python -m target argv` would, in one process.
DRIVER = r"""
import contextlib, io, json, runpy, sys
results = []
for target, argv in json.loads(sys.stdin.read()):
    sys.argv, out, code = [target, *argv], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else str(e.code)
    except BaseException as e:
        code = repr(e)
    results.append([code, out.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""


def run_pending(pending):
    """Run the queued checks: each must exit 0 and print what it is expected to (yaml with `scheme:`, a usage)."""
    checks = list(pending.items())
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([[t, list(a)] for (t, a), _ in checks]),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = [f"{cmd}: exit {code}: {out[-1500:]}" for ((_, _), (expect, cmd)), (code, out)
              in zip(checks, json.loads(done.stdout)) if code != 0 or expect not in out.lower()]
    assert not failed, "\n".join(failed)


def test_every_readme_command_runs_or_is_checked(tmp_path):
    commands = readme_commands(README)
    assert len(commands) >= 20 and "python weights.py --G 8" in commands and "make tiny" in commands
    pending, report = {}, []
    for i, cmd in enumerate(commands):
        folder = tmp_path / str(i)
        folder.mkdir()
        report.append(f"{check_command(cmd, folder, pending):40} {cmd}")
    run_pending(pending)
    print("\n".join(report))


def test_a_stale_command_fails_the_check(tmp_path):
    """The check itself: a script that moved, a config that moved and a stale override are caught."""
    for stale in ("python plot.py runs/tiny", "python train.py --config configs/tiny.yaml"):
        with pytest.raises(AssertionError):
            check_command(stale, tmp_path, {})
    pending = {}
    check_command("python train.py --config configs/grpo.yaml scheme.blind_mu=0.1", tmp_path, pending)
    with pytest.raises(AssertionError, match="blind_mu"):
        run_pending(pending)


def heading_anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_point_at_files_and_headings_that_exist():
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / "README.md"
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
            if anchor not in {heading_anchor(h) for h in headings}:
                broken.append(target)
    assert not broken, f"README links to what does not exist: {broken}"


def test_readme_stays_under_3000_words():
    assert len(README.split()) < 3000
