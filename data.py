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
    # how a leveled task's levels are drawn: "rows" (as the rows come, a shuffled walk) or "learnability"
    # (LevelCurriculum: each prompt's level with probability ~ p (1 - p), p the level's recent pass rate)
    level_sampling: str = "rows"
    level_memory: float = 0.8       # learnability: weight of the past in a level's pass-rate counts, per step


# Known names -> file in --data-dir (JSON Lines with id, problem, answer, optional level/subject), as
# scripts/get_data.py writes them.
BENCHMARK_FILES = {
    "math500": "math500.jsonl",
    "aime24": "aime24.jsonl",
    "aime25": "aime25.jsonl",
    "amc23": "amc23.jsonl",
    "minerva": "minerva.jsonl",
    "olympiadbench": "olympiadbench.jsonl",
    "gsm8k": "gsm8k_test.jsonl",
}


def read_jsonl(path):
    """(line index from 0, parsed value) of each non-blank line of a JSON Lines file; a line that is not JSON
    is a ValueError naming the file and its line number."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
            yield i, value


def _read_jsonl(path, stem, problem_key="problem", answer_key="answer"):
    rows = []
    for i, row in read_jsonl(path):
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
            raise FileNotFoundError(f"benchmark {name!r}: file {path} not found (`make data` writes it to data/; "
                                    f"or set --data-dir to the folder holding {BENCHMARK_FILES[name]})")
        stem = name
    elif name.endswith(".jsonl") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            hint = " (`make data` writes the training sets and benchmarks there)" if path.parts[:1] == ("data",) else ""
            raise FileNotFoundError(f"benchmark file {path} not found{hint}")
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
    levels = ()  # it draws no levels and ignores the verdicts (LevelCurriculum does not)

    def observe(self, counts):
        pass

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


class LevelCurriculum:
    """Learnability sampling over a leveled task's levels (Foster & Foerster 2025, "Learning to Reason at the
    Frontier of Learnability", who weight prompts; here levels): each prompt's level is drawn with probability

        P(L) ~ p_L (1 - p_L),   p_L = (c_L + 1) / (n_L + 2)

    with c_L, n_L the correct and sampled responses of level L, decayed by `memory` each step. p (1 - p) is
    the variance of a response's verdict: a level the policy always or never solves gives GRPO no gradient
    (every group's advantage is 0), a level near p = 1/2 the most. The +1 / +2 (Laplace) keeps every level
    drawn now and then, and a level not drawn for a while decays back toward p = 1/2 and is tried again.
    Within a level, rows come as a PromptStream walk. The state (counts, draws, walks) resumes exactly;
    `observe` takes counts summed over ranks, so every rank draws the same levels."""

    def __init__(self, rows, seed, shuffle, memory):
        self.levels = sorted({r.get("level") for r in rows}, key=str)
        if None in self.levels:
            raise ValueError("data.level_sampling: learnability needs a `level` on every row")
        self.streams = [PromptStream([r for r in rows if r["level"] == lv], seed + 1_000_003 * (i + 1), shuffle)
                        for i, lv in enumerate(self.levels)]
        self.seed, self.memory, self.draws = seed, memory, 0
        self.correct = np.zeros(len(self.levels))  # float64: decayed counts
        self.sampled = np.zeros(len(self.levels))

    def probabilities(self):
        p = (self.correct + 1) / (self.sampled + 2)
        return p * (1 - p) / (p * (1 - p)).sum()

    def take(self, n):
        rng = np.random.default_rng([self.seed, self.draws])
        self.draws += 1
        return [self.streams[i].take(1)[0] for i in rng.choice(len(self.levels), size=n, p=self.probabilities())]

    def observe(self, counts):
        """counts [levels, 2]: this step's correct and sampled responses per level (in self.levels' order),
        summed over ranks."""
        counts = np.asarray(counts, dtype=np.float64).reshape(len(self.levels), 2)
        self.correct = self.memory * self.correct + counts[:, 0]
        self.sampled = self.memory * self.sampled + counts[:, 1]

    def state_dict(self):
        return {"draws": self.draws, "correct": self.correct.tolist(), "sampled": self.sampled.tolist(),
                "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, s):
        self.draws, self.correct, self.sampled = s["draws"], np.array(s["correct"]), np.array(s["sampled"])
        for stream, state in zip(self.streams, s["streams"]):
            stream.load_state_dict(state)


def prompt_stream(cfg: DataConfig, seed):
    """The training prompts: a shuffled walk over the rows, or a LevelCurriculum over their levels."""
    rows = load_rows(cfg, seed)
    if cfg.level_sampling == "learnability":
        return LevelCurriculum(rows, seed, cfg.shuffle, cfg.level_memory)
    return PromptStream(rows, seed, cfg.shuffle)


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
