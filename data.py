"""Data: rows of problems and answers from JSON Lines files (local or on the hub), the benchmarks'
known names, and the resumable prompt stream that feeds training.

A row is a dict with `id`, `problem`, `answer` (a string) and optional `level` / `subject`. Rows
without an answer are reported and skipped, never scored 0. eval.py and train.py both read their data
here; nothing here imports the rest of the project except the tiny synthetic task.
"""
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DataConfig:
    # a task of tiny.py (synthetic | boxed | word_problems | arith | arith:1-2), a JSON Lines path, or
    # hf:owner/name/file.jsonl
    train: str = "synthetic"
    problem_key: str = "problem"
    answer_key: str = "answer"
    shuffle: bool = True
    max_prompt_tokens: int = 1024   # longer prompts are skipped (and counted in the log)


# Known names -> file in --data-dir (JSON Lines with id, problem, answer, optional level/subject).
BENCHMARK_FILES = {
    "math500": "math500.jsonl",
    "aime24": "aime24.jsonl",
    "aime25": "aime25.jsonl",
    "amc23": "amc23.jsonl",
    "minerva": "minerva.jsonl",
    "olympiadbench": "olympiadbench.jsonl",
    "gsm8k": "gsm8k_test.jsonl",
}


def _read_jsonl(path, stem, problem_key="problem", answer_key="answer"):
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
            if problem_key not in row:
                raise ValueError(f"{path}:{i + 1}: row has no '{problem_key}' field (fields: {sorted(row)})")
            row["problem"], row["answer"] = row[problem_key], row.get(answer_key)
            row.setdefault("id", f"{stem}-{i:04d}")
            rows.append(row)
    return rows


def load_benchmark(name_or_path, data_dir=None, *, problem_key="problem", answer_key="answer"):
    """Rows (dicts with id, problem, answer, optional level/subject) of one benchmark.

    `name_or_path` is a known name (a file in `data_dir`), a path to a .jsonl file, or
    `hf:<owner>/<dataset>/<file>.jsonl` (a file from the Hugging Face hub; needs internet).
    The question and answer fields are read from `problem_key` and `answer_key` (train.py's data
    config). Rows without an answer are skipped with a warning naming their id.
    """
    name = str(name_or_path)
    if name.startswith("hf:"):
        parts = name[3:].split("/")
        if len(parts) < 3:
            raise ValueError(f"hub benchmark {name!r} must look like hf:<owner>/<dataset>/<file>.jsonl")
        from huggingface_hub import hf_hub_download  # comes with transformers
        path = Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), repo_type="dataset"))
        stem = parts[1].lower()
    elif name in BENCHMARK_FILES:
        if data_dir is None:
            raise ValueError(f"benchmark {name!r} is a file in a data directory: pass data_dir (--data-dir)")
        path = Path(data_dir) / BENCHMARK_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(f"benchmark {name!r}: file {path} not found "
                                    f"(set --data-dir to the folder holding {BENCHMARK_FILES[name]})")
        stem = name
    elif name.endswith(".jsonl") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} not found")
        stem = path.stem
    else:
        raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARK_FILES)}, "
                         f"a path to a .jsonl file, or hf:<owner>/<dataset>/<file>.jsonl")
    rows = []
    for row in _read_jsonl(path, stem, problem_key, answer_key):
        answer = row.get("answer")
        if answer is None or str(answer).strip() == "":
            warnings.warn(f"benchmark {name!r}: row {row['id']} has no answer; skipped")
            continue
        rows.append({**row, "answer": str(answer)})
    if not rows:
        raise ValueError(f"benchmark {name!r} ({path}) has no rows with an answer")
    return rows


def load_rows(cfg: DataConfig, seed):
    """Training rows: a task of tiny.py ("synthetic": one-token sums; "boxed": worked sums in \\boxed{};
    "word_problems": short arithmetic stories, for SmolLM2; "arith": the leveled arithmetic task, "arith:1-2"
    its levels 1 and 2 only), or a JSON Lines / hub file (load_benchmark)."""
    import tiny
    tasks = {"synthetic": tiny.synthetic_rows, "boxed": tiny.boxed_rows, "word_problems": tiny.word_problem_rows}
    if cfg.train in tasks:
        return tasks[cfg.train](100_000, seed)
    name, _, levels = cfg.train.partition(":")
    if name == "arith":
        return tiny.arith_rows(100_000, seed, tiny.parse_levels(levels))
    return load_benchmark(cfg.train, problem_key=cfg.problem_key, answer_key=cfg.answer_key)


class PromptStream:
    """Endless, epoch-shuffled walk over the rows; its state (epoch, position) resumes exactly."""

    def __init__(self, rows, seed, shuffle):
        self.rows, self.seed, self.shuffle = rows, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order()

    def _order(self):
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows)) \
            if self.shuffle else np.arange(len(self.rows))

    def take(self, n):
        out = []
        while len(out) < n:
            if self.pos == len(self.rows):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order()
            out.append(self.rows[self.order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order()


# ---------------------------------------------------------------------------------------------
# Rewards by name: the one place that maps reward.kind to a scorer (training and validation alike).

REWARDS = ("math", "first_char")


def reward_function(kind, *, workers=0, timeout=5.0):
    """score(texts, golds, problems) -> list of 0/1 for the reward named `kind`: "math" (verify.score_batch:
    the final answer against the gold, math-equivalent; the problem text lets "round to ..." match) or
    "first_char" (tiny.py's synthetic task: the response starts with the answer)."""
    if kind == "math":
        import verify
        return lambda texts, golds, problems: verify.score_batch(texts, golds, workers=workers, timeout=timeout,
                                                                 problems=problems)
    if kind == "first_char":
        import tiny
        return lambda texts, golds, problems: tiny.first_char_scores(texts, golds)
    raise ValueError(f"unknown reward {kind!r}: choose one of {', '.join(REWARDS)}")
