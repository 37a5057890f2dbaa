"""The layout the README states, read from the source (every import statement, top-level or inside a function).
Three layers: the library at the top level is train.py, eval.py and what they import, nothing else; scripts/
(tools, experiments, demos) and benchmarks/ (speed and memory figures) may import the library, never the
reverse, and scripts import no benchmark. Inside the library imports flow one way: the spine's modules import
nothing of the project, and nothing but train.py's own tests imports train. And the repository stands alone:
no path, document or issue number outside it is named in its text."""
import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = {p.stem for p in ROOT.glob("*.py")}
LAYERS = {"scripts", "benchmarks"}  # packages of their own, beside the library
ENTRY_POINTS = {"train", "eval"}

# what each library module may import of the project (README, "Layout"); train.py may import everything
ALLOWED = {
    "weights": set(), "loss": set(), "mathparse": set(), "rollout": set(), "distributed": set(), "tiny": set(),
    "verify": {"mathparse"},
    "data": {"tiny", "verify"}, "policy": {"loss", "distributed"}, "metrics": {"distributed"},
    "eval": {"rollout", "verify", "data"}, "config": {"weights", "loss", "rollout", "data"},
    "memory": {"loss"},  # the LM-head kernel, measured under fake tensors
}
TRAIN_TESTS = {"test_train.py", "test_smol_train.py", "dist_step.py", "dist_eval.py", "dist_checks.py"}


def project_imports(path):
    """The library modules and layers (scripts, benchmarks) that the file at `path` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & (LIBRARY | LAYERS)


def imported_closure(roots, imports_of):
    """Every module reached from `roots` by following imports_of (name -> set of names), the roots included."""
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(imports_of.get(name, set()) - seen)
    return seen


def test_imported_closure_on_a_hand_made_tree():
    """The check itself: a tool at the top level that the entry points never import is left out of the closure."""
    tree = {"train": {"a", "eval"}, "eval": {"b"}, "a": {"c"}, "b": set(), "c": set(), "tool": {"a", "b"}}
    assert imported_closure(ENTRY_POINTS, tree) == {"train", "eval", "a", "b", "c"}


def test_the_top_level_is_train_eval_and_what_they_import():
    imports_of = {name: project_imports(ROOT / f"{name}.py") & LIBRARY for name in LIBRARY}
    extra = LIBRARY - imported_closure(ENTRY_POINTS, imports_of)
    assert not extra, f"neither train.py nor eval.py imports {sorted(extra)}: move them to scripts/ or benchmarks/"


def test_every_module_is_listed():
    assert LIBRARY - {"train"} == set(ALLOWED)


def test_modules_import_only_what_the_readme_says():
    for name, allowed in ALLOWED.items():
        got = project_imports(ROOT / f"{name}.py") - {name}
        assert got <= allowed, f"{name}.py imports {sorted(got - allowed)}"


def test_scripts_and_benchmarks_import_the_library_never_the_reverse():
    library = [ROOT / f"{name}.py" for name in sorted(LIBRARY)]
    offenders = [f"{p.name} imports {sorted(project_imports(p) & LAYERS)}" for p in library
                 if project_imports(p) & LAYERS]
    offenders += [f"scripts/{p.name} imports benchmarks" for p in sorted((ROOT / "scripts").glob("*.py"))
                  if "benchmarks" in project_imports(p)]
    assert not offenders, offenders
    assert (ROOT / "scripts" / "__init__.py").is_file()  # `python -m scripts.NAME` from the repository root


def test_the_trainer_knows_no_toy_task():
    """train.py reaches tiny.py's tasks only through data.py (rows, rewards by name), never by import."""
    assert "tiny" not in project_imports(ROOT / "train.py")


def test_nothing_imports_train_but_its_own_tests():
    files = [p for p in ROOT.glob("*.py") if p.stem != "train"]
    files += list((ROOT / "scripts").glob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
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
