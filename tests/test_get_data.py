"""scripts/get_data.py (`make data`): the hub's files normalised to the project's rows, tested offline on
stand-in files with the hub copies' real column names (written here, parquet and JSON Lines, in the hub's
layout) and read the way a download is read: through huggingface_hub's own cache (snapshot_download, offline)
or a folder copy of the repositories. Also: the one-line error without network, the manifest, the
skip-if-valid second run, and the local-folder import with its row-count check."""
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ROOT, _mirror
from scripts import get_data as gd

DAPO_PROMPT = ("Solve the following math problem step by step. The last line of your response should be of the form "
               "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
               "Remember to put your answer on its own line after \"Answer:\".")


def dapo_row(problem, answer, index):
    return {"data_source": "math_dapo", "prompt": [{"content": DAPO_PROMPT.format(problem), "role": "user"}],
            "ability": "MATH", "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": index}}


def olympiad_row(i, question, final_answer, subfield):
    return {"id": i, "question": question, "solution": ["We compute ..."], "final_answer": [final_answer],
            "context": None, "image_1": None, "modality": "Text-only", "difficulty": "Competition",
            "is_multiple_answer": False, "unit": None, "answer_type": "Numerical", "error": None,
            "question_type": "Open-ended", "subfield": subfield, "subject": "Math", "language": "English"}


