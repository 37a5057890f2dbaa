"""The training sets and benchmarks the configs name, in one command: downloaded from the Hugging Face hub at
pinned revisions (or imported from a local folder), normalised to the project's JSON Lines rows and written
under data/ (git-ignored) with data/MANIFEST.json.

    python -m scripts.get_data                         # every set, from the hub (`make data`)
    python -m scripts.get_data --only math500 aime24   # some of them
    python -m scripts.get_data --from DIR              # DIR/<name>.jsonl, already in the project's rows
                                                       # (`make data FROM=DIR`): row counts checked
    python -m scripts.get_data --hub-copy DIR          # the hub's own files, from DIR/<owner>/<dataset>/
    python -m scripts.get_data --list                  # the sets and their sources

A row is {"id", "problem", "answer" (a string), "level" / "subject" where the source has them}. Answers are
taken as the benchmarks' own graders take them: MATH's, the content of the solution's last \\boxed{} (braces
matched); GSM8K's, the number after "####" without thousands commas. The manifest records, per written file,
its source, revision, split, source files, row count and sha256; a second run skips every file whose sha256
matches it (--force rewrites).

The hub is read with huggingface_hub (installed with transformers) and parquet with pyarrow: `datasets` would
add pandas, dill, multiprocess, xxhash and aiohttp for what is here a file download and a table read.
"""
import argparse
import fnmatch
import hashlib
import itertools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "MANIFEST.json"
COMMAND = "python -m scripts.get_data"
HUB_TIMEOUT = 5.0  # seconds for the one reachability request before any download


class DataError(Exception):
    """A source or file problem, said in one line (main prints it without a traceback)."""


# ---- answers as the graders take them -------------------------------------------------------------------

