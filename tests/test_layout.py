"""The import rules the README states, read from the source (every import statement, top-level or inside
a function): the spine's modules import nothing of the project, imports flow one way, and nothing but
train.py's own tests imports train."""
import ast
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