# (hub dataset, file in it) -> rows, with each copy's real column names
HUB = {
    ("DigitalLearningGmbH/MATH-lighteval", "data/train-00000-of-00001.parquet"): [
        {"problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
         "solution": "Adding, $\\frac{1}{4}+\\frac{1}{4}=\\frac{2}{4}=\\boxed{\\frac{1}{2}}$."},
        {"problem": "Where do the lines meet?", "level": "Level 5", "type": "Algebra",
         "solution": "A first guess is $\\boxed{3}$, but in fact they meet at "
                     "$\\boxed{\\left(\\frac{1}{2}, \\sqrt{3}\\right)}$."},
        {"problem": "Find the area.", "level": "Level ?", "type": "Geometry", "solution": "The area is $\\boxed 5$."},
        {"problem": "How many primes are of the form $n^2-1$ for $n>2$?", "level": "Level 3", "type": "Number Theory",
         "solution": "$n^2-1=(n-1)(n+1)$ factors, so there are $\\boxed{}$ primes."},
        {"problem": "Solve $x^2=3x-2$.", "level": "Level 2", "type": "Algebra",
         "solution": "The roots form the set $\\boxed{\\{1, 2\\}}$."},
    ],
    ("HuggingFaceH4/MATH-500", "test.jsonl"): [
        {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
         "solution": "... so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"},
        {"problem": "What is $1+1$?", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Prealgebra", "level": 1,
         "unique_id": "test/prealgebra/1.json"},
    ],
    ("HuggingFaceH4/aime_2024", "data/train-00000-of-00001.parquet"): [
        {"id": 60, "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...", "solution": "...",
         "answer": "204", "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1",
         "year": "2024"},
        {"id": 61, "problem": "Let $ABC$ be a triangle ...", "solution": "...", "answer": "025",
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_2", "year": "2024"},
    ],
    ("math-ai/aime25", "test.jsonl"): [
        {"problem": "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$.",
         "answer": "70", "id": "0"},
    ],
    ("AI-MO/aimo-validation-amc", "data/train-00000-of-00001.parquet"): [
        {"id": 0, "problem": "Cities $A$ and $B$ are $45$ miles apart. ...", "answer": 27.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_1"},
        {"id": 1, "problem": "A 2022 problem.", "answer": 5.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2022_AMC_12B_Problems/Problem_3"},
        {"id": 2, "problem": "What is the degree measure ...?", "answer": 90.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12B_Problems/Problem_2"},
    ],
    ("math-ai/minervamath", "test.jsonl"): [
        {"question": "Each of the two Magellan telescopes has a diameter of $6.5 \\mathrm{~m}$. ...", "answer": "1.6"},
        {"question": "Subproblem 0: ...", "answer": " 4.4e7 "},
    ],
    ("Hothan/OlympiadBench", "OlympiadBench/OE_TO_maths_en_COMP/OE_TO_maths_en_COMP.parquet"): [
        olympiad_row(1606, "Xenia and Sergey play the following game. ...", "$\\frac{1}{2}$", "Combinatorics"),
        olympiad_row(1607, "Find all pairs ...", "$3$, $4$", "Number Theory"),
        olympiad_row(1608, "Solve for $x$ ...", "$x=2$.", "Algebra"),
        olympiad_row(1609, "Compute ...", "$221,$8$", "Algebra"),
    ],
    # another subset of the same repository: the patterns must leave it out
    ("Hothan/OlympiadBench", "OlympiadBench/OE_TO_maths_zh_COMP/OE_TO_maths_zh_COMP.parquet"): [
        olympiad_row(1, "一道题", "$1$", "Algebra"),
    ],
    ("openai/gsm8k", "main/test-00000-of-00001.parquet"): [
        {"question": "Janet's ducks lay 16 eggs per day. ...",
         "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n"
                   "#### 18"},
        {"question": "A shop sold 1,000 pens ...", "answer": "It made 1,234 dollars.\n#### 1,234"},
    ],
    ("openai/gsm8k", "main/train-00000-of-00001.parquet"): [
        {"question": "The temperature fell ...", "answer": "It fell 5 - 8 = -3.\n#### -3"},
    ],
    ("BytedTsinghua-SIA/DAPO-Math-17k", "data/dapo-math-17k.parquet"): [
        dapo_row("In triangle $ABC$, $\\sin A = \\frac{4}{5}$. ...", "34", "a"),
        dapo_row("Find the remainder of $7^{100}$ mod $9$.", "7", "b"),
        dapo_row("In triangle $ABC$, $\\sin A = \\frac{4}{5}$. ...", "34", "a"),
        dapo_row("How many ways ...?", "5", "c"),
        dapo_row("Compute $3 \\cdot 4$.", "12", "d"),
        dapo_row("How many ways ...?", "6", "c2"),  # the same problem with another answer: dropped whole
        dapo_row("Find the remainder of $7^{100}$ mod $9$.", "7", "b"),
        dapo_row("In triangle $ABC$, $\\sin A = \\frac{4}{5}$. ...", "34", "a"),
    ],
}

# what each set must become: worked out by hand from the rows above
EXPECTED = {
    "math_train": [
        {"id": "math_train-0000", "problem": "What is $\\frac{1}{4}+\\frac{1}{4}$?", "answer": "\\frac{1}{2}",
         "level": 1, "subject": "Prealgebra"},
        {"id": "math_train-0001", "problem": "Where do the lines meet?",
         "answer": "\\left(\\frac{1}{2}, \\sqrt{3}\\right)", "level": 5, "subject": "Algebra"},
        {"id": "math_train-0002", "problem": "Find the area.", "answer": "5", "level": None, "subject": "Geometry"},
        {"id": "math_train-0003", "problem": "How many primes are of the form $n^2-1$ for $n>2$?", "answer": "",
         "level": 3, "subject": "Number Theory"},
        {"id": "math_train-0004", "problem": "Solve $x^2=3x-2$.", "answer": "\\{1, 2\\}", "level": 2,
         "subject": "Algebra"},
    ],
    "math500": [
        {"id": "math500-0000", "problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "level": 2, "subject": "Precalculus"},
        {"id": "math500-0001", "problem": "What is $1+1$?", "answer": "2", "level": 1, "subject": "Prealgebra"},
    ],
    "aime24": [{"id": "aime24-0000", "problem": "Every morning Aya goes for a $9$-kilometer-long walk ...",
                "answer": "204"},
               {"id": "aime24-0001", "problem": "Let $ABC$ be a triangle ...", "answer": "25"}],
    "aime25": [{"id": "aime25-0000", "answer": "70",
                "problem": "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."}],
    "amc23": [{"id": "amc23-0000", "problem": "Cities $A$ and $B$ are $45$ miles apart. ...", "answer": "27"},
              {"id": "amc23-0001", "problem": "What is the degree measure ...?", "answer": "90"}],
    "minerva": [{"id": "minerva-0000", "answer": "1.6",
                 "problem": "Each of the two Magellan telescopes has a diameter of $6.5 \\mathrm{~m}$. ..."},
                {"id": "minerva-0001", "problem": "Subproblem 0: ...", "answer": "4.4e7"}],
    "olympiadbench": [
        {"id": "olympiadbench-0000", "problem": "Xenia and Sergey play the following game. ...",
         "answer": "\\frac{1}{2}", "subject": "Combinatorics"},
        {"id": "olympiadbench-0001", "problem": "Find all pairs ...", "answer": "3, 4", "subject": "Number Theory"},
        {"id": "olympiadbench-0002", "problem": "Solve for $x$ ...", "answer": "x=2", "subject": "Algebra"},
        {"id": "olympiadbench-0003", "problem": "Compute ...", "answer": "$221,$8$", "subject": "Algebra"},
    ],
    "gsm8k_test": [{"id": "gsm8k_test-0000", "problem": "Janet's ducks lay 16 eggs per day. ...", "answer": "18"},
                   {"id": "gsm8k_test-0001", "problem": "A shop sold 1,000 pens ...", "answer": "1234"}],
    "gsm8k_train": [{"id": "gsm8k_train-0000", "problem": "The temperature fell ...", "answer": "-3"}],
    "dapo_math_17k": [
        {"id": "dapo_math_17k-0000", "problem": "In triangle $ABC$, $\\sin A = \\frac{4}{5}$. ...", "answer": "34"},
        {"id": "dapo_math_17k-0001", "problem": "Find the remainder of $7^{100}$ mod $9$.", "answer": "7"},
        {"id": "dapo_math_17k-0002", "problem": "Compute $3 \\cdot 4$.", "answer": "12"},
    ],
}


def write_hub_files(folder_of):
    """The stand-in files, each at its path inside folder_of(repo, revision)."""
    for (repo, rel), rows in HUB.items():
        path = folder_of(repo, revision_of(repo)) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".parquet"):
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def revision_of(repo):
    revisions = {s.revision for s in gd.SOURCES.values() if s.repo == repo}
    assert len(revisions) == 1, repo
    return revisions.pop()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def small_counts(monkeypatch):
    """The expected row counts of the stand-ins (the real ones are checked in test_hub_row_count_...)."""
    for name, rows in EXPECTED.items():
        monkeypatch.setitem(gd.SOURCES, name, dataclasses.replace(gd.SOURCES[name], rows=len(rows)))


def check_written(out, origin):
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert sorted(manifest) == sorted(f"{name}.jsonl" for name in EXPECTED)
    for name, rows in EXPECTED.items():
        path = out / f"{name}.jsonl"
        assert read_jsonl(path) == rows, name
        entry, src = manifest[f"{name}.jsonl"], gd.SOURCES[name]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (entry["source"], entry["revision"], entry["split"], entry["rows"], entry["from"]) == \
            (src.repo, src.revision, src.split, len(rows), origin)
    assert manifest["olympiadbench.jsonl"]["files"] == ["OlympiadBench/OE_TO_maths_en_COMP/OE_TO_maths_en_COMP.parquet"]
    assert manifest["gsm8k_test.jsonl"]["files"] == ["main/test-00000-of-00001.parquet"]


def test_hub_download_path_normalises_every_set(tmp_path, small_counts, monkeypatch, capsys):
    """The download path itself: snapshot_download (offline, from huggingface_hub's cache laid out as the hub
    writes it) -> the split's files -> the rows, every set."""
    from huggingface_hub import constants
    cache = tmp_path / "hf_cache"
    write_hub_files(lambda repo, rev: cache / f"datasets--{repo.replace('/', '--')}" / "snapshots" / rev)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(gd, "_reachable", False)  # as on a machine without network: the cache only
    assert gd.main(["--out", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    check_written(tmp_path / "data", "hub")
    assert "dapo_math_17k: 3 rows" in out and ("8 source rows, 4 distinct problems, 1 dropped whose copies disagree "
                                               "on the answer: 3 remain") in out
    assert "math_train: 5 rows" in out and "1 without an answer in the source" in out


def test_hub_copy_reads_the_same_files(tmp_path, small_counts):
    write_hub_files(lambda repo, rev: tmp_path / "hub" / repo)
    assert gd.main(["--hub-copy", str(tmp_path / "hub"), "--out", str(tmp_path / "data")]) == 0
    check_written(tmp_path / "data", f"hub copy in {tmp_path / 'hub'}")


def test_hub_row_count_is_checked(tmp_path, capsys):
    write_hub_files(lambda repo, rev: tmp_path / "hub" / repo)
    assert gd.main(["--hub-copy", str(tmp_path / "hub"), "--out", str(tmp_path / "data"), "--only", "math500"]) == 1
    err = capsys.readouterr().err
    assert err == "get_data: math500: 2 rows from HuggingFaceH4/MATH-500@6e4ed1a, expected 500; nothing written\n"
    assert not (tmp_path / "data" / "math500.jsonl").exists()


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}],
                         ids=["unreachable", "HF_HUB_OFFLINE"])
def test_without_network_one_line_names_the_dataset_and_the_command(tmp_path, env):
    """No hub (here: a closed local port, or offline mode) and nothing cached: one line, no traceback, fast
    (huggingface_hub alone would retry for ~25 s)."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty_cache"), **env}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scripts.get_data", "--out", str(tmp_path / "data")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("get_data: math500: could not download HuggingFaceH4/MATH-500@6e4ed1a (")
    assert "python -m scripts.get_data --only math500" in proc.stderr and "--from DIR" in proc.stderr
    assert elapsed < 15, elapsed


def write_local(folder, rows_by_name):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_name.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_second_run_skips_what_is_valid_and_rebuilds_what_is_not(tmp_path, small_counts, capsys):
    local, out = tmp_path / "mirror", tmp_path / "data"
    write_local(local, {n: EXPECTED[n] for n in ("math500", "aime24", "gsm8k_test")})
    names = ["math500", "aime24", "gsm8k_test"]
    assert gd.get(names, out, local=local, log=lambda line: None) == dict.fromkeys(names, "written")
    stamps = {n: (out / f"{n}.jsonl").stat().st_mtime_ns for n in names}
    time.sleep(0.01)
    assert gd.main(["--from", str(local), "--out", str(out), "--only", *names]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("matches MANIFEST.json" in line and line.endswith("skipped") for line in lines)
    assert {n: (out / f"{n}.jsonl").stat().st_mtime_ns for n in names} == stamps
    # a file changed after it was written no longer matches its sha256: rebuilt from the source
    (out / "aime24.jsonl").write_text((out / "aime24.jsonl").read_text().replace('"204"', '"205"'))
    assert gd.get(names, out, local=local, log=lambda line: None) == \
        {"math500": "skipped", "aime24": "written", "gsm8k_test": "skipped"}
    assert read_jsonl(out / "aime24.jsonl") == EXPECTED["aime24"]
    assert gd.get(["aime24"], out, local=local, force=True, log=lambda line: None) == {"aime24": "written"}


def test_local_import_checks_the_row_count(tmp_path, capsys):
    local, out = tmp_path / "mirror", tmp_path / "data"
    write_local(local, {"math500": EXPECTED["math500"] + [{"id": "math500-0002", "problem": "p", "answer": "1"}]})
    assert gd.main(["--from", str(local), "--out", str(out), "--only", "math500"]) == 1
    err = capsys.readouterr().err
    assert err == (f"get_data: math500: {local / 'math500.jsonl'} has 3 rows, expected 500 "
                   f"({gd.SOURCES['math500'].what}); not imported\n")
    assert not (out / "math500.jsonl").exists() and not (out / "MANIFEST.json").exists()


def test_local_import_names_a_bad_row(tmp_path, small_counts):
    local = tmp_path / "mirror"
    write_local(local, {"math500": [EXPECTED["math500"][0], {**EXPECTED["math500"][1], "answer": 2}]})
    with pytest.raises(gd.DataError, match=r"math500.jsonl:2: 'answer' must be a string, got int"):
        gd.get(["math500"], tmp_path / "data", local=local)
    with pytest.raises(gd.DataError, match=r"unknown set 'math5000': choose from math500, aime24"):
        gd.get(["math5000"], tmp_path / "data", local=local)
    with pytest.raises(gd.DataError, match=r"aime24: .*aime24.jsonl not found"):
        gd.get(["aime24"], tmp_path / "data", local=local)


MIRROR = _mirror()
needs_mirror = pytest.mark.skipif(not (MIRROR / "math500.jsonl").is_file(), reason=f"no mirror at {MIRROR}")


@needs_mirror
def test_mirror_import_writes_the_manifest(tmp_path):
    present = [n for n in gd.SOURCES if (MIRROR / f"{n}.jsonl").is_file()]
    status = gd.get(None, tmp_path, local=MIRROR, log=lambda line: None)
    assert [n for n, s in status.items() if s == "written"] == present
    assert {n for n, s in status.items() if s == "missing"} == set(gd.SOURCES) - set(present)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    for name in present:
        data = (MIRROR / f"{name}.jsonl").read_bytes()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == data
        entry = manifest[f"{name}.jsonl"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == data.count(b"\n") == gd.SOURCES[name].rows
        assert entry["source"] == f"local folder {MIRROR.resolve()}" and entry["revision"] is None


@needs_mirror
def test_answer_rules_reproduce_the_mirror(tmp_path):
    """The mirror's answers were taken from other copies of the same sets by another program: the rules here
    (last \\boxed{}, text after ####, OlympiadBench's dollars, integer AIME/AMC answers) must give the same."""
    def rows(name):
        return read_jsonl(MIRROR / f"{name}.jsonl")
    math = rows("math_train")
    differ = [r["id"] for r in math if gd.last_boxed(r["solution"]) != r["answer"]]
    assert differ == ["math_train-5529", "math_train-5531"]  # the two empty boxes, set to "0" by hand there
    assert all(gd.last_boxed(r["solution"]) == r["answer"] for r in rows("math500"))
    assert all(gd.gsm8k_answer(r["solution"]) == r["answer"] for r in rows("gsm8k_test"))
    assert all(gd.olympiad_answer(r["final_answer"]) == r["answer"] for r in rows("olympiadbench"))
    for name in ("aime24", "aime25", "amc23"):
        assert all(gd.integer_answer(r["answer_raw"]) == r["answer"] for r in rows(name)), name


def test_last_boxed_by_hand():
    assert gd.last_boxed("so $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert gd.last_boxed("\\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}.") == "\\sqrt{\\frac{a}{b}}"
    assert gd.last_boxed("\\fbox{7}") == "7" and gd.last_boxed("is $\\boxed 12$.") == "12"
    assert gd.last_boxed("no box") is None and gd.last_boxed("\\boxed{\\frac{1}{2}") is None
    assert gd.last_boxed("\\boxedx{3}") is None
    assert gd.gsm8k_answer("x\n#### 1,234,567") == "1234567" and gd.gsm8k_answer("no marker") is None
    assert gd.integer_answer("007") == "7" and gd.integer_answer(27.0) == "27" and gd.integer_answer(2.5) == "2.5"


def test_names_agree_with_data_py_and_the_configs():
    """The files the benchmark table and the configs name are the files this command writes."""
    from data import BENCHMARK_FILES
    written = {f"{name}.jsonl" for name in gd.SOURCES}
    assert set(BENCHMARK_FILES.values()) <= written
    for path in sorted((ROOT / "configs").glob("**/*.yaml")):  # experiments/ and 7b/ too
        cfg = yaml.safe_load(path.read_text()) or {}
        train = (cfg.get("data") or {}).get("train", "")
        if train.endswith(".jsonl"):
            assert train.startswith("data/") and train[len("data/"):] in written, (path.name, train)
        if "data_dir" in (cfg.get("eval") or {}):
            assert cfg["eval"]["data_dir"] == "data", path.name