def last_boxed(text):
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; for the brace-less
    `\\boxed 5` the token after it. None when there is no box or its braces never close."""
    boxes = list(re.finditer(r"\\(?:boxed|fbox)\b", text))
    if not boxes:
        return None
    i = boxes[-1].end()
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1:j]
        return None
    token = re.match(r"[^\s$]+", text[i:])
    return token.group(0) if token else None


def gsm8k_answer(text):
    """The number after the last "####" of a GSM8K answer, thousands commas removed (None without "####")."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def integer_answer(value):
    """AIME / AMC answers as integer strings ("025" -> "25", 27.0 -> "27"); anything else as its string."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+(\.0*)?", text):
        return str(int(float(text)))
    return text


def olympiad_answer(final_answer):
    """OlympiadBench's final_answer[0] without its $...$: "$x$" -> "x", "$a$, $b$" -> "a, b", "$x$." -> "x";
    an entry whose dollars do not wrap it cleanly is kept as it is."""
    text = str(final_answer[0]).strip()
    if text.endswith("$."):
        text = text[:-1]
    if re.fullmatch(r"\$[^$]*\$(\s*,\s*\$[^$]*\$)*", text):
        return ", ".join(part.strip() for part in re.findall(r"\$([^$]*)\$", text))
    return text


# DAPO-Math-17k wraps each problem in its prompt (arXiv 2503.14476): an instruction to end with "Answer: ...",
# the problem, and a reminder. The rows here hold the problem alone, like every other set.
DAPO_HEAD = "where $Answer is the answer to the problem."
DAPO_TAIL = 'Remember to put your answer on its own line after "Answer:".'


def dapo_problem(prompt):
    """The bare problem of a DAPO prompt (text without the head or the tail is kept whole, stripped)."""
    head = prompt.find(DAPO_HEAD)
    text = prompt[head + len(DAPO_HEAD):] if head >= 0 else prompt
    tail = text.rfind(DAPO_TAIL)
    return (text[:tail] if tail >= 0 else text).strip()


# ---- each set: source rows -> (rows of the project, a note) ------------------------------------------------

def _math_train(rows):
    out = []
    for r in rows:
        level = re.fullmatch(r"Level (\d)", str(r["level"]).strip())  # "Level ?" on 2 rows: no level
        out.append({"problem": r["problem"], "answer": last_boxed(r["solution"]),
                    "level": int(level.group(1)) if level else None, "subject": r["type"]})
    return out, ""


def _math500(rows):
    return [{"problem": r["problem"], "answer": str(r["answer"]), "level": int(r["level"]),
             "subject": r["subject"]} for r in rows], ""


def _aime(rows):
    return [{"problem": r["problem"], "answer": integer_answer(r["answer"])} for r in rows], ""


def _amc23(rows):
    # AI-MO's AMC validation set holds AMC 12 2022 and 2023; the benchmark is its 40 problems of 2023
    return [{"problem": r["problem"], "answer": integer_answer(r["answer"])}
            for r in rows if "2023_AMC" in r["url"]], ""


def _minerva(rows):
    return [{"problem": r["question"], "answer": str(r["answer"]).strip()} for r in rows], ""


def _olympiadbench(rows):
    return [{"problem": r["question"], "answer": olympiad_answer(r["final_answer"]), "subject": r["subfield"]}
            for r in rows], ""


def _gsm8k(rows):
    return [{"problem": r["question"], "answer": gsm8k_answer(r["answer"])} for r in rows], ""


def _dapo(rows):
    """One row per distinct problem text, at its first occurrence; a problem whose copies disagree on the
    answer is dropped whole (neither answer can be trusted)."""
    answers, order, total = {}, [], 0
    for r in rows:
        total += 1
        problem = dapo_problem(r["prompt"][0]["content"])
        if problem not in answers:
            answers[problem] = set()
            order.append(problem)
        answers[problem].add(str(r["reward_model"]["ground_truth"]).strip())
    kept = [{"problem": p, "answer": next(iter(answers[p]))} for p in order if len(answers[p]) == 1]
    return kept, (f"{total:,} source rows, {len(order):,} distinct problems, "
                  f"{len(order) - len(kept)} dropped whose copies disagree on the answer: {len(kept):,} remain")


@dataclass(frozen=True)
class Source:
    name: str             # written to data/<name>.jsonl
    what: str
    repo: str             # the hub dataset
    revision: str         # its pinned commit
    files: tuple          # the split's files in the repository (fnmatch patterns)
    split: str
    rows: int             # rows written; checked on every import, and from the hub unless de-duplication decides
    normalise: Callable   # source rows (dicts, the hub's columns) -> (project rows, note)
    hub_rows_fixed: bool = True


SOURCES = {s.name: s for s in [
    Source("math500", "MATH-500 (the 500 MATH test problems of Lightman et al., arXiv 2305.20050)",
           "HuggingFaceH4/MATH-500", "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be", ("test.jsonl",), "test",
           500, _math500),
    Source("aime24", "AIME 2024 I and II", "HuggingFaceH4/aime_2024", "2fe88a2f1091d5048c0f36abc874fb997b3dd99a",
           ("data/train-*.parquet",), "train", 30, _aime),
    Source("aime25", "AIME 2025 I and II", "math-ai/aime25", "563bb8404243c5f09de6ec262f2db674fe5bce9b",
           ("test.jsonl",), "test", 30, _aime),
    Source("amc23", "AMC 12 2023 (AI-MO's AMC validation set, the 2023 problems)", "AI-MO/aimo-validation-amc",
           "69d78a4a2c840e82d69af6bc742bda09005f6316", ("data/train-*.parquet",), "train", 40, _amc23),
    Source("minerva", "Minerva OCWCourses (arXiv 2206.14858)", "math-ai/minervamath",
           "ee46ddc498933b1977577953250ca5c66be64f96", ("test*",), "test", 272, _minerva),
    Source("olympiadbench", "OlympiadBench, English text-only open-ended maths (arXiv 2402.14008)",
           "Hothan/OlympiadBench", "91184b52131e7fc9455fef848035173aea8cc01a", ("*OE_TO_maths_en_COMP*.parquet",),
           "OE_TO_maths_en_COMP", 675, _olympiadbench),
    Source("gsm8k_test", "GSM8K test (arXiv 2110.14168)", "openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866",
           ("main/test-*.parquet",), "main/test", 1319, _gsm8k),
    Source("gsm8k_train", "GSM8K train (arXiv 2110.14168)", "openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866",
           ("main/train-*.parquet",), "main/train", 7473, _gsm8k),
    Source("math_train", "MATH train, all levels (arXiv 2103.03874)", "DigitalLearningGmbH/MATH-lighteval",
           "0530c78699ea5e8eb5530600900e1f328b48acad", ("data/train-*.parquet",), "train", 7500, _math_train),
    # the hub file repeats its rows: one row per problem is kept. 17,279 is what a de-duplicated copy holds (checked
    # on --from); from the hub the count is printed, not checked
    Source("dapo_math_17k", "DAPO-Math-17k, de-duplicated (arXiv 2503.14476)", "BytedTsinghua-SIA/DAPO-Math-17k",
           "65877096c24ffa7abc4e4fa5edb95cf3413a5674", ("data/dapo-math-17k.parquet",), "train", 17279, _dapo,
           hub_rows_fixed=False),
]}


# ---- reading the hub --------------------------------------------------------------------------------------

_reachable = None


def hub_reachable():
    """One request with a short timeout, once per process: huggingface_hub itself retries an unreachable hub
    for about 25 s per call, so an offline machine learns it here at once."""
    global _reachable
    if _reachable is None:
        from huggingface_hub import constants, get_session
        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT)
            _reachable = True
        except Exception:
            _reachable = False
    return _reachable


def download(src):
    """The local folder of `src`'s files at its pinned revision (huggingface_hub's cache: nothing is fetched
    twice). Offline (HF_HUB_OFFLINE=1 or no answer from the hub) only the cache is read."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise DataError("downloading needs huggingface_hub: pip install -r requirements.txt") from None
    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    try:
        return snapshot_download(src.repo, repo_type="dataset", revision=src.revision,
                                 allow_patterns=list(src.files), local_files_only=offline)
    except Exception as e:
        why = ("the hub is not reachable and the files are not in the local cache" if offline
               else f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        raise DataError(f"{src.name}: could not download {src.repo}@{src.revision[:7]} ({why}). With network: "
                        f"{COMMAND} --only {src.name}; or from a local folder of <name>.jsonl files: "
                        f"{COMMAND} --from DIR") from None


def source_files(src, hub_copy=None):
    """(folder, files) of `src`'s split: from `hub_copy`/<owner>/<dataset>/ (the repository's files as on the
    hub) when given, else downloaded. Either way the same patterns pick the files."""
    root = Path(hub_copy) / src.repo if hub_copy is not None else Path(download(src))
    if not root.is_dir():
        raise DataError(f"{src.name}: no folder {root} (a copy of the hub dataset {src.repo})")
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and any(fnmatch.fnmatch(rel.as_posix(), pattern) for pattern in src.files):
            found.append(path)
    if not found:
        raise DataError(f"{src.name}: no file matching {' or '.join(src.files)} in {root}")
    return root, found


def read_rows(path):
    """The rows of one source file as dicts: parquet (pyarrow, in batches), JSON Lines, or a JSON list."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("reading parquet needs pyarrow: pip install -r requirements.txt") from None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            yield from batch.to_pylist()
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    try:
        yield from (row for _, row in read_jsonl(path))
    except ValueError as e:  # a line that is not JSON
        raise DataError(str(e)) from None


# ---- writing ---------------------------------------------------------------------------------------------

def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_bytes(path, data):
    """Atomic: a reader (or a second run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def read_manifest(out):
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}  # unreadable: every file is rebuilt and a new manifest written


def _write_manifest(out, manifest):
    _write_bytes(Path(out) / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def is_valid(out, name, manifest):
    """Whether data/<name>.jsonl is there with the sha256 its manifest entry records."""
    entry, path = manifest.get(f"{name}.jsonl"), Path(out) / f"{name}.jsonl"
    return entry is not None and path.is_file() and sha256_file(path) == entry.get("sha256")


def _show(path):
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build(src, out, hub_copy=None, log=print):
    """Download (or read from `hub_copy`), normalise and write one set; its manifest entry."""
    root, files = source_files(src, hub_copy)
    try:
        rows, note = src.normalise(itertools.chain.from_iterable(read_rows(p) for p in files))
    except KeyError as e:
        raise DataError(f"{src.name}: the rows of {src.repo} ({', '.join(p.name for p in files)}) have no column "
                        f"{e}: the source changed?") from None
    if src.hub_rows_fixed and len(rows) != src.rows:
        raise DataError(f"{src.name}: {len(rows)} rows from {src.repo}@{src.revision[:7]}, expected {src.rows}; "
                        f"nothing written")
    width = max(4, len(str(len(rows) - 1)))
    rows = [{"id": f"{src.name}-{i:0{width}d}", **r} for i, r in enumerate(rows)]
    empty = sum(not r["answer"] for r in rows)
    for r in rows:
        r["answer"] = "" if r["answer"] is None else r["answer"]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path = Path(out) / f"{src.name}.jsonl"
    sha = _write_bytes(path, data)
    names = [p.relative_to(root).as_posix() for p in files]
    log(f"{src.name}: {len(rows):,} rows from {src.repo}@{src.revision[:7]} ({', '.join(names)}) -> {_show(path)}"
        + (f"; {note}" if note else "")
        + (f"; {empty} without an answer in the source (kept with answer \"\"; loaders skip them)" if empty else ""))
    return {"source": src.repo, "revision": src.revision, "split": src.split, "files": names,
            "rows": len(rows), "sha256": sha, "from": "hub" if hub_copy is None else f"hub copy in {hub_copy}"}


def check_rows(path):
    """The number of rows of a JSON Lines file in the project's format; the first bad row is an error."""
    n = 0
    try:
        for i, row in read_jsonl(path):
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i + 1}: a row must be a JSON object")
            for key in ("id", "problem", "answer"):
                if not isinstance(row.get(key), str):
                    got = "nothing" if key not in row else type(row[key]).__name__
                    raise DataError(f"{path}:{i + 1}: '{key}' must be a string, got {got}")
            n += 1
    except ValueError as e:  # a line that is not JSON
        raise DataError(str(e)) from None
    return n


def import_local(src, folder, out, log=print):
    """Copy <folder>/<name>.jsonl (the project's rows) into `out` after checking its rows and their number."""
    path = Path(folder) / f"{src.name}.jsonl"
    n = check_rows(path)
    if n != src.rows:
        raise DataError(f"{src.name}: {path} has {n} rows, expected {src.rows} ({src.what}); not imported")
    target = Path(out) / path.name
    sha = _write_bytes(target, path.read_bytes())
    log(f"{src.name}: {n:,} rows imported from {path} -> {_show(target)}")
    return {"source": f"local folder {Path(folder).resolve()}", "revision": None, "split": src.split,
            "files": [path.name], "rows": n, "sha256": sha, "from": "local"}


def get(names=None, out=ROOT / "data", local=None, hub_copy=None, force=False, log=print):
    """Write the named sets (all when None) under `out`: from the hub, from `hub_copy` (the hub's files) or
    from `local` (the project's rows). Files that match the manifest are skipped. Returns {name: status}."""
    out = Path(out)
    unknown = [n for n in names or () if n not in SOURCES]
    if unknown:
        raise DataError(f"unknown set {unknown[0]!r}: choose from {', '.join(SOURCES)}")
    chosen = list(names) if names else list(SOURCES)
    if local is not None:
        if not Path(local).is_dir():
            raise DataError(f"--from {local}: not a folder")
        missing = [n for n in chosen if not (Path(local) / f"{n}.jsonl").is_file()]
        if missing and (names or len(missing) == len(chosen)):
            raise DataError(f"{missing[0]}: {Path(local) / (missing[0] + '.jsonl')} not found")
    manifest, status = read_manifest(out), {}
    for name in chosen:
        src = SOURCES[name]
        if not force and is_valid(out, name, manifest):
            entry = manifest[f"{name}.jsonl"]
            log(f"{name}: {_show(out / (name + '.jsonl'))} is there and matches {MANIFEST} "
                f"({entry.get('rows')} rows from {entry.get('source')}): skipped")
            status[name] = "skipped"
            continue
        if local is not None and not (Path(local) / f"{name}.jsonl").is_file():
            log(f"{name}: not in {local}, left out (from the hub: {COMMAND} --only {name})")
            status[name] = "missing"
            continue
        entry = import_local(src, local, out, log) if local is not None else build(src, out, hub_copy, log)
        manifest[f"{name}.jsonl"] = entry
        _write_manifest(out, manifest)  # after each set: an interrupted run keeps what it finished
        status[name] = "written"
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"these sets only: {', '.join(SOURCES)}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--from", dest="local", metavar="DIR",
                       help="import DIR/<name>.jsonl (rows already in the project's format) instead of the hub")
    where.add_argument("--hub-copy", metavar="DIR",
                       help="read the hub's files from DIR/<owner>/<dataset>/ instead of downloading them")
    parser.add_argument("--out", default=str(ROOT / "data"), help="where the files go (default: data/)")
    parser.add_argument("--force", action="store_true", help="rewrite files that match the manifest")
    parser.add_argument("--list", action="store_true", help="print the sets and their sources, then exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in SOURCES.values():
            print(f"{s.name + '.jsonl':22s} {s.rows:>6,} rows  {s.repo}@{s.revision[:7]} {s.split}: {s.what}")
        return 0
    try:
        get(args.only, args.out, local=args.local, hub_copy=args.hub_copy, force=args.force)
    except DataError as e:
        print(f"get_data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
