"""The import rules the README states, read from the source (every import statement, top-level or inside
a function): the spine's modules import nothing of the project, imports flow one way, and nothing but
train.py's own tests imports train. And the repository stands alone: no path, document or issue number
outside it is named in its text."""
import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = {p.stem for p in ROOT.glob("*.py")}

# what each module may import of the project (README, "Layout"); train.py may import everything
ALLOWED = {
    "weights": set(), "loss": set(), "mathparse": set(), "rollout": set(), "distributed": set(), "tiny": set(),
    "smol": set(), "plot": set(),
    "verify": {"mathparse"},
    "data": {"tiny", "verify"}, "policy": {"loss", "distributed"}, "metrics": {"distributed"},
    "eval": {"rollout", "verify", "data"}, "config": {"weights", "loss", "rollout", "data"},
    "sweep": {"plot", "tiny", "weights", "config", "distributed"},  # distributed: a run's latest checkpoint
    "smol_learn": {"plot", "smol", "tiny", "config"},  # config: the run's prompt instruction
}
TRAIN_TESTS = {"test_train.py", "test_smol_train.py", "dist_step.py", "dist_eval.py", "dist_checks.py"}


def project_imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & MODULES


def test_every_module_is_listed():
    assert MODULES - {"train"} == set(ALLOWED)


def test_modules_import_only_what_the_readme_says():
    for name, allowed in ALLOWED.items():
        got = project_imports(ROOT / f"{name}.py") - {name}
        assert got <= allowed, f"{name}.py imports {sorted(got - allowed)}"


def test_the_trainer_knows_no_toy_task():
    """train.py reaches tiny.py's tasks only through data.py (rows, rewards by name), never by import."""
    assert "tiny" not in project_imports(ROOT / "train.py")


def test_nothing_imports_train_but_its_own_tests():
    files = [p for p in ROOT.glob("*.py") if p.stem != "train"] + list((ROOT / "benchmarks").glob("*.py"))
    files += [p for p in (ROOT / "tests").glob("*.py") if p.name not in TRAIN_TESTS]
    offenders = [str(p.relative_to(ROOT)) for p in files if "train" in project_imports(p)]
    assert not offenders, f"these import train.py: {offenders}"


# The repository stands alone: no text outside tests/ and .ci/ points at a folder beside the checkout, at a
# document that is not in it, or at an issue tracker's numbers. Recorded run files (docs/**/*.json, *.jsonl:
# commands as they were typed at run time) are left out.
STANDALONE_PATTERNS = {
    "a path outside the repository": re.compile(r"\.\./shared|\.parent\s*/\s*[\"']shared[\"']"),
    "the SPEC document": re.compile(r"\bSPEC\b|(?i:spec\.md|\bthe spec\b)"),  # `spec` as a name passes
    "an issue number": re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE),
}


def repository_text_files():
    """(path, text) of every file git tracks, or would track (new, not ignored), outside tests/ and .ci/,
    that reads as UTF-8 text; recorded run files (*.json, *.jsonl under docs/) are left out."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in sorted(set(filter(None, listed))):
        if rel.startswith(("tests/", ".ci/")) or (rel.startswith("docs/") and rel.endswith((".json", ".jsonl"))):
            continue
        path = ROOT / rel
        if not path.is_file():  # deleted in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            yield rel, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def standalone_violations(files):
    """'path:line: what (the matched text)' for each match of STANDALONE_PATTERNS in (path, text) pairs."""
    found = []
    for rel, text in files:
        for what, pattern in STANDALONE_PATTERNS.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{rel}:{line}: {what} ({' '.join(m.group(0).split())!r})")
    return found


def test_standalone_patterns_catch_what_they_should():
    """The check itself, on hand-written lines: what must be caught is, what must pass does."""
    bad = ["data_dir: ../shared/data", "default=str(ROOT.parent / 'shared' / 'data')", "as SPEC.md says",
           "SPEC's reference settings", "see spec.md", "issue 26's +40", "issues 26-27", "(Issue 24)", "issue24's branch", "short of issue\n26's target",
           "as the spec reads it"]
    good = ["spec=\".3g\"", "def parse_benchmarks(spec, default_n):", "importlib.util.find_spec(name)",
            "a known issue with the loss scale", "the DARO paper's settings (arXiv 2510.09001)",
            "data/shared.jsonl", "specs of the run"]
    assert [t for t in bad if not standalone_violations([("x", t)])] == []
    assert standalone_violations([(f"g{i}", t) for i, t in enumerate(good)]) == []


def test_the_repository_stands_alone():
    files = list(repository_text_files())
    assert any(rel == "README.md" for rel, _ in files) and any(rel == "weights.py" for rel, _ in files)
    found = standalone_violations(files)
    assert not found, f"{len(found)} references outside the repository:\n" + "\n".join(found)
