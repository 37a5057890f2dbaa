import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _find_data_dir():
    """The benchmark files (never committed): $RLVR_DATA_DIR, else shared/data beside the checkout or
    beside any folder above it, else /work/shared/data (where this project's machines keep them)."""
    if os.environ.get("RLVR_DATA_DIR"):
        return Path(os.environ["RLVR_DATA_DIR"])
    for base in [*ROOT.parents, Path("/work")]:
        if (base / "shared" / "data" / "math500.jsonl").is_file():
            return base / "shared" / "data"
    return ROOT.parent / "shared" / "data"


DATA_DIR = _find_data_dir()
# Tests that read the benchmark files skip, saying where they looked, on a machine without them.
needs_data = pytest.mark.skipif(not (DATA_DIR / "math500.jsonl").is_file(),
                                reason=f"benchmark data not found (looked for {DATA_DIR}/math500.jsonl; "
                                       "set RLVR_DATA_DIR)")


def recompute_answer(problem):
    """A word problem's (answer, number of operations) read back from its text with regular expressions
    (independent of tiny.word_problem, which wrote it)."""
    count = int(re.match(r"\w+ has (\d+) ", problem).group(1))
    ops = 0
    for m in re.finditer(r"buys (\d+) more|gives (\d+) to|gets (\d+) boxes with (\d+) ", problem):
        buy, give, boxes, each = m.groups()
        count += int(buy) if buy else -int(give) if give else int(boxes) * int(each)
        ops += 1
    return count, ops


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped on CPU-only machines")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """configs/tiny.yaml's model, built once per session as `python tiny.py synthetic` builds it: the random
    2-layer Qwen2 of the synthetic task, its held-out rows in synthetic.jsonl beside it."""
    from tiny import build_synthetic
    return build_synthetic(tmp_path_factory.mktemp("tiny_synthetic"))
