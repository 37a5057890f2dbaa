"""eval.py: pass@k against brute-force subset enumeration, avg@n and breakdowns against hand-computed
values, benchmark loading errors, and an end-to-end run on a tiny random model over a slice of MATH500."""
import itertools
import json
import math
import warnings
from fractions import Fraction

import pytest

from conftest import DATA_DIR, needs_data

import eval as ev

# Hand-made correctness matrices: rows are problems, columns the n samples (1 = correct).
MATRICES = [
    [[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]],
    [[0, 0, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1]],
    [[1], [0], [0]],
    [[0, 1, 0, 1, 1, 0]],
]


def brute_pass_at_k(row, k):
    """Fraction of the k-subsets of the samples that hold at least one correct sample (exact)."""
    subsets = list(itertools.combinations(range(len(row)), k))
    return Fraction(sum(any(row[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("matrix", MATRICES)
def test_pass_at_k_matches_subset_enumeration(matrix):
    n = len(matrix[0])
    for k in range(1, n + 1):
        for row in matrix:
            assert ev.pass_at_k(n, sum(row), k) == pytest.approx(float(brute_pass_at_k(row, k)), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # Binomials this size overflow float64 (C(1024, 512) ~ 1e306); compare with exact integers.
    for n, c, k in [(1024, 3, 512), (1024, 1000, 20), (2000, 1, 1), (300, 150, 7)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert ev.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


def test_pass_at_k_rejects_bad_counts():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            ev.pass_at_k(n, c, k)


@pytest.mark.parametrize("matrix", MATRICES)
def test_avg_and_pass_at_k_of_a_benchmark(matrix):
    n = len(matrix[0])
    rows = [{"id": f"p{i}", "problem": "", "answer": "1"} for i in range(len(matrix))]
    lengths = [[10 * (i + 1) + j for j in range(n)] for i in range(len(matrix))]
    m = ev.benchmark_metrics(rows, [[float(x) for x in r] for r in matrix], lengths)
    cells = [x for r in matrix for x in r]
    assert m["avg@n"] == pytest.approx(sum(cells) / len(cells))
    assert m["n"] == n and m["num_problems"] == len(matrix)
    for k in range(1, n + 1):
        assert m[f"pass@{k}"] == pytest.approx(float(sum(brute_pass_at_k(r, k) for r in matrix) / len(matrix)))
    ok = [l for r, lr in zip(matrix, lengths) for x, l in zip(r, lr) if x]
    bad = [l for r, lr in zip(matrix, lengths) for x, l in zip(r, lr) if not x]
    assert m["mean_length_correct"] == (sum(ok) / len(ok) if ok else None)
    assert m["mean_length_incorrect"] == (sum(bad) / len(bad) if bad else None)
    assert "greedy" not in m and "by_level" not in m


def test_per_level_and_subject_breakdown():
    levels = [1, 4, 5, 5, 2, "4"]  # one level written as a string, as some copies of MATH do
    subjects = ["Algebra", "Algebra", "Geometry", "Algebra", "Geometry", "Geometry"]
    rows = [{"id": str(i), "problem": "", "answer": "1", "level": lv, "subject": sb}
            for i, (lv, sb) in enumerate(zip(levels, subjects))]
    scores = [[1, 1], [0, 1], [0, 0], [1, 0], [1, 1], [0, 0]]
    m = ev.benchmark_metrics(rows, scores, [[5, 5]] * 6, greedy=True)
    by_level = m["by_level"]
    assert set(by_level) == {"1", "2", "4", "5", "4-5"}
    # Hand-computed: level 4 = problems 1, 5 -> 1 of 4 samples; level 5 = problems 2, 3 -> 1 of 4;
    # levels 4-5 -> 2 of 8; pass@2 is the fraction of problems with any correct sample.
    assert by_level["4"]["avg@n"] == 0.25 and by_level["4"]["pass@2"] == 0.5
    assert by_level["5"]["avg@n"] == 0.25 and by_level["5"]["pass@2"] == 0.5
    assert by_level["4-5"]["avg@n"] == 0.25 and by_level["4-5"]["num_problems"] == 4
    assert by_level["1"]["avg@n"] == 1.0 and by_level["2"]["avg@n"] == 1.0
    # pass@1 of the group = mean over problems of c/n
    assert by_level["4-5"]["pass@1"] == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert m["by_subject"]["Algebra"]["avg@n"] == pytest.approx(4 / 6)
    assert m["by_subject"]["Geometry"]["avg@n"] == pytest.approx(2 / 6)
    assert m["greedy"] == m["avg@n"] == pytest.approx(6 / 12)
    json.dumps(m)  # JSON-serialisable


@needs_data
def test_load_known_benchmark():
    rows = ev.load_benchmark("math500", DATA_DIR)
    assert len(rows) == 500 and rows[0]["id"] == "math500-0000"
    assert all(r["answer"] and r["problem"] for r in rows) and {r["level"] for r in rows} == {1, 2, 3, 4, 5}


def test_load_benchmark_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'math5000'.*math500"):
        ev.load_benchmark("math5000", DATA_DIR)
    with pytest.raises(FileNotFoundError, match="aime25.jsonl"):
        ev.load_benchmark("aime25", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        ev.load_benchmark(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "3"}\n')
    with pytest.raises(ValueError, match="no 'problem' field"):
        ev.load_benchmark(str(bad))


def test_row_without_answer_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "mini.jsonl"
    lines = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "x?", "answer": ""},
             {"id": "c", "problem": "y?"}, {"problem": "2+2?", "answer": 4}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = ev.load_benchmark(str(path))
    messages = " ".join(str(w.message) for w in caught)
    assert "row b has no answer" in messages and "row c has no answer" in messages
    assert [r["id"] for r in rows] == ["a", "mini-0003"] and rows[1]["answer"] == "4"


def test_parse_benchmarks():
    assert ev.parse_benchmarks("math500, aime24:16,amc23:4", 2) == {"math500": 2, "aime24": 16, "amc23": 4}
    assert ev.parse_benchmarks("hf:HuggingFaceH4/MATH-500/test.jsonl", 1) == {"hf:HuggingFaceH4/MATH-500/test.jsonl": 1}


# ---------------------------------------------------------------------------------------------
# End to end on a tiny random-init model (garbage answers: checks files, schema and consistency)

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@needs_data
def test_eval_cli_end_to_end(tiny_model, tmp_path, capsys):
    import verify
    out = tmp_path / "out"
    limit, n = 3, 3
    ev.main(["--model", str(tiny_model), "--benchmarks", "math500,amc23:2", "--data-dir", str(DATA_DIR),
             "--limit", str(limit), "--n", str(n), "--temperature", "1.0", "--top-p", "0.9",
             "--max-tokens", "24", "--engine", "hf", "--template", "plain", "--workers", "1", "--out", str(out),
             "--dtype", "bfloat16"])
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    printed = capsys.readouterr().out
    assert "math500" in printed and "macro average" in printed

    s = results["settings"]
    assert s["n"] == {"math500": 3, "amc23": 2} and s["temperature"] == 1.0 and s["top_p"] == 0.9
    assert s["max_tokens"] == 24 and s["limit"] == limit and s["engine"] == "hf" and s["dtype"] == "bfloat16"
    assert len(records) == limit * 3 + limit * 2
    math_ids = [r["id"] for r in ev.load_benchmark("math500", DATA_DIR)[:limit]]
    assert [r["id"] for r in records if r["benchmark"] == "math500"] == [i for i in math_ids for _ in range(n)]
    for r in records:
        assert set(r) >= {"benchmark", "id", "sample", "response", "extracted", "answer", "score", "length"}
        assert r["extracted"] == verify.extract_answer(r["response"])
        assert r["score"] == verify.score(r["response"], r["answer"])
        assert 0 < r["length"] <= 24

    for name, bn in [("math500", 3), ("amc23", 2)]:
        m, recs = results["benchmarks"][name], [r for r in records if r["benchmark"] == name]
        assert m["n"] == bn and m["num_problems"] == limit
        assert m["avg@n"] == pytest.approx(sum(r["score"] for r in recs) / len(recs))
        assert m["pass@1"] == pytest.approx(m["avg@n"])
        assert all(m[f"pass@{k}"] <= m[f"pass@{k + 1}"] + 1e-12 for k in range(1, bn))
        assert m["mean_length"] == pytest.approx(sum(r["length"] for r in recs) / len(recs))
        assert "greedy" not in m
    assert set(results["benchmarks"]["math500"]["by_level"]) <= {"1", "2", "3", "4", "5", "4-5"}
    assert "by_level" not in results["benchmarks"]["amc23"]
    assert results["macro"]["avg@n"] == pytest.approx(
        (results["benchmarks"]["math500"]["avg@n"] + results["benchmarks"]["amc23"]["avg@n"]) / 2)


@needs_data
def test_evaluate_greedy_with_a_callers_engine(tiny_model):
    import rollout
    rows = ev.load_benchmark("math500", DATA_DIR)[:2]
    cfg = rollout.RolloutConfig(engine="hf", template="plain", temperature=0.0, top_p=1.0, max_tokens=8)
    engine = rollout.make_engine(cfg, str(tiny_model), seed=0)
    try:
        results, records = ev.evaluate(engine, {"math500": rows}, n=1, temperature=0.0, max_tokens=8,
                                       workers=0, progress=False)
        again, records_again = ev.evaluate(engine, {"math500": rows}, n=1, temperature=0.0, max_tokens=8,
                                           workers=0, progress=False)  # the engine is still usable
    finally:
        engine.close()
    m = results["benchmarks"]["math500"]
    assert m["greedy"] == m["avg@n"] and results["macro"]["greedy"] == results["macro"]["avg@n"]
    assert [r["response"] for r in records] == [r["response"] for r in records_again]  # greedy is deterministic
    json.dumps(results)


def test_evaluate_passes_the_problem_text_to_the_verifier():
    """A problem that asks for rounding accepts a more precise answer; the same answer to a problem that
    does not ask is wrong (verify.py's decimal policy needs the problem text, so eval.py must pass it)."""
    import rollout

    class OneAnswer:  # an engine that always answers 3.1416
        def generate(self, prompts, n, **kw):
            return [[rollout.Sample(prompt_ids=[1], token_ids=[2], text="so \\boxed{3.1416}", length=1,
                                   truncated=False, logprobs=[0.0])] * n
                    for _ in prompts]

    rows = [{"id": "r", "problem": "What is pi? Round your answer to the nearest hundredth.", "answer": "3.14"},
            {"id": "e", "problem": "What is pi to two decimals?", "answer": "3.14"}]
    results, records = ev.evaluate(OneAnswer(), {"b": rows}, workers=0, progress=False)
    assert [r["score"] for r in records] == [1.0, 0.0]
    assert results["benchmarks"]["b"]["avg@n"] == 0.5


def test_hub_benchmark_downloads_one_file(tmp_path, monkeypatch):
    import huggingface_hub
    local = tmp_path / "test.jsonl"  # the HuggingFaceH4/MATH-500 layout: no id field
    local.write_text(json.dumps({"problem": "1+1?", "answer": "2", "level": 1, "subject": "Algebra"}) + "\n")
    calls = []

    def fake_download(repo_id, filename, repo_type=None):
        calls.append((repo_id, filename, repo_type))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    rows = ev.load_benchmark("hf:HuggingFaceH4/MATH-500/test.jsonl")
    assert calls == [("HuggingFaceH4/MATH-500", "test.jsonl", "dataset")]
    assert rows == [{"id": "math-500-0000", "problem": "1+1?", "answer": "2", "level": 1, "subject": "Algebra"}]
    with pytest.raises(ValueError, match="hf:<owner>/<dataset>/<file>.jsonl"):
        ev.load_benchmark("hf:HuggingFaceH4/MATH-500")


@needs_data
def test_eval_cli_with_vllm(tiny_model, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    ev.main(["--model", str(tiny_model), "--benchmarks", "math500", "--data-dir", str(DATA_DIR), "--limit", "4",
             "--n", "4", "--temperature", "1.0", "--max-tokens", "16", "--engine", "vllm", "--template", "plain",
             "--workers", "0", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    m = results["benchmarks"]["math500"]
    assert results["settings"]["dtype"] == "float32"  # auto, float32 checkpoint
    assert len(records) == 16 and m["n"] == 4 and m["num_problems"] == 4
    assert m["avg@n"] == pytest.approx(sum(r["score"] for r in records) / 16)
    assert m["truncated"] == pytest.approx(sum(r["truncated"] for r in records) / 16)
    assert all(0 < r["length"] <= 16 for r in records)
    assert len({r["response"] for r in records}) > 1  # temperature 1: samples differ
