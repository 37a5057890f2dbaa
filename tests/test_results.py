"""scripts/results.py: the archive is deterministic and loses nothing; packing moves loose run files into it;
every committed experiment's tables are regenerated from its archive alone, byte for byte, and every number its
README's tables quote is in a regenerated table; the README checker itself catches what it should."""
import io
import json
import subprocess
import tarfile

import pytest

from conftest import ROOT
from scripts import results


def test_archive_is_deterministic_and_round_trips(tmp_path):
    members = {"b/seed0/metrics.jsonl": b'{"step": 1}\n', "a.json": b"{}", "b/seed1/heldout/records.jsonl": b"x" * 5000}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    results.write_archive(tmp_path / "one", members)
    results.write_archive(tmp_path / "two", dict(reversed(list(members.items()))))  # another insertion order
    one, two = ((tmp_path / d / "records.tar.xz").read_bytes() for d in ("one", "two"))
    assert one == two and one[:6] == b"\xfd7zXZ\x00"  # the xz magic
    assert results.read_archive(tmp_path / "one") == members
    # an independent reader: tar's own listing, with sorted names, no owner, a fixed time and mode
    with tarfile.open(fileobj=io.BytesIO(one), mode="r:xz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == sorted(members)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}
    with pytest.raises(ValueError, match="not a relative path"):
        results.write_archive(tmp_path / "one", {"../escape": b""})


def test_pack_moves_loose_files_into_the_archive(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    (exp / "seed_1").mkdir(parents=True)
    results.write_archive(exp, {"seed_0/summary.json": b"{}", "seed_1/metrics.jsonl": b"old\n"})
    for name, text in {"README.md": "r", "table.md": "t", "seed_1/reward.png": "png", "seed_1/metrics.jsonl": "new\n",
                       "seed_1/summary.json": json.dumps({"parts": [
                           {"command": "python eval.py --n 4 --model m --out runs/x/seed_1/eval_after"},
                           {"command": "python train.py --config c"}]})}.items():
        (exp / name).write_text(text)
    records = tmp_path / "runs" / "x" / "seed_1" / "eval_after" / "records.jsonl"  # left under runs/ by the eval
    records.parent.mkdir(parents=True)
    records.write_text('{"id": 1, "score": 1.0}\n')
    monkeypatch.setattr(results, "ROOT", tmp_path)
    packed = results.pack(exp)
    assert packed == ["seed_1/eval_after/records.jsonl", "seed_1/metrics.jsonl", "seed_1/summary.json"]
    archived = results.read_archive(exp)
    assert archived["seed_1/metrics.jsonl"] == b"new\n" and archived["seed_0/summary.json"] == b"{}"  # replaced, kept
    assert archived["seed_1/eval_after/records.jsonl"] == records.read_bytes()
    left = sorted(str(p.relative_to(exp)) for p in exp.rglob("*") if p.is_file())
    assert left == ["README.md", "records.tar.xz", "seed_1/reward.png", "table.md"]
    assert results.pack(exp) == []  # nothing loose: nothing to do


def test_readme_numbers_checker_catches_what_it_should():
    readme = ("| scheme | held-out | runs |\n|---|---|---|\n"
              "| dapo_p24 | +0.140 ± 0.056 (n 5; Holm 0.04) | ![fig](seed_0/x.png) `steps=40` |\n"
              "| level 1 (30) | 16.7 [7.3, 33.6] | 93 |\n")
    assert [n for _, n in results.readme_table_numbers(readme)] == ["+0.140", "0.056", "5", "0.04", "16.7", "7.3",
                                                                   "33.6", "93"]  # no label, link, code or header
    table = "| dapo_p24 | +0.140 ± 0.056 (n=5; Holm 0.041) |\n| x | 0.04 |\nlevel 1: 16.7 [7.3, 33.6] 93.3"
    assert results.missing_numbers(readme, table) == []  # 0.04 from 0.041, 93 from 93.3 (no row "level 1 (30)")
    # dapo_p24's row must hold its numbers: 0.04 in another row does not count
    assert results.missing_numbers(readme, table.replace("0.041", "0.061")) == ["dapo_p24: 0.04"]
    assert results.missing_numbers(readme, table.replace("93.3", "93.6")) == ["level 1 (30): 93"]


def test_sweep_argv_drops_where_the_report_goes():
    cmd = ("python sweep.py configs/x.yaml --out runs/x --seeds 0 1 --scheme dapo scheme.name=dapo loss.eps_high=0.28 "
           "--family heldout_acc val_acc --base-eval runs/x/base.json --report-only --publish docs/x")
    assert results.sweep_argv(cmd) == ["configs/x.yaml", "--seeds", "0", "1", "--scheme", "dapo", "scheme.name=dapo",
                                       "loss.eps_high=0.28", "--family", "heldout_acc", "val_acc"]


def test_shown_figures_and_windows(tmp_path):
    (tmp_path / "README.md").write_text("| ![a](seed_0/reward.png) | ![b](figures/x.png) |\n![a](seed_0/reward.png)")
    assert results.shown_figures(tmp_path) == ["seed_0/reward.png", "figures/x.png"]
    assert results.windows(120) == [(1, 10), (11, 30), (31, 60), (61, 90), (91, 120)]
    assert results.windows(220)[-2:] == [(161, 200), (201, 220)] and results.windows(12) == [(1, 10), (11, 12)]


def test_entropy_columns_skip_steps_without_a_value():
    # steps 1-3: gen/entropy (every sampled response) 1.0, 2.0 and absent (nothing sampled with log-probs);
    # entropy (trained tokens) 0.5, absent (nothing trained), 0.25; by hand: (1 + 2) / 2, (0.5 + 0.25) / 2
    recs = [{"step": 1, "gen/entropy": 1.0, "entropy": 0.5}, {"step": 2, "gen/entropy": 2.0},
            {"step": 3, "entropy": 0.25}]
    assert results.entropies(recs) == ("1.50", "0.38")
    assert results.entropies([{"step": 4}]) == ("-", "-")
    train = [{"step": s, "reward_mean": 0.5, "zero_var_frac": 0.0, "len_mean": 10.0, "time/step": 1.0, **r}
             for s, r in zip((1, 2, 3), ({"gen/entropy": 1.0, "entropy": 0.5}, {"gen/entropy": 2.0},
                                         {"entropy": 0.25}))]
    head, _, row = results.glance_table({"run": train}).splitlines()[:3]
    cells = [c.strip() for c in row.strip("|").split("|")]
    names = [c.strip() for c in head.strip("|").split("|")]
    assert (cells[names.index("entropy, sampled")], cells[names.index("entropy, trained")]) == ("1.50", "0.38")


def committed():
    """The experiments whose archive is committed (the tests run where the checkout has them)."""
    tracked = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return [name for name, d in results.EXPERIMENTS.items()
            if f"{d}/records.tar.xz" in tracked or (ROOT / d / "records.tar.xz").is_file()]


@pytest.mark.parametrize("name", list(results.EXPERIMENTS))
def test_each_experiment_regenerates_its_tables_from_its_archive(name):
    """The check the command runs: tables regenerated in a temporary folder equal the committed ones, every
    number the README's tables quote is in them, and every figure the README shows is drawn."""
    if name not in committed():
        pytest.skip(f"{results.EXPERIMENTS[name]} has no archive yet")
    assert results.check(name, ROOT / results.EXPERIMENTS[name]) == []


def test_docs_stay_small():
    tracked = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    present = [p for p in tracked if (ROOT / p).exists()]
    new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "docs"], cwd=ROOT, capture_output=True,
                         text=True).stdout.split()
    assert len(present) + len(new) < 100, f"{len(present) + len(new)} files under docs/"
