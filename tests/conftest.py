import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _mirror():
    """The local mirror of the benchmark and training files (JSON Lines, never committed): $RLVR_DATA_DIR, else
    shared/data beside the checkout (where this project's machines and CI keep it)."""
    return Path(os.environ["RLVR_DATA_DIR"]) if os.environ.get("RLVR_DATA_DIR") else ROOT.parent / "shared" / "data"


def import_mirror(out):
    """The mirror's sets imported into `out` through the data command (`python -m scripts.get_data --from
    MIRROR`: rows checked, counted, written with a manifest; files already there and valid are skipped), so
    that tests read the data where the configs do. Returns `out`; without a mirror, `out` as it is (it may
    hold files from the hub)."""
    from scripts.get_data import SOURCES, get
    mirror = _mirror()
    present = [name for name in SOURCES if (mirror / f"{name}.jsonl").is_file()]
    if present:
        get(present, out, local=mirror, log=lambda line: None)
    return out


DATA_DIR = import_mirror(ROOT / "data")
# Tests that read the benchmark files skip, saying where they looked, on a machine without them.
needs_data = pytest.mark.skipif(not (DATA_DIR / "math500.jsonl").is_file(),
                                reason=f"benchmark data not found: no {DATA_DIR}/math500.jsonl and no mirror at "
                                       f"{_mirror()} to import (python -m scripts.get_data, or set RLVR_DATA_DIR)")


@pytest.fixture(scope="session")
def data_dir():
    """The folder of the imported benchmark and training files (DATA_DIR); skips the test without them."""
    if not (DATA_DIR / "math500.jsonl").is_file():
        pytest.skip(f"benchmark data not found in {DATA_DIR} (python -m scripts.get_data, or set RLVR_DATA_DIR)")
    return DATA_DIR


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
    """configs/experiments/tiny.yaml's model, built once per session as `python tiny.py synthetic` builds it: the random
    2-layer Qwen2 of the synthetic task, its held-out rows in synthetic.jsonl beside it."""
    from tiny import build_synthetic
    return build_synthetic(tmp_path_factory.mktemp("tiny_synthetic"))
